"""Safe file handling for the environment side: an atomic-write context manager and a cached
manifest check. The underlying rules live in :mod:`distree_env.io` (atomic writes) and
:mod:`distree_env.manifest` (``checkpoints/MANIFEST.json``); this module adds the forms the
trace loader and the experiment scripts use.

Why: runs get killed and files get copied from elsewhere. A reader must see either the old file
or the new one, never half of one, and a shipped file must match its recorded sha256.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from distree_env.manifest import checkpoints_dir, manifest_entry, verify

__all__ = ["atomic_write", "checkpoints_dir", "verify_manifest"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and ``os.replace`` it in.

    If the body raises (or the process dies), ``path`` keeps its previous content and the
    temporary file is removed (or, after a hard kill, left as ``.<name>.*.tmp``).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode={mode!r} is not allowed: 'wb' or 'w'")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


_VERIFIED: dict[tuple[str, int, int], str] = {}


def verify_manifest(path: str | os.PathLike[str]) -> bool:
    """Check ``path`` against its ``MANIFEST.json`` entry (size, then sha256); True if listed.

    Raises ValueError naming the file and both values on a mismatch. Results are cached per
    (path, mtime, size), so constructing many environments hashes a file once.
    """
    p = Path(path).resolve()
    entry = manifest_entry(p)
    if entry is None:
        return False
    stat = p.stat()
    key = (str(p), stat.st_mtime_ns, stat.st_size)
    if key in _VERIFIED and _VERIFIED[key] == entry.get("sha256"):
        return True
    size = entry.get("bytes")
    if size is not None and int(size) != stat.st_size:
        raise ValueError(
            f"{str(p)!r} is {stat.st_size} bytes but checkpoints/MANIFEST.json records {size}; "
            "the file is truncated or was replaced"
        )
    verify(p)  # raises ValueError on a sha256 mismatch
    _VERIFIED[key] = str(entry.get("sha256"))
    return True
