"""Tiny CIFAR-10 look-alikes in every accepted format, generated per test (no real data read)."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from distree_env.constants import CIFAR10_CLASS_NAMES  # noqa: E402

N_TRAIN, N_TEST = 40, 20


@pytest.fixture(autouse=True)
def _one_thread_and_private_cache(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("DISTREE_CACHE", str(tmp_path / "cache"))


def tiny_arrays(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        out[split] = (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % 10)
    return out


def write_image_folder(root: Path, arrays: dict) -> Path:
    from PIL import Image

    for split, (images, labels) in arrays.items():
        for i, (img, label) in enumerate(zip(images, labels, strict=False)):
            folder = root / "cifar10" / split / CIFAR10_CLASS_NAMES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(
                folder / f"{i:04d}.png"
            )  # lossless, so pixels can be compared
    return root / "cifar10"


def write_archive(tmp: Path, arrays: dict) -> Path:
    folder = write_image_folder(tmp / "tree", arrays)
    archive = tmp / "cifar10.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar10")
    return archive


def write_python_batches(root: Path, arrays: dict) -> Path:
    root.mkdir(parents=True)
    train_x, train_y = arrays["train"]
    chunks = np.array_split(np.arange(len(train_y)), 5)
    batches = {f"data_batch_{i + 1}": idx for i, idx in enumerate(chunks)}
    for name, idx in batches.items():
        data = train_x[idx].transpose(0, 3, 1, 2).reshape(len(idx), -1)
        with open(root / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [int(v) for v in train_y[idx]]}, f, protocol=2)
    test_x, test_y = arrays["test"]
    with open(root / "test_batch", "wb") as f:
        data = test_x.transpose(0, 3, 1, 2).reshape(len(test_y), -1)
        pickle.dump({b"data": data, b"labels": [int(v) for v in test_y]}, f, protocol=2)
    return root


def write_binary_batches(root: Path, arrays: dict) -> Path:
    root.mkdir(parents=True)

    def rows(x, y):
        return np.concatenate(
            [y[:, None].astype(np.uint8), x.transpose(0, 3, 1, 2).reshape(len(y), -1)], axis=1
        )

    train_x, train_y = arrays["train"]
    for i, idx in enumerate(np.array_split(np.arange(len(train_y)), 5)):
        rows(train_x[idx], train_y[idx]).tofile(root / f"data_batch_{i + 1}.bin")
    rows(*arrays["test"]).tofile(root / "test_batch.bin")
    return root


@pytest.fixture
def tiny_cifar(tmp_path) -> tuple[Path, dict]:
    arrays = tiny_arrays()
    return write_archive(tmp_path, arrays), arrays
