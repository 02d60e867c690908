"""``checkpoints/MANIFEST.json``: what the project ships, who made it, and its sha256.

Shipped files are checked against their recorded sha256 before use, so a damaged or swapped file is
refused instead of silently giving other numbers.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from distree_env.io import atomic_write_text, error_line, read_text_capped, strict_json


def checkpoints_dir() -> Path:
    """The shipped checkpoints (``$DISTREE_CHECKPOINTS`` overrides, e.g. for tests)."""
    env = os.environ.get("DISTREE_CHECKPOINTS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "checkpoints"


def in_checkpoints(path: str | os.PathLike) -> bool:
    """Whether ``path`` lies in the checkpoints folder: a shipped file, which a script that
    writes it also records in the MANIFEST (and loading it verifies against)."""
    return Path(path).resolve().is_relative_to(checkpoints_dir().resolve())


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (checkpoints can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_SHA256 = re.compile(r"[0-9a-f]{64}")


def read_manifest(root: Path | None = None) -> dict:
    """The manifest (``{"files": {}}`` when there is none); ValueError naming it when malformed.

    :param root: the checkpoints folder (default :func:`checkpoints_dir`).
    """
    path = (root or checkpoints_dir()) / "MANIFEST.json"
    if not path.exists():
        return {"files": {}}
    try:
        manifest = json.loads(read_text_capped(path, "manifest", 64 << 20))
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"manifest {str(path)!r} is not valid JSON: {error_line(e)}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"manifest {str(path)!r} must be an object with a 'files' object")
    return manifest


def _relative(path: Path, root: Path) -> str | None:
    """``path`` relative to ``root``, as given (symlinks not followed) or else resolved."""
    for candidate, base in ((Path(os.path.abspath(path)), Path(os.path.abspath(root))),
                            (path.resolve(), root.resolve())):  # fmt: skip
        try:
            return candidate.relative_to(base).as_posix()
        except ValueError:
            continue
    return None


def manifest_entry(path: str | os.PathLike, root: Path | None = None) -> dict | None:
    """The record of ``path`` (under the checkpoints folder): its own entry, or for a sidecar the
    ``sidecars`` record inside its owner's entry; None when unlisted or outside the folder."""
    root = root or checkpoints_dir()
    rel = _relative(Path(path), root)
    if rel is None:
        return None
    files = read_manifest(root)["files"]
    if rel in files:
        return files[rel]
    for entry in files.values():
        sidecars = entry.get("sidecars") if isinstance(entry, dict) else None
        if isinstance(sidecars, dict) and rel in sidecars:
            return sidecars[rel]
    return None


#: (path, device, inode, size, mtime, ctime) -> the sha256 that file had when it was hashed.
_VERIFIED: dict[tuple[str, int, int, int, int, int], str] = {}


def verify(path: str | os.PathLike, root: Path | None = None, required: bool = False) -> bool:
    """Check a file against ``checkpoints/MANIFEST.json`` before reading it; True when verified.

    Call it on every read of a file that may be shipped (backbone, trace, agent, sidecar). A file
    under the checkpoints folder (as given, or after resolving symlinks) must be listed with a
    sha256 and size that match, else ValueError naming the file: a missing MANIFEST, an unlisted
    file or an entry without a sha256 is never taken as verified. A file elsewhere is a user's
    own: False (ValueError if ``required``). A file is re-hashed whenever its inode, size, mtime
    or ctime changes.

    :param path: the file about to be read.
    :param root: the checkpoints folder (default :func:`checkpoints_dir`).
    :param required: refuse files outside the checkpoints folder too.
    """
    root = root or checkpoints_dir()
    p = Path(path)
    manifest = root / "MANIFEST.json"
    if _relative(p, root) is None:
        if required:
            raise ValueError(f"{str(path)!r} is not a shipped file (not under {str(root)!r})")
        return False
    if not manifest.is_file():
        raise ValueError(
            f"{str(path)!r} lies in the checkpoints folder but {str(manifest)!r} is missing, so "
            "nothing vouches for it"
        )
    entry = manifest_entry(p, root)
    if entry is None:
        raise ValueError(
            f"{str(path)!r} is not listed in {str(manifest)!r}; files in the checkpoints folder "
            "are loaded only when listed there with their sha256"
        )
    expected = entry.get("sha256") if isinstance(entry, dict) else None
    if not isinstance(expected, str) or not _SHA256.fullmatch(expected):
        raise ValueError(
            f"{str(path)!r}: its entry in {str(manifest)!r} has no valid sha256 "
            f"({expected!r}), so the file cannot be verified"
        )
    try:
        st = p.stat()
    except OSError as exc:
        raise ValueError(f"{str(path)!r}: cannot be read ({error_line(exc)})") from None
    key = (str(p.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if _VERIFIED.get(key) == expected:
        return True
    size = entry.get("bytes")
    if size is not None and size != st.st_size:
        raise ValueError(
            f"{str(path)!r} is {st.st_size} bytes but {str(manifest)!r} records {size!r}; "
            "the file is truncated or was replaced"
        )
    digest = sha256_of(p)
    if digest != expected:
        raise ValueError(
            f"{str(path)!r} has sha256 {digest[:12]}..., but {str(manifest)!r} records "
            f"{expected[:12]}...; the file is damaged or was replaced"
        )
    _VERIFIED[key] = digest
    return True


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    """``git args`` in the project's checkout, output captured, 10 s at most."""
    return subprocess.run(
        ["git", *args],
        capture_output=True,
        text=True,
        timeout=10,
        cwd=Path(__file__).resolve().parents[1],
    )


def git_commit() -> str:
    """The commit an artefact was made from, ``-dirty`` when tracked files had changes.

    Outside a git checkout (a copy of the tree on a training machine) ``$DISTREE_COMMIT`` names the
    commit the copy was made from; without it, ``uncommitted`` / ``unknown``.
    """
    fallback = os.environ.get("DISTREE_COMMIT", "")
    try:
        out = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        if out.returncode:
            return f"{fallback} (copy of the tree)" if fallback else "uncommitted"
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return f"{fallback} (copy of the tree)" if fallback else "unknown"


def machine() -> str:
    """Architecture, CPU, cores and OS, recorded beside timings so they can be compared."""
    cpu = platform.processor() or "cpu"
    return f"{platform.machine()} {cpu}, {os.cpu_count()} cores, {platform.system()}"


def command_line(module: str) -> str:
    """How the running script was invoked, as a user would type it."""
    return " ".join(["python", "-m", module, *sys.argv[1:]])


def record(
    path: str | os.PathLike,
    command: str,
    metrics: dict | None = None,
    root: Path | None = None,
    sidecars: Sequence[str | os.PathLike] = (),
) -> dict:
    """Add or replace ``path``'s entry (sha256, bytes, command, commit, machine, date, metrics).

    ``sidecars`` (e.g. an agent's ``.vecnormalize.npz``) are listed inside the entry, with their
    own sha256, so replacing the file replaces them too: a sidecar left from an earlier version
    is no longer listed and is refused by :func:`verify`.

    :param path: the shipped file, under the checkpoints folder.
    :param command: the command line that made it.
    :param metrics: headline figures to keep with it.
    :param root: the checkpoints folder (default :func:`checkpoints_dir`).
    :param sidecars: files that belong to ``path`` and are read together with it.
    """
    root = (root or checkpoints_dir()).resolve()
    rel = Path(path).resolve().relative_to(root).as_posix()
    entry = {
        "sha256": sha256_of(path),
        "bytes": Path(path).stat().st_size,
        "command": command,
        "commit": git_commit(),
        "machine": machine(),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "metrics": metrics or {},
    }
    if sidecars:
        entry["sidecars"] = {
            Path(s).resolve().relative_to(root).as_posix(): {
                "sha256": sha256_of(s), "bytes": Path(s).stat().st_size
            }
            for s in sidecars
        }  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".MANIFEST.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two scripts shipping at once must not lose an entry
        manifest = read_manifest(root)
        for side in entry.get("sidecars", {}):
            manifest["files"].pop(side, None)  # listed once: inside its owner's entry
        manifest["files"][rel] = entry
        manifest["files"] = dict(sorted(manifest["files"].items()))
        atomic_write_text(root / "MANIFEST.json", strict_json(manifest, indent=2) + "\n")
    return entry
