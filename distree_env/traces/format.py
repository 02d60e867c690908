"""The exit-trace file format (version 2): the :class:`ExitTrace` record, validation, save, load.

Why: the network runs once, offline; the environment replays its record. A trace holds, per
sample, the class probabilities of every exit, the label and DistrEE's feature difference between
consecutive exits, plus cost tables (FLOPs per stage and device, bytes sent per stage). Files are
``.npz`` archives read with ``allow_pickle=False``, and only after every member's declared size and
``.npy`` header have been checked against the caps below, so a file from elsewhere can neither run
code, nor exhaust memory, nor feed the environment nonsense.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
import stat
import struct
import tokenize
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from distree_env.constants import TOPOLOGIES
from distree_env.io import ARCHIVE_ERRORS, atomic_open

__all__ = [
    "MAX_BYTES",
    "MAX_CLASSES",
    "MAX_DEVICES",
    "MAX_EXITS",
    "MAX_FILE_BYTES",
    "MAX_METADATA_CHARS",
    "MAX_METADATA_DEPTH",
    "MAX_SAMPLES",
    "MAX_STAGE_FLOPS",
    "MAX_TRACE_BYTES",
    "TRACE_FORMAT_VERSION",
    "ExitTrace",
    "exit_accuracy",
    "read_trace_bytes",
]

TRACE_FORMAT_VERSION = 2

# ---- caps: checked before anything is allocated; every error names the cap it hit ----------------
#: Samples per trace (CIFAR-10 test: 10 000; ImageNet val: 50 000).
MAX_SAMPLES = 1_000_000
#: Exits (stages) per network.
MAX_EXITS = 32
#: Devices of a cluster.
MAX_DEVICES = 256
#: Classes of a dataset (ImageNet: 1000).
MAX_CLASSES = 1000
#: Size of a trace file on disk.
MAX_FILE_BYTES = 256 << 20
#: Uncompressed size of all members of a trace file together (what loading allocates).
MAX_TRACE_BYTES = 1 << 30
#: Members of the ``.npz`` archive (a version-2 trace has 11).
MAX_MEMBERS = 64
#: FLOPs of one stage on one device, or of one exit head: 1 PFLOP, far beyond any edge network.
MAX_STAGE_FLOPS = 1e15
#: Bytes sent at one stage boundary by one device, or of one input: 1 TB.
MAX_BYTES = 1e12
#: Characters of the JSON metadata.
MAX_METADATA_CHARS = 1 << 20
#: Nesting depth of the JSON metadata.
MAX_METADATA_DEPTH = 16

_ARRAY_KEYS = ("probs", "labels", "feature_diff", "stage_flops", "exit_flops", "transfer_bytes")
_KEYS = ("format_version", *_ARRAY_KEYS, "topology", "class_names", "metadata", "input_bytes")
_KIND_NAMES = {"f": "floating", "i": "signed integer", "u": "unsigned integer"}


def _fail(name: str, problem: str) -> ValueError:
    return ValueError(f"ExitTrace.{name}: {problem}")


def _size(nbytes: float) -> str:
    """``3.64 TiB``: a byte count a reader can take in."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024:
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1024
    return f"{nbytes:.3g} TiB"


# ---- checks on in-memory values ------------------------------------------------------------------
def _check_array(name: str, value: Any, ndim: int, kinds: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise _fail(name, f"expected a numpy array, got {type(value).__name__}")
    if value.ndim != ndim:
        raise _fail(name, f"expected {ndim} dimensions, got shape {value.shape}")
    if value.dtype.kind not in kinds:
        allowed = ", ".join(_KIND_NAMES[k] for k in kinds)
        raise _fail(name, f"dtype {value.dtype} not allowed (allowed: {allowed})")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        bad = int((~np.isfinite(value)).sum())
        raise _fail(name, f"{bad} NaN or infinite values; all values must be finite")
    return value


def _check_cost(name: str, value: Any, ndim: int, ceiling: float, cap: str) -> np.ndarray:
    """A cost table: finite, >= 0 and at most ``ceiling`` (larger costs overflow latencies)."""
    value = _check_array(name, value, ndim, "fiu")
    if value.size and value.min() < 0:
        raise _fail(name, f"negative value {float(value.min())}; values must be >= 0")
    if value.size and float(value.max()) > ceiling:
        raise _fail(
            name,
            f"value {float(value.max()):.4g} is above the ceiling {ceiling:.0e} ({cap}); no edge "
            "network comes near it, and latencies computed from it would overflow",
        )
    return value


def _check_dim(name: str, what: str, size: int, cap: int, cap_name: str) -> None:
    if size > cap:
        raise _fail(name, f"{size} {what}; at most {cap} are allowed ({cap_name})")


def _check_text(name: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _fail(name, f"text is not valid Unicode ({exc.reason} at {exc.start})") from None


def _json_depth_and_text(name: str, value: Any) -> int:
    """Nesting depth of a JSON-like value, walked without recursion; checks every string."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(name, item)
            continue
        if not isinstance(item, (dict, list, tuple)):
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_METADATA_DEPTH:
            break
        children = list(item.items()) if isinstance(item, dict) else [(None, x) for x in item]
        for key, child in children:
            if isinstance(key, str):
                _check_text(name, key)
            stack.append((child, depth + 1))
    return deepest


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict):
        raise _fail("metadata", f"expected a dict, got {type(metadata).__name__}")
    depth = _json_depth_and_text("metadata", metadata)
    if depth > MAX_METADATA_DEPTH:
        raise _fail(
            "metadata",
            f"nested more than {MAX_METADATA_DEPTH} levels deep; at most "
            f"{MAX_METADATA_DEPTH} are allowed (MAX_METADATA_DEPTH)",
        )
    try:
        text = json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _fail("metadata", f"must be JSON-serialisable without NaN ({exc})") from None
    if len(text) > MAX_METADATA_CHARS:
        raise _fail(
            "metadata",
            f"{len(text)} characters as JSON; at most {MAX_METADATA_CHARS} are allowed "
            "(MAX_METADATA_CHARS)",
        )


def exit_accuracy(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Top-1 accuracy of each exit ``[K]`` from probabilities ``[N, K, C]`` and labels ``[N]``."""
    return (probs.argmax(axis=-1) == labels[:, None]).mean(axis=0)


@dataclass(frozen=True, eq=False)
class ExitTrace:
    """Per-sample exit predictions plus per-stage cost tables of one split of one model.

    Shapes: ``n`` samples, ``K`` exits (stages), ``D`` devices, ``C`` classes.

    - ``probs`` ``[n, K, C]`` float: class probabilities at every exit (rows sum to 1).
    - ``labels`` ``[n]`` int: the true class.
    - ``feature_diff`` ``[n, K]`` float in [0, 1]: DistrEE's criterion,
      ``0.5 * || e_k/|e_k| - e_{k-1}/|e_{k-1}| ||`` between the normalised embeddings of
      consecutive exits; 1.0 at exit 0 (no earlier exit agrees). Small = exits agree = safe to exit.
    - ``stage_flops`` ``[K, D]``: FLOPs of stage k on device d; ``exit_flops`` ``[K]``: of exit
      head k.
    - ``transfer_bytes`` ``[K, D]``: bytes device d sends after stage k.
    - ``topology``: one of :data:`~distree_env.constants.TOPOLOGIES`; pipeline needs ``D == K``.
    - ``class_names``, ``metadata`` (JSON-friendly dict), ``input_bytes`` (one input's size).
    """

    probs: np.ndarray
    labels: np.ndarray
    feature_diff: np.ndarray
    stage_flops: np.ndarray
    exit_flops: np.ndarray
    transfer_bytes: np.ndarray
    topology: str
    class_names: tuple[str, ...]
    metadata: dict = field(default_factory=dict)
    input_bytes: float = 0.0

    # ---- shape properties -----------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.probs.shape[0])

    @property
    def num_exits(self) -> int:
        """Number of exits (stages), ``K``."""
        return int(self.probs.shape[1])

    @property
    def num_devices(self) -> int:
        """Number of devices, ``D``."""
        return int(self.stage_flops.shape[1])

    @property
    def num_classes(self) -> int:
        """Number of classes, ``C``."""
        return int(self.probs.shape[2])

    @cached_property
    def exit_accuracy(self) -> np.ndarray:
        """Top-1 accuracy of each exit, ``[K]`` float64, computed from ``probs`` and ``labels``."""
        return exit_accuracy(self.probs, self.labels)

    # ---- validation -----------------------------------------------------------------------------
    def same_samples(self, other: ExitTrace) -> bool:
        """Whether ``other`` holds the same samples (labels and every exit's probabilities),
        whatever its name or file."""
        return np.array_equal(self.labels, other.labels) and np.array_equal(self.probs, other.probs)

    def validate(self) -> None:
        """Raise ValueError naming the field, its value or shape, and what is allowed."""
        n, k, c = self._validate_probs()
        self._validate_labels(n, c)
        self._validate_feature_diff(n, k)
        d = self._validate_costs(k)
        self._validate_topology(k, d)
        self._validate_class_names(c)
        _check_metadata(self.metadata)
        self._validate_input_bytes()

    def _validate_probs(self) -> tuple[int, int, int]:
        probs = self.probs
        if isinstance(probs, np.ndarray) and probs.ndim == 3:
            n, k, c = probs.shape
            _check_dim("probs", "samples", n, MAX_SAMPLES, "MAX_SAMPLES")
            _check_dim("probs", "exits", k, MAX_EXITS, "MAX_EXITS")
            _check_dim("probs", "classes", c, MAX_CLASSES, "MAX_CLASSES")
        probs = _check_array("probs", probs, 3, "f")
        n, k, c = probs.shape
        if n < 1 or k < 1:
            raise _fail("probs", f"shape {probs.shape}: need at least 1 sample and 1 exit")
        if c < 2:
            raise _fail("probs", f"shape {probs.shape}: need at least 2 classes")
        if (probs < 0).any():
            raise _fail("probs", f"negative probability {float(probs.min())}; must be in [0, 1]")
        tol = 1e-2 if probs.dtype == np.float16 else 1e-3
        error = np.abs(probs.astype(np.float32).sum(axis=-1) - 1.0)
        if float(error.max()) > tol:
            sample, exit_ = np.unravel_index(int(error.argmax()), error.shape)
            total = float(probs[sample, exit_].astype(np.float32).sum())
            raise _fail(
                "probs",
                f"rows must sum to 1 (tolerance {tol}); sample {sample} exit {exit_} sums to "
                f"{total:.6f}",
            )
        return n, k, c

    def _validate_labels(self, n: int, c: int) -> None:
        labels = _check_array("labels", self.labels, 1, "iu")
        if labels.shape != (n,):
            raise _fail("labels", f"shape {labels.shape} does not match probs: expected ({n},)")
        if labels.min() < 0 or labels.max() >= c:
            raise _fail(
                "labels",
                f"values must be in [0, {c}) for {c} classes; found min {int(labels.min())}, "
                f"max {int(labels.max())}",
            )

    def _validate_feature_diff(self, n: int, k: int) -> None:
        diff = _check_array("feature_diff", self.feature_diff, 2, "f")
        if diff.shape != (n, k):
            raise _fail(
                "feature_diff", f"shape {diff.shape} does not match probs: expected ({n}, {k})"
            )
        if (diff < 0).any() or (diff > 1).any():
            raise _fail(
                "feature_diff",
                f"values must be in [0, 1]; found [{float(diff.min())}, {float(diff.max())}]",
            )
        if (diff[:, 0] != 1.0).any():
            raise _fail(
                "feature_diff",
                f"exit 0 must be 1.0 for every sample (no earlier exit to agree with); found "
                f"min {float(diff[:, 0].min())}",
            )

    def _validate_costs(self, k: int) -> int:
        flops = self.stage_flops
        if isinstance(flops, np.ndarray) and flops.ndim == 2:
            _check_dim("stage_flops", "devices", flops.shape[1], MAX_DEVICES, "MAX_DEVICES")
        flops = _check_cost("stage_flops", flops, 2, MAX_STAGE_FLOPS, "MAX_STAGE_FLOPS")
        if flops.shape[0] != k or flops.shape[1] < 1:
            raise _fail("stage_flops", f"shape {flops.shape}: expected ({k}, D) with D >= 1")
        d = flops.shape[1]
        exit_flops = _check_cost(
            "exit_flops", self.exit_flops, 1, MAX_STAGE_FLOPS, "MAX_STAGE_FLOPS"
        )
        if exit_flops.shape != (k,):
            raise _fail("exit_flops", f"shape {exit_flops.shape}: expected ({k},)")
        sent = _check_cost("transfer_bytes", self.transfer_bytes, 2, MAX_BYTES, "MAX_BYTES")
        if sent.shape != (k, d):
            raise _fail(
                "transfer_bytes", f"shape {sent.shape}: expected ({k}, {d}) like stage_flops"
            )
        return d

    def _validate_topology(self, k: int, d: int) -> None:
        if self.topology not in TOPOLOGIES:
            raise _fail("topology", f"{self.topology!r} unknown; allowed: {', '.join(TOPOLOGIES)}")
        if self.topology != "pipeline":
            return
        if d != k:
            raise _fail(
                "stage_flops",
                f"pipeline topology needs one device per stage (D == K); got D={d}, K={k}",
            )
        off_diagonal = np.array(self.transfer_bytes, dtype=np.float64)
        np.fill_diagonal(off_diagonal, 0.0)
        if off_diagonal.any() or np.any(self.transfer_bytes[k - 1]):
            raise _fail(
                "transfer_bytes",
                "pipeline topology allows only entries [k, k] for k < K-1 to be non-zero",
            )

    def _validate_class_names(self, c: int) -> None:
        names = self.class_names
        if not isinstance(names, tuple) or not all(isinstance(x, str) for x in names):
            raise _fail("class_names", f"expected a tuple of str, got {names!r:.80}")
        if len(names) != c:
            raise _fail("class_names", f"{len(names)} names for {c} classes; expected {c}")
        for name in names:
            _check_text("class_names", name)

    def _validate_input_bytes(self) -> None:
        value = self.input_bytes
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _fail("input_bytes", f"expected a number, got {value!r}")
        if not (math.isfinite(float(value)) and 0.0 <= float(value) <= MAX_BYTES):
            raise _fail(
                "input_bytes", f"{value!r}: must be finite, >= 0 and <= {MAX_BYTES:.0e} (MAX_BYTES)"
            )

    # ---- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Validate, then write a compressed ``.npz`` atomically (temp file + ``os.replace``).

        :param path: the file to write; its previous content survives a failed or killed write.
        """
        self.validate()
        payload = {
            "format_version": np.array(TRACE_FORMAT_VERSION, dtype=np.int64),
            "probs": self.probs,
            "labels": self.labels.astype(np.int64),
            "feature_diff": self.feature_diff.astype(np.float32),
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
        """Load and validate a trace file; any problem is a ValueError naming the file.

        :param path: an ``.npz`` written by :meth:`save` (format version 2).
        """
        return cls.from_bytes(read_trace_bytes(path), str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> ExitTrace:
        """Parse and validate the bytes of a trace file (checked against the caps first).

        :param data: the whole ``.npz`` file.
        :param source: where the bytes came from, named in every error.
        """
        try:
            trace = cls(**_fields(_read_members(data)))
            trace.validate()
        except ValueError as exc:
            raise ValueError(f"exit trace {source!r}: {exc}") from None
        return trace


def read_trace_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a trace file: a regular file of at most :data:`MAX_FILE_BYTES`.

    :param path: the file; a directory, FIFO or device is refused without being opened.
    """
    p = Path(path)
    try:
        info = p.stat()
    except FileNotFoundError:
        raise ValueError(f"exit trace {str(p)!r}: file not found") from None
    except OSError as exc:
        raise ValueError(f"exit trace {str(p)!r}: cannot be read ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ValueError(f"exit trace {str(p)!r}: is a directory; give the path of an .npz file")
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(
            f"exit trace {str(p)!r}: is not a regular file (a FIFO, socket or device); give the "
            "path of an .npz file"
        )
    if info.st_size > MAX_FILE_BYTES:
        raise ValueError(
            f"exit trace {str(p)!r}: {_size(info.st_size)} on disk; at most "
            f"{_size(MAX_FILE_BYTES)} is allowed (MAX_FILE_BYTES)"
        )
    try:
        with open(p, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"exit trace {str(p)!r}: cannot be read ({exc.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"exit trace {str(p)!r}: grew beyond {_size(MAX_FILE_BYTES)} while read")
    return data


# ---- reading an .npz safely ----------------------------------------------------------------------
def _read_members(data: bytes) -> dict[str, np.ndarray]:
    """Every member of a version-2 trace, after the archive and each header passed the caps."""
    _check_member_count(data)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = {info.filename: info for info in archive.infolist()}
            _check_declared_sizes(infos)
            _check_version(archive, infos)
            _check_member_names(infos)
            for key in _KEYS:
                _check_header(archive, infos[f"{key}.npy"])
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {key: npz[key] for key in _KEYS}
    except ARCHIVE_ERRORS as exc:
        raise ValueError(
            f"corrupt or truncated file, not a readable .npz ({type(exc).__name__}: {exc})"
        ) from None


def _check_member_count(data: bytes) -> None:
    """Refuse archives listing more members than :data:`MAX_MEMBERS` before zipfile parses them."""
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 0xFFFF))
    if end < 0 or end + 22 > len(data):
        raise ValueError("corrupt or truncated file, not a readable .npz (no zip directory)")
    (count,) = struct.unpack_from("<H", data, end + 10)
    if count > MAX_MEMBERS:
        raise ValueError(
            f"the archive lists {count} members; at most {MAX_MEMBERS} are allowed (MAX_MEMBERS): "
            "not an exit trace (ExitTrace.save writes one .npz of 11 arrays)"
        )


def _check_declared_sizes(infos: dict[str, zipfile.ZipInfo]) -> None:
    """Zip bomb guard: the declared uncompressed sizes (which zipfile enforces) must fit the cap."""
    total = sum(info.file_size for info in infos.values())
    if total > MAX_TRACE_BYTES:
        raise ValueError(
            f"the archive declares {_size(total)} uncompressed; at most {_size(MAX_TRACE_BYTES)} "
            "is allowed (MAX_TRACE_BYTES)"
        )


def _check_version(archive: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo]) -> None:
    info = infos.get("format_version.npy")
    if info is None:
        raise ValueError(f"missing keys ['format_version']; a trace needs {list(_KEYS)}")
    _check_header(archive, info)
    with archive.open(info) as handle:
        version = np.lib.format.read_array(handle, allow_pickle=False)
    if version.shape != () or version.dtype.kind not in "iu":
        raise ValueError(f"format_version must be an integer scalar, got {version!r}")
    if int(version) == 1:
        raise ValueError(
            "format_version 1 is no longer read: it stored 'similarity' (a cosine, large = exits "
            "agree); version 2 stores 'feature_diff' (DistrEE's feature difference, small = exits "
            "agree). Re-export the trace with `python -m experiments.export_traces`"
        )
    if int(version) != TRACE_FORMAT_VERSION:
        raise ValueError(
            f"format_version {int(version)} unknown; this code reads version {TRACE_FORMAT_VERSION}"
        )


def _check_member_names(infos: dict[str, zipfile.ZipInfo]) -> None:
    expected = {f"{key}.npy" for key in _KEYS}
    missing = [key for key in _KEYS if f"{key}.npy" not in infos]
    if missing:
        raise ValueError(f"missing keys {missing}; a trace needs {list(_KEYS)}")
    unexpected = sorted(set(infos) - expected)
    if unexpected:
        raise ValueError(
            f"unexpected members {unexpected[:5]}; a version-{TRACE_FORMAT_VERSION} trace holds "
            f"only {list(_KEYS)}"
        )


def _check_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Read one ``.npy`` header and refuse object dtypes and shapes beyond the caps or the data."""
    name = info.filename
    with archive.open(info) as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise ValueError(f".npy version {version} is not read; allowed: (1, 0), (2, 0)")
        except (ValueError, SyntaxError, tokenize.TokenError) as exc:
            raise ValueError(f"member {name!r}: not a valid .npy header ({exc})") from None
    if dtype.hasobject:
        raise ValueError(
            f"member {name!r}: dtype {dtype} holds Python objects, which only unpickling could "
            "read; a trace holds numbers and text only"
        )
    if any(size < 0 for size in shape):
        raise ValueError(f"member {name!r}: declares shape {shape}; dimensions must be >= 0")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_TRACE_BYTES:
        raise ValueError(
            f"member {name!r}: declares shape {shape} of {dtype} = {_size(nbytes)}; at most "
            f"{_size(MAX_TRACE_BYTES)} is allowed (MAX_TRACE_BYTES)"
        )
    if nbytes > info.file_size:
        raise ValueError(
            f"member {name!r}: declares shape {shape} of {dtype} = {nbytes} bytes, but the member "
            f"holds {info.file_size} bytes; the file is truncated or forged"
        )


def _text(key: str, value: np.ndarray, ndim: int) -> Any:
    """A text member as str (``ndim`` 0) or list of str (``ndim`` 1); bytes and bad code refused."""
    if value.dtype.kind == "S":
        raise ValueError(
            f"{key} is stored as bytes (dtype {value.dtype}, e.g. Latin-1 text); a trace stores "
            "text as Unicode (numpy 'U' dtype)"
        )
    if value.dtype.kind != "U" or value.ndim != ndim:
        kind = "scalar" if ndim == 0 else "1-d array"
        raise ValueError(
            f"{key} must be a Unicode {kind}, got dtype {value.dtype} and shape {value.shape}"
        )
    try:
        text = value.tolist()
        for item in [text] if ndim == 0 else text:
            item.encode("utf-8")
    except (UnicodeError, ValueError) as exc:
        raise ValueError(f"{key} holds text that is not valid Unicode ({exc})") from None
    return text


def _metadata(text: str) -> dict:
    if len(text) > MAX_METADATA_CHARS:
        raise ValueError(
            f"metadata is {len(text)} characters; at most {MAX_METADATA_CHARS} are allowed "
            "(MAX_METADATA_CHARS)"
        )
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(
            f"metadata is nested too deeply; at most {MAX_METADATA_DEPTH} levels are allowed "
            "(MAX_METADATA_DEPTH)"
        ) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"metadata is not valid JSON ({exc})") from None


def _fields(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Constructor arguments of :class:`ExitTrace` from the members of a file."""
    input_bytes = arrays["input_bytes"]
    if input_bytes.shape != () or input_bytes.dtype.kind not in "fiu":
        raise ValueError(f"input_bytes must be a numeric scalar, got dtype {input_bytes.dtype}")
    labels = arrays["labels"]
    return {
        **{key: arrays[key] for key in _ARRAY_KEYS},
        "labels": labels.astype(np.int64) if labels.dtype.kind in "iu" else labels,
        "topology": _text("topology", arrays["topology"], 0),
        "class_names": tuple(_text("class_names", arrays["class_names"], 1)),
        "metadata": _metadata(_text("metadata", arrays["metadata"], 0)),
        "input_bytes": float(input_bytes),
    }
