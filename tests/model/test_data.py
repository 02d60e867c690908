from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from distree_env.model.data import load_cifar10
from tests.model.conftest import (
    N_TEST,
    N_TRAIN,
    tiny_arrays,
    write_archive,
    write_binary_batches,
    write_image_folder,
    write_python_batches,
)

WRITERS = {
    "archive": lambda tmp, a: write_archive(tmp, a),
    "folder": lambda tmp, a: write_image_folder(tmp / "tree", a),
    "batches-py": lambda tmp, a: write_python_batches(tmp / "cifar-10-batches-py", a),
    "batches-bin": lambda tmp, a: write_binary_batches(tmp / "cifar-10-batches-bin", a),
}


def _sorted_pairs(images: np.ndarray, labels: np.ndarray) -> list[tuple[int, bytes]]:
    return sorted((int(y), x.tobytes()) for x, y in zip(images, labels, strict=False))


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_every_format_loads_the_same_pixels(fmt, tmp_path):
    arrays = tiny_arrays()
    source = WRITERS[fmt](tmp_path, arrays)
    test = load_cifar10(source, "test")
    assert test.images.shape == (N_TEST, 32, 32, 3) and test.images.dtype == np.uint8
    assert _sorted_pairs(test.images, test.labels) == _sorted_pairs(*arrays["test"])
    train = load_cifar10(source, "train", val_size=8)
    val = load_cifar10(source, "val", val_size=8)
    assert len(train) == N_TRAIN - 8 and len(val) == 8
    together = (
        np.concatenate([train.images, val.images]),
        np.concatenate([train.labels, val.labels]),
    )
    assert _sorted_pairs(*together) == _sorted_pairs(*arrays["train"])


def test_validation_split_is_fixed_and_disjoint(tiny_cifar):
    source, _ = tiny_cifar
    a = load_cifar10(source, "val", val_size=8)
    b = load_cifar10(source, "val", val_size=8)  # second call comes from the cache
    train = load_cifar10(source, "train", val_size=8)
    assert np.array_equal(a.images, b.images)
    train_rows = {x.tobytes() for x in train.images}
    assert not any(x.tobytes() in train_rows for x in a.images)


def test_decoded_arrays_are_cached_outside_the_repo(tiny_cifar, tmp_path):
    load_cifar10(tiny_cifar[0], "test")
    assert list((tmp_path / "cache").glob("cifar10-*.npz"))


def test_malicious_batch_pickle_is_refused(tmp_path):
    root = write_python_batches(tmp_path / "cifar-10-batches-py", tiny_arrays())

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        load_cifar10(root, "test")


def test_a_partial_batch_folder_is_refused(tmp_path):
    """Four batches of five would train on less data and carve another val split."""
    root = write_python_batches(tmp_path / "cifar-10-batches-py", tiny_arrays())
    (root / "data_batch_3").unlink()
    with pytest.raises(ValueError, match="lacks data_batch_3"):
        load_cifar10(root, "train")


# numpy's own pickle of an array (protocol 2): _reconstruct(ndarray, (0,), b"b"), then its state
_RECONSTRUCT = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        # an array of 2**45 bytes asked for in _reconstruct's shape: 60 bytes, 32 TiB
        (_RECONSTRUCT + b"\x8a\x06\x00\x00\x00\x00\x00\x20\x85C\x01b\x87R.", "unusual way"),
        # a state declaring a large shape with 3 bytes of data
        (None, "declares 1073741824 bytes of uint8 but carries 3"),
        (pickle.dumps([1, 2], protocol=2), "holds a list, not a dict"),
        # an allowed callable that fails: codecs.encode("x", "nope") raises LookupError
        (
            b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00nope\x86R.",
            "not a valid cifar-10-batches-py file: unknown encoding",
        ),
    ],
)
def test_batch_pickles_cannot_ask_for_memory_they_do_not_hold(tmp_path, payload, message):
    root = write_python_batches(tmp_path / "cifar-10-batches-py", tiny_arrays())
    if payload is None:  # numpy's pickle of a 3-byte array, its state's shape then enlarged
        payload = pickle.dumps(np.zeros(3, np.uint8), protocol=2)
        payload = payload.replace(b"K\x03\x85", b"J\x00\x00\x00\x40\x85")
        assert b"J\x00\x00\x00\x40\x85" in payload
    (root / "test_batch").write_bytes(payload)
    with pytest.raises(ValueError, match=message):
        load_cifar10(root, "test")


@pytest.mark.parametrize(
    ("source", "message"),
    [("missing.tar.gz", "does not exist"), ("empty_dir", "not recognised")],
)
def test_bad_sources_are_named(tmp_path, source, message):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match=message):
        load_cifar10(tmp_path / source, "test")


def test_bad_split_and_val_size(tiny_cifar):
    with pytest.raises(ValueError, match="split='dev'"):
        load_cifar10(tiny_cifar[0], "dev")
    with pytest.raises(ValueError, match="val_size=0"):
        load_cifar10(tiny_cifar[0], "val", val_size=0)


def test_truncated_binary_batch_is_refused(tmp_path):
    root = write_binary_batches(tmp_path / "cifar-10-batches-bin", tiny_arrays())
    (root / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="3073"):
        load_cifar10(root, "test")
