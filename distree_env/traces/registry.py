"""Trace names to traces: synthetic generator strings, shipped names and paths, verified and cached.

Why: configs name a trace by a short string (``"cifar10-val"``, ``"synthetic:n=500"``, a path).
A shipped trace (any file under ``checkpoints/``) is read only after its bytes match the sha256 in
``checkpoints/MANIFEST.json``; an unlisted file, a missing MANIFEST or an entry without a hash is
refused. Traces are cached in-process by the sha256 of the bytes read (or by the synthetic
parameters), so creating many environments is cheap and a rewritten file is never served stale.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distree_env.manifest import checkpoints_dir, manifest_entry, verify
from distree_env.traces.format import ExitTrace, read_trace_bytes
from distree_env.traces.synthetic import synthetic_trace

__all__ = [
    "SHIPPED_TRACES",
    "clear_cache",
    "parse_synthetic_name",
    "resolve_trace",
    "synthetic_name",
    "trace_file",
    "trace_path",
]

_EXPORT = "python -m experiments.export_traces"
#: Traces shipped under ``checkpoints/traces/`` -> the command that makes them.
SHIPPED_TRACES: dict[str, str] = {
    "cifar10-val": _EXPORT,
    "cifar10-test": _EXPORT,
    "cifar10-pipeline-val": f"{_EXPORT} --backbone checkpoints/backbone-pipeline.pt "
    "--prefix cifar10-pipeline",
    "cifar10-pipeline-test": f"{_EXPORT} --backbone checkpoints/backbone-pipeline.pt "
    "--prefix cifar10-pipeline",
}

#: ``synthetic:key=value`` keys -> (:func:`synthetic_trace` argument, type).
_SYNTHETIC_KEYS: dict[str, tuple[str, type]] = {
    "n": ("n", int),
    "exits": ("num_exits", int),
    "devices": ("num_devices", int),
    "classes": ("num_classes", int),
    "topology": ("topology", str),
    "difficulty": ("difficulty", float),
    "seed": ("seed", int),
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: Traces kept in memory at once (least recently used go first).
_CACHE_SIZE = 16
_CACHE: OrderedDict[tuple, ExitTrace] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def trace_path(name: str) -> Path:
    """Where the shipped trace ``name`` lives: ``<checkpoints>/traces/<name>.npz``.

    :param name: a bare trace name such as ``"cifar10-val"``.
    """
    return checkpoints_dir() / "traces" / f"{name}.npz"


def clear_cache() -> None:
    """Forget every cached trace (tests; a long-lived process that wants the memory back)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def resolve_trace(name_or_path: str | os.PathLike[str]) -> ExitTrace:
    """The trace for a synthetic name, a shipped name or a path to an ``.npz`` file.

    Treat the returned trace as read-only: it is shared (its arrays are not writeable).

    :param name_or_path: ``"synthetic"``, ``"synthetic-pipeline"``, ``"synthetic:key=value,..."``
        (keys: n, exits, devices, classes, topology, difficulty, seed), a name from
        :data:`SHIPPED_TRACES` (or another file in ``checkpoints/traces/``), or a path.
    """
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"trace: expected a non-empty name or path, got {name_or_path!r}")
    synthetic = parse_synthetic_name(name_or_path)
    if synthetic is not None:
        key = ("synthetic", tuple(sorted(synthetic.items())))
        return _cached(key, lambda: synthetic_trace(**synthetic))
    path = trace_file(name_or_path)
    data = read_trace_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    # Nothing is parsed before this: a shipped file must be listed in MANIFEST with a sha256 that
    # matches the file (verify) and the bytes just read (_check_digest), else ValueError.
    if verify(path):
        _check_digest(path, digest)
    return _cached(("file", digest), lambda: ExitTrace.from_bytes(data, str(path)))


def _cached(key: tuple, make: Callable[[], ExitTrace]) -> ExitTrace:
    """The cached trace for ``key``, else ``make()``'s, frozen (arrays not writeable) and kept."""
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    trace = make()
    for value in vars(trace).values():
        if hasattr(value, "flags"):
            value.flags.writeable = False
    with _CACHE_LOCK:
        trace = _CACHE.setdefault(key, trace)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return trace


def parse_synthetic_name(name: str) -> dict[str, Any] | None:
    """Arguments of :func:`synthetic_trace` from a synthetic name, or None for other names
    (ValueError for a malformed synthetic name)."""
    if name == "synthetic":
        return {}
    if name == "synthetic-pipeline":
        return {"topology": "pipeline"}
    if not name.startswith("synthetic:"):
        return None
    kwargs: dict[str, Any] = {}
    for part in filter(None, name[len("synthetic:") :].split(",")):
        key, sep, raw = (s.strip() for s in part.partition("="))
        if not sep or key not in _SYNTHETIC_KEYS:
            raise ValueError(
                f"trace {name!r}: bad item {part!r}; expected key=value with key in "
                f"{sorted(_SYNTHETIC_KEYS)}"
            )
        arg, cast = _SYNTHETIC_KEYS[key]
        if arg in kwargs:
            raise ValueError(f"trace {name!r}: key {key!r} given twice; give each key once")
        try:
            kwargs[arg] = cast(raw)
        except ValueError:
            raise ValueError(
                f"trace {name!r}: {key}={raw!r} is not allowed; expected a {cast.__name__}"
            ) from None
    return kwargs


def synthetic_name(kwargs: dict[str, Any]) -> str:
    """The synthetic trace name of :func:`synthetic_trace` arguments (the inverse of
    :func:`parse_synthetic_name`, up to spelling)."""
    keys = {arg: key for key, (arg, _) in _SYNTHETIC_KEYS.items()}
    items = ",".join(f"{keys[arg]}={value}" for arg, value in kwargs.items())
    return f"synthetic:{items}" if items else "synthetic"


def trace_file(name: str) -> Path:
    """The file of a trace path or a bare name (not a synthetic one); a missing shipped file
    names the script that makes it."""
    if name.endswith(".npz") or "/" in name or os.sep in name:
        return Path(name).expanduser()
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"trace {name!r}: not a known name; expected 'synthetic', 'synthetic-pipeline', "
            f"'synthetic:key=value,...', one of {sorted(SHIPPED_TRACES)} or a path to an .npz file"
        )
    path = trace_path(name)
    if name in SHIPPED_TRACES and not path.exists():
        raise ValueError(
            f"trace {name!r}: file {str(path)!r} not found. It is made by `{SHIPPED_TRACES[name]}` "
            "and shipped in checkpoints/traces/."
        )
    if not path.exists():
        raise ValueError(
            f"trace {name!r}: file {str(path)!r} not found. Known names: 'synthetic', "
            f"'synthetic-pipeline', 'synthetic:key=value,...', "
            f"{', '.join(repr(s) for s in SHIPPED_TRACES)}, or a path to an .npz file."
        )
    return path


def _check_digest(path: Path, digest: str) -> None:
    """The bytes read must be the ones :func:`verify` vouched for (the file may change between)."""
    entry = manifest_entry(path) or {}
    if entry.get("sha256") != digest:
        raise ValueError(
            f"{str(path)!r}: sha256 {digest[:12]}... of the bytes read does not match the "
            f"MANIFEST's {str(entry.get('sha256'))[:12]}...; the file changed while it was read"
        )
