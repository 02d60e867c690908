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
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from distree_env.io import atomic_write_text


def checkpoints_dir() -> Path:
    """The shipped checkpoints (``$DISTREE_CHECKPOINTS`` overrides, e.g. for tests)."""
    env = os.environ.get("DISTREE_CHECKPOINTS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "checkpoints"


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(root: Path | None = None) -> dict:
    path = (root or checkpoints_dir()) / "MANIFEST.json"
    if not path.exists():
        return {"files": {}}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{str(path)!r} must be an object with a 'files' object")
    return manifest


def manifest_entry(path: str | os.PathLike, root: Path | None = None) -> dict | None:
    """The manifest entry of ``path`` if it lies under the checkpoints folder and is listed."""
    root = (root or checkpoints_dir()).resolve()
    try:
        rel = Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return None
    return read_manifest(root)["files"].get(rel)


_VERIFIED: dict[tuple[str, int, int], str] = {}


def verify(path: str | os.PathLike, root: Path | None = None, required: bool = False) -> bool:
    """Check ``path`` against its manifest entry (size, then sha256); True if listed and matching.

    Raises ValueError naming the file if it is listed with another size or digest, or if
    ``required`` and it is not listed. A file is hashed once per (path, mtime, size).
    """
    p = Path(path).resolve()
    entry = manifest_entry(p, root)
    if entry is None:
        if required:
            raise ValueError(f"{str(path)!r} is not listed in checkpoints/MANIFEST.json")
        return False
    stat = p.stat()
    key = (str(p), stat.st_mtime_ns, stat.st_size)
    if _VERIFIED.get(key) == entry.get("sha256"):
        return True
    size = entry.get("bytes")
    if size is not None and int(size) != stat.st_size:
        raise ValueError(
            f"{str(path)!r} is {stat.st_size} bytes but checkpoints/MANIFEST.json records {size}; "
            "the file is truncated or was replaced"
        )
    digest = sha256_of(p)
    if digest != entry.get("sha256"):
        raise ValueError(
            f"{str(path)!r} has sha256 {digest[:12]}..., but checkpoints/MANIFEST.json records "
            f"{str(entry.get('sha256'))[:12]}...; the file is damaged or was replaced"
        )
    _VERIFIED[key] = digest
    return True


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parents[1],
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parents[1],
        )
        if out.returncode:
            return "uncommitted"
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> str:
    cpu = platform.processor() or "cpu"
    return f"{platform.machine()} {cpu}, {os.cpu_count()} cores, {platform.system()}"


def command_line(module: str) -> str:
    """How the running script was invoked, as a user would type it."""
    return " ".join(["python", "-m", module, *sys.argv[1:]])


def record(
    path: str | os.PathLike, command: str, metrics: dict | None = None, root: Path | None = None
) -> dict:
    """Add or replace ``path``'s entry (sha256, bytes, command, commit, machine, date, metrics)."""
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
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".MANIFEST.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two scripts shipping at once must not lose an entry
        manifest = read_manifest(root)
        manifest["files"][rel] = entry
        manifest["files"] = dict(sorted(manifest["files"].items()))
        atomic_write_text(root / "MANIFEST.json", json.dumps(manifest, indent=2) + "\n")
    return entry
