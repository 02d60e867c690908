"""Atomic file writes: a reader never sees half a file, and a killed writer leaves the old one.

Every file the project writes goes through :func:`atomic_open`: a temporary file in the same
folder, fsynced, then ``os.replace``-d over the target.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO


def _default_mode() -> int:
    """Permissions a plain ``open`` would give (mkstemp's 0600 would hide shipped files)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and ``os.replace`` it in.

    If the body raises (or the process dies), ``path`` keeps its previous content; the temporary
    file is removed (after a hard kill it is left as ``.<name>.*.tmp``).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode={mode!r} is not allowed: 'wb' or 'w'")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, _default_mode())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(f)`` on a binary file that replaces ``path`` only once complete."""
    with atomic_open(path, "wb") as handle:
        write(handle)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
