"""Exit traces: what the multi-branch network said about every sample, at every exit.

Why: the network is expensive and runs once, offline; the environment replays its record. A trace
holds, per sample, the class probabilities of every exit, the label and the similarity feature of
DistrEE's exit rule, plus the cost tables (FLOPs per stage and device, bytes sent per stage). The
format is a versioned ``.npz`` loaded with ``allow_pickle=False`` and always validated, so a file
from elsewhere can neither run code nor feed the environment nonsense.
"""

from __future__ import annotations

import json
import math
import os
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from distree_env.io import atomic_open
from distree_env.manifest import checkpoints_dir, verify

__all__ = [
    "SHIPPED_TRACES",
    "TOPOLOGIES",
    "TRACE_FORMAT_VERSION",
    "ExitTrace",
    "resolve_trace",
    "synthetic_trace",
    "trace_path",
]

TRACE_FORMAT_VERSION = 1
TOPOLOGIES = ("parallel", "pipeline")
#: Names of traces shipped under ``checkpoints/traces/`` (by experiments/export_traces.py).
SHIPPED_TRACES = ("cifar10-val", "cifar10-test")

_ARRAY_KEYS = ("probs", "labels", "similarity", "stage_flops", "exit_flops", "transfer_bytes")
_REQUIRED_KEYS = (
    "format_version",
    *_ARRAY_KEYS,
    "topology",
    "class_names",
    "metadata",
    "input_bytes",
)


def _fail(name: str, problem: str) -> ValueError:
    return ValueError(f"ExitTrace.{name}: {problem}")


def _check_array(name: str, value: Any, ndim: int, kinds: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise _fail(name, f"expected a numpy array, got {type(value).__name__}")
    if value.ndim != ndim:
        raise _fail(name, f"expected {ndim} dimensions, got shape {value.shape}")
    if value.dtype.kind not in kinds:
        allowed = {"f": "floating", "i": "signed integer", "u": "unsigned integer"}
        raise _fail(
            name,
            f"dtype {value.dtype} not allowed (allowed: {', '.join(allowed[k] for k in kinds)})",
        )
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        bad = int((~np.isfinite(value)).sum())
        raise _fail(name, f"{bad} NaN or infinite values; all values must be finite")
    return value


def _check_nonneg(name: str, value: np.ndarray) -> None:
    if (value < 0).any():
        raise _fail(name, f"negative value {float(value.min())}; values must be >= 0")


@dataclass(frozen=True, eq=False)
class ExitTrace:
    """Per-sample exit predictions plus per-stage cost tables of one split of one model.

    Shapes: ``n`` samples, ``K`` exits (stages), ``D`` devices, ``C`` classes.
    See DESIGN.md for the meaning of each table; :meth:`validate` states the rules.
    """

    probs: np.ndarray
    labels: np.ndarray
    similarity: np.ndarray
    stage_flops: np.ndarray
    exit_flops: np.ndarray
    transfer_bytes: np.ndarray
    topology: str
    class_names: tuple[str, ...]
    metadata: dict = field(default_factory=dict)
    input_bytes: float = 0.0

    # ---- shape properties -------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.probs.shape[0])

    @property
    def num_exits(self) -> int:
        return int(self.probs.shape[1])

    @property
    def num_devices(self) -> int:
        return int(self.stage_flops.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.probs.shape[2])

    @cached_property
    def exit_accuracy(self) -> np.ndarray:
        """Top-1 accuracy of each exit, ``[K]`` float64, computed from ``probs`` and ``labels``."""
        pred = self.probs.argmax(axis=-1)
        return (pred == self.labels[:, None]).mean(axis=0)

    # ---- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the field, its value or shape, and what is allowed."""
        probs = _check_array("probs", self.probs, 3, "f")
        n, k, c = probs.shape
        if n < 1 or k < 1:
            raise _fail("probs", f"shape {probs.shape}: need at least 1 sample and 1 exit")
        if c < 2:
            raise _fail("probs", f"shape {probs.shape}: need at least 2 classes")
        if (probs < 0).any():
            raise _fail("probs", f"negative probability {float(probs.min())}; must be in [0, 1]")
        tol = 1e-2 if probs.dtype == np.float16 else 1e-3
        sums = probs.astype(np.float32).sum(axis=-1)
        worst = float(np.abs(sums - 1.0).max())
        if worst > tol:
            idx = np.unravel_index(int(np.abs(sums - 1.0).argmax()), sums.shape)
            raise _fail(
                "probs",
                f"rows must sum to 1 (tolerance {tol}); sample {idx[0]} exit {idx[1]} sums to "
                f"{float(sums[idx]):.6f}",
            )
        labels = _check_array("labels", self.labels, 1, "iu")
        if labels.shape != (n,):
            raise _fail("labels", f"shape {labels.shape} does not match probs: expected ({n},)")
        if labels.min() < 0 or labels.max() >= c:
            raise _fail(
                "labels",
                f"values must be in [0, {c}) for {c} classes; found min {int(labels.min())}, "
                f"max {int(labels.max())}",
            )
        sim = _check_array("similarity", self.similarity, 2, "f")
        if sim.shape != (n, k):
            raise _fail(
                "similarity", f"shape {sim.shape} does not match probs: expected ({n}, {k})"
            )
        if (sim < 0).any() or (sim > 1).any():
            raise _fail(
                "similarity",
                f"values must be in [0, 1]; found [{float(sim.min())}, {float(sim.max())}]",
            )
        flops = _check_array("stage_flops", self.stage_flops, 2, "fiu")
        if flops.shape[0] != k or flops.shape[1] < 1:
            raise _fail("stage_flops", f"shape {flops.shape}: expected ({k}, D) with D >= 1")
        _check_nonneg("stage_flops", flops)
        d = flops.shape[1]
        exit_flops = _check_array("exit_flops", self.exit_flops, 1, "fiu")
        if exit_flops.shape != (k,):
            raise _fail("exit_flops", f"shape {exit_flops.shape}: expected ({k},)")
        _check_nonneg("exit_flops", exit_flops)
        tb = _check_array("transfer_bytes", self.transfer_bytes, 2, "fiu")
        if tb.shape != (k, d):
            raise _fail("transfer_bytes", f"shape {tb.shape}: expected ({k}, {d}) like stage_flops")
        _check_nonneg("transfer_bytes", tb)
        if self.topology not in TOPOLOGIES:
            raise _fail("topology", f"{self.topology!r} unknown; allowed: {', '.join(TOPOLOGIES)}")
        if self.topology == "pipeline":
            if d != k:
                raise _fail(
                    "stage_flops",
                    f"pipeline topology needs one device per stage (D == K); got D={d}, K={k}",
                )
            off_diag = tb.copy()
            np.fill_diagonal(off_diag, 0.0)
            if off_diag.any() or tb[k - 1].any():
                raise _fail(
                    "transfer_bytes",
                    "pipeline topology allows only entries [k, k] for k < K-1 to be non-zero",
                )
        if not isinstance(self.class_names, tuple) or not all(
            isinstance(x, str) for x in self.class_names
        ):
            raise _fail("class_names", f"expected a tuple of str, got {self.class_names!r:.80}")
        if len(self.class_names) != c:
            raise _fail(
                "class_names", f"{len(self.class_names)} names for {c} classes; expected {c}"
            )
        if not isinstance(self.metadata, dict):
            raise _fail("metadata", f"expected a dict, got {type(self.metadata).__name__}")
        try:
            json.dumps(self.metadata, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise _fail("metadata", f"must be JSON-serialisable without NaN ({exc})") from exc
        ib = self.input_bytes
        if isinstance(ib, bool) or not isinstance(ib, (int, float, np.floating, np.integer)):
            raise _fail("input_bytes", f"expected a number, got {ib!r}")
        if not math.isfinite(float(ib)) or float(ib) < 0:
            raise _fail("input_bytes", f"{ib!r}: must be finite and >= 0")

    # ---- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Validate, then write a compressed ``.npz`` atomically (temp file + ``os.replace``)."""
        self.validate()
        payload = {
            "format_version": np.array(TRACE_FORMAT_VERSION, dtype=np.int64),
            "probs": self.probs,
            "labels": self.labels.astype(np.int64),
            "similarity": self.similarity.astype(np.float32),
            "stage_flops": self.stage_flops.astype(np.float64),
            "exit_flops": self.exit_flops.astype(np.float64),
            "transfer_bytes": self.transfer_bytes.astype(np.float64),
            "topology": np.array(self.topology, dtype=np.str_),
            "class_names": np.array(self.class_names, dtype=np.str_),
            "metadata": np.array(json.dumps(self.metadata, sort_keys=True), dtype=np.str_),
            "input_bytes": np.array(float(self.input_bytes), dtype=np.float64),
        }
        with atomic_open(path, "wb") as handle:
            np.savez_compressed(handle, **payload)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ExitTrace:
        """Load and validate a trace; any problem is a ValueError naming the file."""
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"exit trace {str(p)!r}: file not found")
        try:
            with np.load(p, allow_pickle=False) as data:
                missing = [key for key in _REQUIRED_KEYS if key not in data.files]
                if missing:
                    raise ValueError(
                        f"missing keys {missing}; a trace needs {list(_REQUIRED_KEYS)}"
                    )
                arrays = {key: data[key] for key in _REQUIRED_KEYS}
        except ValueError as exc:
            raise ValueError(f"exit trace {str(p)!r}: {exc}") from exc
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
            raise ValueError(
                f"exit trace {str(p)!r}: corrupt or truncated file, not a readable .npz "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        try:
            version = arrays["format_version"]
            if version.shape != () or version.dtype.kind not in "iu":
                raise ValueError(f"format_version must be an integer scalar, got {version!r}")
            if int(version) != TRACE_FORMAT_VERSION:
                raise ValueError(
                    f"format_version {int(version)} unknown; this code reads version "
                    f"{TRACE_FORMAT_VERSION}"
                )
            for key in ("topology", "metadata"):
                if arrays[key].shape != () or arrays[key].dtype.kind != "U":
                    raise ValueError(f"{key} must be a unicode scalar, got {arrays[key].dtype}")
            if arrays["class_names"].ndim != 1 or arrays["class_names"].dtype.kind != "U":
                raise ValueError("class_names must be a 1-d unicode array")
            if arrays["input_bytes"].shape != () or arrays["input_bytes"].dtype.kind not in "fiu":
                raise ValueError("input_bytes must be a numeric scalar")
            try:
                metadata = json.loads(str(arrays["metadata"]))
            except json.JSONDecodeError as exc:
                raise ValueError(f"metadata is not valid JSON ({exc})") from exc
            labels = arrays["labels"]
            trace = cls(
                probs=arrays["probs"],
                labels=labels.astype(np.int64) if labels.dtype.kind in "iu" else labels,
                similarity=arrays["similarity"],
                stage_flops=arrays["stage_flops"],
                exit_flops=arrays["exit_flops"],
                transfer_bytes=arrays["transfer_bytes"],
                topology=str(arrays["topology"]),
                class_names=tuple(str(x) for x in arrays["class_names"]),
                metadata=metadata,
                input_bytes=float(arrays["input_bytes"]),
            )
            trace.validate()
        except ValueError as exc:
            raise ValueError(f"exit trace {str(p)!r}: {exc}") from exc
        return trace


# ---- synthetic traces -----------------------------------------------------------------------
def synthetic_trace(
    n: int = 4000,
    num_exits: int = 4,
    num_devices: int | None = None,
    num_classes: int = 10,
    topology: str = "parallel",
    difficulty: float = 0.5,
    seed: int = 0,
) -> ExitTrace:
    """A made-up trace in the real format, for tests and for users without a trained network.

    Per-exit accuracy rises with depth (about 0.55 -> 0.90 at ``difficulty=0.5``; harder is
    lower), confidences look calibrated (a correct exit is usually more confident), and
    DistrEE's similarity feature rises with depth and when consecutive exits agree. Costs mimic
    a small CIFAR-10 network: ``num_devices`` branches (parallel) or one backbone cut in
    ``num_exits`` segments (pipeline; ``num_devices`` defaults to and must equal ``num_exits``).
    Deterministic from ``seed``.
    """
    if topology not in TOPOLOGIES:
        raise ValueError(f"synthetic_trace: topology {topology!r} unknown; allowed {TOPOLOGIES}")
    if num_devices is None:
        num_devices = num_exits if topology == "pipeline" else 4
    for name, value, low in (
        ("n", n, 1),
        ("num_exits", num_exits, 1),
        ("num_devices", num_devices, 1),
        ("num_classes", num_classes, 2),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"synthetic_trace: {name}={value!r}; must be an integer >= {low}")
    if topology == "pipeline" and num_devices != num_exits:
        raise ValueError(
            f"synthetic_trace: pipeline needs num_devices == num_exits, got {num_devices} "
            f"and {num_exits}"
        )
    if not (isinstance(difficulty, (int, float)) and 0.0 <= float(difficulty) <= 1.0):
        raise ValueError(f"synthetic_trace: difficulty={difficulty!r}; must be in [0, 1]")
    rng = np.random.default_rng(seed)
    k_count, c = int(num_exits), int(num_classes)
    depth = np.linspace(0.0, 1.0, k_count) if k_count > 1 else np.ones(1)
    acc_first, acc_last = 0.8 - 0.5 * difficulty, 0.98 - 0.16 * difficulty
    target_acc = acc_first + (acc_last - acc_first) * np.sqrt(depth)

    labels = rng.integers(0, c, size=n)
    hardness = rng.random(n)
    score = hardness[:, None] + 0.15 * rng.standard_normal((n, k_count))
    thresholds = np.array([np.quantile(score[:, j], target_acc[j]) for j in range(k_count)])
    slack = thresholds[None, :] - score  # > 0 exactly when the exit is right
    correct = slack > 0
    # Confidence: logistic in the slack, sharper and higher for deeper exits.
    conf_raw = 1.0 / (1.0 + np.exp(-(6.0 * slack - 0.4 + 1.6 * depth[None, :])))
    top = 1.0 / c + (1.0 - 1.0 / c) * (0.04 + 0.95 * conf_raw)
    wrong_shift = rng.integers(1, c, size=(n, k_count))
    pred = np.where(correct, labels[:, None], (labels[:, None] + wrong_shift) % c)

    # Spread the remaining mass over the other classes, keeping the predicted class the argmax.
    rest = rng.dirichlet(np.ones(c - 1), size=(n, k_count)) if c > 2 else np.ones((n, k_count, 1))
    uniform = 1.0 / (c - 1)
    room = (1.0 - top)[..., None]
    cap = 0.95 * top[..., None]
    excess = room * rest.max(axis=-1, keepdims=True)
    blend = np.clip((cap - room * uniform) / np.maximum(excess - room * uniform, 1e-12), 0.0, 1.0)
    rest = blend * rest + (1.0 - blend) * uniform
    probs = np.empty((n, k_count, c), dtype=np.float64)
    other_idx = (pred[..., None] + 1 + np.arange(c - 1)[None, None, :]) % c
    np.put_along_axis(probs, pred[..., None], top[..., None], axis=-1)
    np.put_along_axis(probs, other_idx, room * rest, axis=-1)
    probs = probs.astype(np.float32)
    probs /= probs.sum(axis=-1, keepdims=True)

    similarity = np.zeros((n, k_count), dtype=np.float32)
    if k_count > 1:
        agree = (pred[:, 1:] == pred[:, :-1]).astype(np.float64)
        sim = 0.3 + 0.3 * depth[None, 1:] + 0.25 * agree + 0.12 * rng.standard_normal(agree.shape)
        similarity[:, 1:] = np.clip(sim, 0.0, 1.0)

    # Costs (FLOPs = 2 x multiply-adds) of a small CIFAR-10 network.
    d = int(num_devices)
    stage_weight = 0.8 + 0.4 * rng.random(k_count)
    stage_weight /= stage_weight.sum()
    stage_flops = np.zeros((k_count, d))
    transfer = np.zeros((k_count, d))
    if topology == "parallel":
        branch_macs = 60e6 / max(1, d // 2)  # each device runs a slim student branch
        stage_flops[:] = 2.0 * branch_macs * stage_weight[:, None]
        transfer[:] = 64 * 4  # pooled 64-dim float32 feature per device per stage
        exit_flops = 2.0 * (d * 64) * c * np.ones(k_count)
    else:
        backbone_macs = 60e6
        np.fill_diagonal(stage_flops, 2.0 * backbone_macs * stage_weight)
        fmap = 32 * 32 * 32 * 4 / (2 ** np.arange(k_count))  # halving feature maps, float32
        np.fill_diagonal(transfer, fmap)
        transfer[k_count - 1, k_count - 1] = 0.0
        exit_flops = 2.0 * 128 * c * np.ones(k_count)
    class_names = tuple(f"class_{i}" for i in range(c))
    if c == 10:
        class_names = (
            "airplane", "automobile", "bird", "cat", "deer",
            "dog", "frog", "horse", "ship", "truck",
        )  # fmt: skip
    acc = (probs.argmax(-1) == labels[:, None]).mean(0)
    trace = ExitTrace(
        probs=probs,
        labels=labels.astype(np.int64),
        similarity=similarity,
        stage_flops=stage_flops,
        exit_flops=exit_flops,
        transfer_bytes=transfer,
        topology=topology,
        class_names=class_names,
        metadata={
            "dataset": "synthetic",
            "split": "synthetic",
            "generator": {
                "n": int(n),
                "num_exits": k_count,
                "num_devices": d,
                "num_classes": c,
                "topology": topology,
                "difficulty": float(difficulty),
                "seed": int(seed),
            },
            "exit_accuracy": [round(float(a), 4) for a in acc],
        },
        input_bytes=float(32 * 32 * 3),
    )
    trace.validate()
    return trace


# ---- resolving names --------------------------------------------------------------------------
_SYNTH_KEYS = {
    "n": ("n", int),
    "exits": ("num_exits", int),
    "devices": ("num_devices", int),
    "classes": ("num_classes", int),
    "topology": ("topology", str),
    "difficulty": ("difficulty", float),
    "seed": ("seed", int),
}


def _parse_synthetic(name: str) -> dict[str, Any] | None:
    """Parse ``synthetic``, ``synthetic-pipeline`` or ``synthetic:key=value,...``."""
    if name == "synthetic":
        return {}
    if name == "synthetic-pipeline":
        return {"topology": "pipeline"}
    if not name.startswith("synthetic:"):
        return None
    kwargs: dict[str, Any] = {}
    for part in filter(None, name[len("synthetic:") :].split(",")):
        key, sep, raw = part.partition("=")
        if not sep or key.strip() not in _SYNTH_KEYS:
            raise ValueError(
                f"trace {name!r}: bad item {part!r}; expected key=value with key in "
                f"{sorted(_SYNTH_KEYS)}"
            )
        arg, cast = _SYNTH_KEYS[key.strip()]
        try:
            kwargs[arg] = cast(raw.strip())
        except ValueError as exc:
            raise ValueError(f"trace {name!r}: {key}={raw!r} is not a {cast.__name__}") from exc
    return kwargs


def trace_path(name: str) -> Path:
    """Where the shipped trace ``name`` lives: ``<checkpoints>/traces/<name>.npz``."""
    return checkpoints_dir() / "traces" / f"{name}.npz"


_CACHE: dict[tuple, ExitTrace] = {}
_CACHE_LOCK = threading.Lock()


def resolve_trace(name_or_path: str | os.PathLike[str]) -> ExitTrace:
    """Return the trace for a name (``synthetic...``, a shipped name) or a path to an ``.npz``.

    Shipped files are checked against ``checkpoints/MANIFEST.json`` before they are read.
    Results are cached in-process (by resolved path, mtime and size, or by synthetic
    parameters), so creating many environments is cheap. Treat the returned arrays as read-only.
    """
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"trace: expected a non-empty name or path, got {name_or_path!r}")
    synth = _parse_synthetic(name_or_path)
    if synth is not None:
        key: tuple = ("synthetic", tuple(sorted(synth.items())))
        with _CACHE_LOCK:
            if key not in _CACHE:
                _CACHE[key] = synthetic_trace(**synth)
            return _CACHE[key]
    looks_like_path = name_or_path.endswith(".npz") or os.sep in name_or_path or "/" in name_or_path
    if looks_like_path:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ValueError(f"trace: file {str(path)!r} not found")
    else:
        path = trace_path(name_or_path)
        if not path.is_file():
            hint = (
                " It is produced by `python -m experiments.export_traces` and shipped in "
                "checkpoints/traces/."
                if name_or_path in SHIPPED_TRACES
                else f" Known names: 'synthetic', 'synthetic-pipeline', 'synthetic:key=value,...', "
                f"{', '.join(repr(s) for s in SHIPPED_TRACES)}, or a path to an .npz file."
            )
            raise ValueError(f"trace {name_or_path!r}: file {str(path)!r} not found.{hint}")
    path = path.resolve()
    stat = path.stat()
    key = ("file", str(path), stat.st_mtime_ns, stat.st_size)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    verify(path)
    trace = ExitTrace.load(path)
    with _CACHE_LOCK:
        _CACHE[key] = trace
    return trace
