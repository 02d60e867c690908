"""Files in and out: atomic writes, checked paths, and one-line error messages.

Why: a reader must never see half a file and a killed writer must leave the old one (every file
the project writes goes through :func:`atomic_open`: a temporary file in the same folder, fsynced,
then ``os.replace``-d over the target). A bad path must be reported as what it is (a folder, a
named pipe that would block a reader for ever, a missing file) before any work starts, and an error
must reach the user as one line that never repeats a library's advice to load a file unsafely.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import math
import os
import re
import stat
import tempfile
import time
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np

__all__ = [
    "ARCHIVE_ERRORS",
    "atomic_open",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "csv_rows",
    "error_line",
    "not_allowed",
    "read_npz",
    "read_text_capped",
    "require_input_file",
    "require_output_dir",
    "require_output_file",
    "strict_json",
]

#: What reading a damaged or hostile zip archive (an ``.npz``, a ``.pt``, an agent's ``.zip``)
#: or an ``.npy`` header may raise besides ValueError (a zip "version" or compression method
#: zipfile does not read, an encryption flag, a header dict numpy cannot tokenize): each reader
#: turns them into one ValueError naming the file.
ARCHIVE_ERRORS = (
    EOFError,
    KeyError,
    NotImplementedError,
    OSError,
    RuntimeError,
    SyntaxError,
    tokenize.TokenError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
)

#: Longest error message handed to a user (a YAML alias bomb once made a 312 MB "line").
MAX_ERROR_CHARS = 500
#: A temporary file without a writer's pid (older versions) counts as stale after this long.
_STALE_SECONDS = 3600.0
#: Most arrays in an ``.npz`` read by :func:`read_npz`.
_MAX_NPZ_MEMBERS = 64
#: Where numpy's and torch's refusal of a pickle starts; the advice that follows (load it with
#: pickling allowed) must not reach a user, since following it runs whatever code the file holds.
_LIBRARY_REFUSAL = re.compile(
    r"Weights only load failed|This file contains pickled|Object arrays cannot be loaded"
)
_UNSAFE_ADVICE = re.compile(r"allow_pickle|weights_only|load it unsafely|safe_globals", re.I)
_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def not_allowed(name: str, value: Any, allowed: str) -> ValueError:
    """The project's one wording of a refused value: ``name=value is not allowed: allowed``.

    :param name: the field, with whatever locates it (``cluster.tick_ms``, ``synthetic_trace:
        exits``); :param value: what was given (its repr, capped); :param allowed: what is.
    """
    return ValueError(f"{name}={value!r:.200} is not allowed: {allowed}")


def error_line(exc: BaseException) -> str:
    """``exc`` as one line for a user: no newlines, capped length, no advice to load unsafely.

    :param exc: the exception to describe.
    """
    message = str(exc)
    if isinstance(exc, OSError) and exc.strerror:  # without the "[Errno N]" prefix
        message = exc.strerror + (f": {str(exc.filename)!r}" if exc.filename else "")
    text = " ".join(message.split()) or type(exc).__name__
    refusal = _LIBRARY_REFUSAL.search(text) or _UNSAFE_ADVICE.search(text)
    if refusal is not None:
        found = _GLOBAL.search(text)
        asks = f" (it asks for {found.group(1)})" if found else ""
        start = refusal.start()
        if refusal.re is _UNSAFE_ADVICE:  # from the start of the sentence that gives the advice
            start = max(text.rfind(mark, 0, start) for mark in ".:;(") + 1
        context = text[:start].rstrip(" :;(")
        text = (context + ": " if context else "") + (
            f"the file holds pickled Python objects{asks}, refused because loading them could "
            "run code"
        )
    if isinstance(exc, (MemoryError, RecursionError, OverflowError)) and not text.startswith(
        type(exc).__name__
    ):
        text = f"{type(exc).__name__}: {text}"
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 3] + "..."
    return text


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def require_input_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it is an existing regular file (symlinks followed), else ValueError.

    A folder, FIFO, socket or device is named as such: opening a FIFO would block for ever.

    :param path: the file to read.
    :param what: how the error names it, e.g. ``"--config"``.
    """
    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise ValueError(f"{what} {str(p)!r}: file not found") from None
    except OSError as exc:
        raise ValueError(f"{what} {str(p)!r}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{what} {str(p)!r} is {_kind(mode)}, not a regular file")
    if not os.access(p, os.R_OK):
        raise ValueError(f"{what} {str(p)!r}: permission denied (not readable)")
    return p


def require_output_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if a file can be written there, else ValueError; call before the work.

    Refused: an existing folder, FIFO, socket or device at ``path``; a parent that is a file; a
    folder that is not writable. Missing parent folders are fine (they are created on write).

    :param path: the file that will be written.
    :param what: how the error names it, e.g. ``"--json-out"``.
    """
    p = Path(path).expanduser()
    if not p.name or p.name in (".", ".."):
        raise ValueError(f"{what} {str(path)!r}: a file name is needed, not a folder")
    with contextlib.suppress(FileNotFoundError):
        mode = p.stat().st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{what} {str(p)!r} is {_kind(mode)}; a file path is needed")
    require_output_dir(p.parent, what)
    return p


def require_output_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it is, or can become, a writable folder, else ValueError.

    :param path: the folder that will be written into.
    :param what: how the error names it, e.g. ``"--runs-dir"``.
    """
    p = Path(path).expanduser()
    probe = p.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{what} {str(p)!r}: {str(probe)!r} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(p)!r}: folder {str(probe)!r} is not writable")
    return p


def _require_small_file(path: str | os.PathLike, what: str, limit: int) -> Path:
    """:func:`require_input_file`, and at most ``limit`` bytes on disk (checked before reading)."""
    p = require_input_file(path, what)
    size = p.stat().st_size
    if size > limit:
        raise ValueError(f"{what} {str(p)!r} is {size} bytes; at most {limit} are accepted")
    return p


def read_text_capped(path: str | os.PathLike, what: str, limit: int = 1 << 20) -> str:
    """The UTF-8 text of a small input file, refused beyond ``limit`` bytes (before reading).

    :param path: the file (checked with :func:`require_input_file`).
    :param what: how errors name it.
    :param limit: the most bytes accepted.
    """
    p = _require_small_file(path, what, limit)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {str(p)!r}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ValueError(f"{what} {str(p)!r}: cannot be read ({exc.strerror})") from None


def csv_rows(
    path: str | os.PathLike, field: str, what: str, encoding: str = "utf-8"
) -> Iterator[tuple[int, list[str]]]:
    """The non-blank rows of the CSV file ``path`` (UTF-8; ``utf-8-sig`` skips a byte-order
    mark) as (line number, cells).

    Raises ValueError naming ``field`` if the file is missing or a directory (``what`` says what
    the file should be) or is not UTF-8; the caller checks the cells and caps the row count.
    """
    try:
        p = require_input_file(path, what)
    except ValueError as exc:  # it names the file already
        raise ValueError(f"{field}: {exc}") from None
    line_no = 0
    try:
        with open(p, newline="", encoding=encoding) as handle:
            for line_no, row in enumerate(csv.reader(handle), start=1):
                if row and any(cell.strip() for cell in row):
                    yield line_no, row
    except UnicodeDecodeError as exc:
        raise ValueError(f"{field}: {p}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:  # e.g. a cell over the csv module's field limit
        raise ValueError(f"{field}: {p}:{line_no + 1}: not a CSV row ({exc})") from None


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities (which strict JSON has no word for) as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def strict_json(data: Any, **dumps_kwargs: Any) -> str:
    """``data`` as strict JSON (RFC 8259: NaN and infinities written as null, which every
    parser reads; Python's default ``NaN`` is not JSON). Keyword arguments go to
    ``json.dumps``."""
    return json.dumps(_finite(data), allow_nan=False, **dumps_kwargs)


def read_npz(path: str | os.PathLike, what: str, limit: int = 64 << 20) -> dict[str, np.ndarray]:
    """The arrays of a small ``.npz``, never unpickling, with every size checked before allocation.

    Refused, in one ValueError naming the file: more than ``limit`` bytes on disk or declared
    uncompressed (a zip bomb), an array header whose shape needs more bytes than its member holds
    (a 3 TiB ``shape`` in a few bytes), object arrays (pickles), a damaged archive.

    :param path: the ``.npz`` file.
    :param what: how errors name it, e.g. ``"normalisation statistics"``.
    :param limit: the most bytes accepted, on disk and uncompressed.
    """
    p = _require_small_file(path, what, limit)
    try:
        with zipfile.ZipFile(io.BytesIO(p.read_bytes())) as archive:
            infos = archive.infolist()
            declared = sum(info.file_size for info in infos)
            if len(infos) > _MAX_NPZ_MEMBERS or declared > limit:
                raise ValueError(
                    f"{len(infos)} members declaring {declared} bytes uncompressed, over the caps "
                    f"of {_MAX_NPZ_MEMBERS} members and {limit} bytes"
                )
            arrays = {}
            for info in infos:
                name = info.filename.removesuffix(".npy")
                with archive.open(info) as handle:
                    version = np.lib.format.read_magic(handle)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(handle)
                if dtype.hasobject:
                    raise ValueError(f"member {name!r} holds Python objects (pickles), refused")
                needed = math.prod(shape) * dtype.itemsize
                if needed > info.file_size:
                    raise ValueError(
                        f"member {name!r} declares shape {shape} ({needed} bytes) but holds "
                        f"{info.file_size} bytes"
                    )
                with archive.open(info) as handle:
                    arrays[name] = np.lib.format.read_array(handle, allow_pickle=False)
    except (ValueError, *ARCHIVE_ERRORS) as exc:
        raise ValueError(f"{what} {str(p)!r}: not a readable .npz ({error_line(exc)})") from None
    return arrays


def _default_mode() -> int:
    """Permissions a plain ``open`` would give (mkstemp's 0600 would hide shipped files)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(target: Path) -> None:
    """Remove ``.<name>.<pid>.*.tmp`` files of writers that died (SIGKILL, power loss).

    A file is stale when its writer's pid is gone (or, for names without a pid, when it is an hour
    old) and no process holds its lock: a live writer keeps an exclusive ``flock`` on it.
    """
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:(\d+)\.)?[a-z0-9_]+\.tmp")
    try:
        candidates = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in candidates:
        match = pattern.fullmatch(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        with contextlib.suppress(OSError):
            if match.group(1) is not None:
                if _writer_alive(int(match.group(1))):
                    continue
            elif time.time() - entry.stat(follow_symlinks=False).st_mtime < _STALE_SECONDS:
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if a writer holds it
                os.unlink(entry.path)
            finally:
                os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and ``os.replace`` it in.

    If the body raises (or the process dies), ``path`` keeps its previous content; the temporary
    file is removed (after a hard kill it is left as ``.<name>.<pid>.*.tmp`` and removed by the
    next write of ``path``). An ``OSError`` (disk full, permission) names the file, in one line.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode={mode!r} is not allowed: 'wb' or 'w'")
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(target)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent
        )
    except OSError as exc:
        raise _write_error(target, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # marks the file as in use until this process ends
        os.fchmod(fd, _default_mode())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise _write_error(target, exc) from None
        raise


def _write_error(target: Path, exc: OSError) -> OSError:
    """An ``OSError`` with the same errno whose message names ``target`` in one line."""
    reason = exc.strerror or error_line(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on device (the previous file, if any, is unchanged)"
    return OSError(exc.errno, f"cannot write {str(target)!r}: {reason}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(f)`` on a binary file that replaces ``path`` only once complete."""
    with atomic_open(path, "wb") as handle:
        write(handle)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """:func:`atomic_write` of ``data``."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """:func:`atomic_write` of ``text`` as UTF-8 (whatever the locale)."""
    atomic_write_bytes(path, text.encode("utf-8"))
