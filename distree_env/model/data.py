"""CIFAR-10 from whatever form the user already has, decoded once and cached as arrays.

Accepted sources (a path the user gives; nothing is ever downloaded):
- a ``.tar.gz`` / ``.tgz`` ImageFolder archive (``<root>/train/<class>/*.jpg``, ``<root>/test``),
- the same tree extracted to a folder,
- the official ``cifar-10-batches-py`` folder (unpickled with a restricted unpickler: only numpy
  arrays and plain types),
- the official ``cifar-10-batches-bin`` folder.

The decoded arrays (uint8 ``[n, 32, 32, 3]`` and int64 labels) are cached under
``$DISTREE_CACHE`` (default ``~/.cache/distree_env``), keyed by the source's path, size and mtime.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distree_env.constants import CIFAR10_CLASS_NAMES
from distree_env.io import ARCHIVE_ERRORS, atomic_write_bytes, read_npz

IMAGE_SHAPE = (32, 32, 3)
VAL_SIZE = 5000
VAL_SEED = 20250221  # fixed: the validation split must never move between runs
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """One split of CIFAR-10: images uint8 [n, 32, 32, 3] (HWC, RGB) and labels int64 [n]."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        """A short hash of the images and labels: which data a network was trained beside."""
        digest = hashlib.sha256(np.ascontiguousarray(self.labels).tobytes())
        digest.update(np.ascontiguousarray(self.images).tobytes())
        return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """Where decoded arrays are cached (``$DISTREE_CACHE``, else ``~/.cache/distree_env``)."""
    return Path(os.environ.get("DISTREE_CACHE", Path.home() / ".cache" / "distree_env"))


def load_cifar10(source: str | os.PathLike, split: str, val_size: int = VAL_SIZE) -> Split:
    """Return ``split`` ("train", "val" or "test"); "val" is carved from the official training set.

    The carve is seeded and fixed, and "train" excludes it: training never sees validation images.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not allowed; choose one of {SPLITS}")
    official_train, test = _load_official(Path(source))
    if split == "test":
        return test
    n = len(official_train)
    if not 0 < val_size < n:
        raise ValueError(f"val_size={val_size} is not allowed; it must be in (0, {n})")
    order = np.random.default_rng(VAL_SEED).permutation(n)
    idx = np.sort(order[:val_size] if split == "val" else order[val_size:])
    return Split(official_train.images[idx], official_train.labels[idx])


def _load_official(source: Path) -> tuple[Split, Split]:
    if not source.exists():
        raise ValueError(f"CIFAR-10 source {str(source)!r} does not exist")
    stat = source.stat()
    key = hashlib.sha256(
        f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    ).hexdigest()
    cached = cache_dir() / f"cifar10-{key[:16]}.npz"
    if cached.exists():
        try:
            with np.load(cached, allow_pickle=False) as z:
                return (Split(z["train_x"], z["train_y"]), Split(z["test_x"], z["test_y"]))
        except (ValueError, *ARCHIVE_ERRORS):
            pass  # a damaged cache is rebuilt, not trusted
    train, test = _decode(source)
    buf = io.BytesIO()
    np.savez(
        buf, train_x=train.images, train_y=train.labels, test_x=test.images, test_y=test.labels
    )
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cached, buf.getvalue())
    return train, test


def _decode(source: Path) -> tuple[Split, Split]:
    if source.is_file() and source.name.endswith((".tar.gz", ".tgz", ".tar")):
        return _decode_image_archive(source)
    if source.is_dir():
        if (source / "data_batch_1").exists() and (source / "test_batch").exists():
            return _decode_batches(source, _read_python_batch, "")
        if (source / "data_batch_1.bin").exists() and (source / "test_batch.bin").exists():
            return _decode_batches(source, _read_binary_batch, ".bin")
        for root in (source, *[p for p in source.iterdir() if p.is_dir()]):
            if (root / "train").is_dir() and (root / "test").is_dir():
                return _decode_image_folder(root)
    raise ValueError(
        f"CIFAR-10 source {str(source)!r} is not recognised; allowed: a .tar.gz ImageFolder "
        "archive, "
        "its extracted folder (train/<class>/, test/<class>/), cifar-10-batches-py or "
        "cifar-10-batches-bin"
    )


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", mininterval=1.0)


def _decode_jpeg(data: bytes, name: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if arr.shape != IMAGE_SHAPE:
        raise ValueError(f"image {name!r} has shape {arr.shape}; CIFAR-10 images are {IMAGE_SHAPE}")
    return arr


def _split_and_class(parts: tuple[str, ...]) -> tuple[str, int] | None:
    """Map ``.../<split>/<class>/<file>`` to (split, label); None for anything else."""
    if len(parts) < 3 or parts[-3] not in ("train", "test"):
        return None
    if parts[-2] not in CIFAR10_CLASS_NAMES:
        raise ValueError(
            f"class folder {parts[-2]!r} is not a CIFAR-10 class; allowed: {CIFAR10_CLASS_NAMES}"
        )
    return parts[-3], CIFAR10_CLASS_NAMES.index(parts[-2])


def _collect(items: dict[str, list[tuple[str, np.ndarray, int]]]) -> tuple[Split, Split]:
    out = []
    for split in ("train", "test"):
        rows = sorted(items[split], key=lambda r: r[0])  # stable order whatever the archive order
        if not rows:
            raise ValueError(f"the CIFAR-10 source has no {split!r} images")
        images = np.stack([r[1] for r in rows])
        labels = np.array([r[2] for r in rows], dtype=np.int64)
        out.append(Split(images, labels))
    return out[0], out[1]


def _decode_image_archive(path: Path) -> tuple[Split, Split]:
    items: dict[str, list] = {"train": [], "test": []}
    with tarfile.open(path, "r:*") as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.isfile() and m.name.lower().endswith((".jpg", ".jpeg", ".png"))
        ]
        with _progress(len(members), f"decoding {path.name}") as bar:
            for m in members:
                where = _split_and_class(Path(m.name).parts)
                if where is not None:
                    data = tar.extractfile(m).read()
                    items[where[0]].append((m.name, _decode_jpeg(data, m.name), where[1]))
                bar.update()
    return _collect(items)


def _decode_image_folder(root: Path) -> tuple[Split, Split]:
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )
    items: dict[str, list] = {"train": [], "test": []}
    with _progress(len(files), f"decoding {root.name}") as bar:
        for p in files:
            where = _split_and_class(p.relative_to(root).parts)
            if where is not None:
                items[where[0]].append((str(p), _decode_jpeg(p.read_bytes(), str(p)), where[1]))
            bar.update()
    return _collect(items)


class _SafeUnpickler(pickle.Unpickler):
    """Only numpy arrays and plain Python types: a batch file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("codecs", "encode"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from a CIFAR-10 batch file"
            )
        found = super().find_class(module, name)
        if name != "_reconstruct":
            return found

        def reconstruct(subtype: type, shape: tuple, dtype: bytes) -> np.ndarray:
            """An array is pickled as an empty one, then its state: anything else (a
            subclass, a shape given here) is refused, and the state is sized before use."""
            if subtype is not np.ndarray or tuple(shape) != (0,):
                raise pickle.UnpicklingError("an array pickled in an unusual way (refused)")
            return found(_BoundedArray, shape, dtype)

        return reconstruct


class _BoundedArray(np.ndarray):
    """An array being unpickled: its state may declare no more bytes than it carries, and no
    objects, so a few bytes cannot ask for terabytes."""

    def __setstate__(self, state: tuple) -> None:
        shape, dtype, raw = state[-4], np.dtype(state[-3]), state[-1]
        need = math.prod(shape) * dtype.itemsize
        if dtype.hasobject or not isinstance(raw, bytes) or need != len(raw):
            raise pickle.UnpicklingError(
                f"an array declares {need} bytes of {dtype} but carries "
                f"{len(raw) if isinstance(raw, bytes) else type(raw).__name__}"
            )
        super().__setstate__(state)


#: Largest ``cifar-10-batches-py`` file read (the official ones are about 31 MB).
MAX_BATCH_BYTES = 64 << 20


def _read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    size = path.stat().st_size
    if size > MAX_BATCH_BYTES:
        raise ValueError(f"{str(path)!r} has {size} bytes, over the cap of {MAX_BATCH_BYTES}")
    try:
        with open(path, "rb") as f:
            batch = _SafeUnpickler(f, encoding="bytes").load()
        if not isinstance(batch, dict):
            raise TypeError(f"it holds a {type(batch).__name__}, not a dict")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (  # what the allowed callables (codecs.encode, numpy's reconstructors) may raise
        pickle.UnpicklingError,
        ArithmeticError,
        AttributeError,
        EOFError,
        LookupError,
        MemoryError,
        RecursionError,
        TypeError,
        ValueError,
    ) as e:
        raise ValueError(f"{str(path)!r} is not a valid cifar-10-batches-py file: {e}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{str(path)!r} has data of shape {data.shape}; expected [n, 3072]")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _decode_batches(root: Path, read, suffix: str) -> tuple[Split, Split]:
    """The official releases: ``data_batch_1..5`` (train) and ``test_batch``, read by ``read``."""
    names = [f"data_batch_{i}{suffix}" for i in range(1, 6)] + [f"test_batch{suffix}"]
    missing = [name for name in names if not (root / name).is_file()]
    if missing:  # a partial copy would train on less data and carve another val split
        raise ValueError(f"CIFAR-10 folder {str(root)!r} lacks {', '.join(missing)}")
    *parts, test = [read(root / name) for name in names]
    return (
        Split(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])),
        Split(*test),
    )


def _read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise ValueError(
            f"{str(path)!r} has {raw.size} bytes; a cifar-10-batches-bin file holds n x 3073"
        )
    rows = raw.reshape(-1, 3073)
    labels = rows[:, 0].astype(np.int64)
    if labels.max() >= len(CIFAR10_CLASS_NAMES):
        raise ValueError(f"{str(path)!r} has label {labels.max()}; allowed 0..9")
    return rows[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


#: The uint8 sample of the CIFAR-10 test split that the live runtime serves (no dataset needed).
TEST_SAMPLE_FILE = "cifar10-test-sample.npz"
MAX_SAMPLE_IMAGES = 1000
#: The largest sample file read: its images, labels and indices with room for the archive.
MAX_SAMPLE_BYTES = MAX_SAMPLE_IMAGES * (32 * 32 * 3 + 16) + (1 << 16)


def load_image_sample(path: str | os.PathLike) -> tuple[Split, np.ndarray]:
    """The image sample written by ``experiments.export_images``: the split and the indices of
    its images in the CIFAR-10 test split. A shipped file is checked against the MANIFEST first.

    :param path: the ``.npz`` file.
    """
    from distree_env.manifest import verify

    verify(path)
    arrays = read_npz(path, "image sample", limit=MAX_SAMPLE_BYTES)
    shapes = {name: array.shape for name, array in arrays.items()}
    n = shapes.get("labels", (0,))[0] if len(shapes.get("labels", ())) == 1 else 0
    if not 0 < n <= MAX_SAMPLE_IMAGES or shapes != {
        "images": (n, *IMAGE_SHAPE),
        "labels": (n,),
        "indices": (n,),
    }:
        raise ValueError(
            f"image sample {str(path)!r} holds {shapes}; expected ['images', 'indices', 'labels']: "
            f"images [n, 32, 32, 3], labels [n], indices [n] with 0 < n <= {MAX_SAMPLE_IMAGES}"
        )
    images, labels, indices = arrays["images"], arrays["labels"], arrays["indices"]
    if images.dtype != np.uint8 or labels.dtype.kind not in "iu" or indices.dtype.kind not in "iu":
        raise ValueError(
            f"image sample {str(path)!r} has dtypes images={images.dtype}, labels={labels.dtype}, "
            f"indices={indices.dtype}; expected uint8 images and integer labels and indices"
        )
    if labels.min() < 0 or labels.max() >= len(CIFAR10_CLASS_NAMES):
        raise ValueError(f"image sample {str(path)!r} has labels outside 0..9")
    return Split(images, labels.astype(np.int64)), indices.astype(np.int64)
