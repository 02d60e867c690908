"""Exit-trace format: round trip, validation, safe and atomic file handling, name resolution."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest

from distree_env import io as dio
from distree_env.trace import (
    TRACE_FORMAT_VERSION,
    ExitTrace,
    resolve_trace,
    synthetic_trace,
)


@pytest.fixture(scope="module")
def small():
    return synthetic_trace(n=200, seed=3)


def test_synthetic_is_deterministic_and_plausible():
    a, b = synthetic_trace(n=2000, seed=1), synthetic_trace(n=2000, seed=1)
    assert np.array_equal(a.probs, b.probs) and np.array_equal(a.labels, b.labels)
    acc = a.exit_accuracy
    assert np.all(np.diff(acc) > 0), acc  # accuracy rises with depth
    assert 0.45 < acc[0] < 0.65 and 0.85 < acc[-1] < 0.95
    conf = a.probs.max(-1)
    right = a.probs.argmax(-1) == a.labels[:, None]
    assert conf[right].mean() > conf[~right].mean() + 0.2  # calibrated-looking
    assert (
        np.all(a.similarity[:, 0] == 0) and a.similarity[:, -1].mean() > a.similarity[:, 1].mean()
    )
    assert not np.array_equal(synthetic_trace(n=2000, seed=2).labels, a.labels)


def test_synthetic_difficulty_lowers_accuracy():
    easy, hard = synthetic_trace(n=2000, difficulty=0.0), synthetic_trace(n=2000, difficulty=1.0)
    assert np.all(easy.exit_accuracy > hard.exit_accuracy)


def test_pipeline_trace_layout():
    t = synthetic_trace(n=100, topology="pipeline", num_exits=3)
    assert t.num_devices == 3 and t.topology == "pipeline"
    assert np.count_nonzero(t.transfer_bytes) == 2 and not t.transfer_bytes[-1].any()


def test_round_trip(tmp_path, small):
    path = tmp_path / "t.npz"
    small.save(path)
    back = ExitTrace.load(path)
    for f in ("probs", "labels", "similarity", "stage_flops", "exit_flops", "transfer_bytes"):
        assert np.array_equal(getattr(back, f), getattr(small, f)), f
    assert back.class_names == small.class_names and back.metadata == small.metadata
    assert back.topology == small.topology and back.input_bytes == small.input_bytes
    with np.load(path, allow_pickle=False) as data:
        assert int(data["format_version"]) == TRACE_FORMAT_VERSION


def test_float16_probs_accepted(tmp_path, small):
    t = dataclasses.replace(small, probs=small.probs.astype(np.float16))
    t.save(tmp_path / "h.npz")
    assert ExitTrace.load(tmp_path / "h.npz").probs.dtype == np.float16


def _bad(small, **changes):
    return dataclasses.replace(small, **changes)


def _nan_probs(t):
    p = t.probs.copy()
    p[0, 0, 0] = np.nan
    return p


BAD_TRACES = {
    "probs-nan": (lambda t: {"probs": _nan_probs(t)}, "probs"),
    "probs-sum": (lambda t: {"probs": t.probs * 0.5}, "sum to 1"),
    "probs-negative": (lambda t: {"probs": t.probs - 0.2}, "probs"),
    "probs-2d": (lambda t: {"probs": t.probs[:, 0]}, "probs"),
    "probs-int": (lambda t: {"probs": t.probs.astype(np.int64)}, "probs"),
    "labels-range": (lambda t: {"labels": t.labels + 10}, "labels"),
    "labels-negative": (lambda t: {"labels": t.labels - 20}, "labels"),
    "labels-shape": (lambda t: {"labels": t.labels[:-1]}, "labels"),
    "labels-float": (lambda t: {"labels": t.labels.astype(np.float64)}, "labels"),
    "similarity-range": (lambda t: {"similarity": t.similarity + 2}, "similarity"),
    "similarity-shape": (lambda t: {"similarity": t.similarity[:, :2]}, "similarity"),
    "stage-flops-negative": (lambda t: {"stage_flops": -t.stage_flops}, "stage_flops"),
    "stage-flops-inf": (lambda t: {"stage_flops": t.stage_flops * np.inf}, "stage_flops"),
    "stage-flops-shape": (lambda t: {"stage_flops": t.stage_flops[:2]}, "stage_flops"),
    "exit-flops-shape": (lambda t: {"exit_flops": t.exit_flops[:2]}, "exit_flops"),
    "transfer-shape": (lambda t: {"transfer_bytes": t.transfer_bytes[:, :2]}, "transfer_bytes"),
    "topology": (lambda t: {"topology": "mesh"}, "topology"),
    "pipeline-devices": (
        lambda t: {
            "topology": "pipeline",
            "stage_flops": t.stage_flops[:, :3],
            "transfer_bytes": t.transfer_bytes[:, :3],
        },
        "D == K",
    ),
    "class-names": (lambda t: {"class_names": ("a", "b")}, "class_names"),
    "metadata": (lambda t: {"metadata": {"x": float("nan")}}, "metadata"),
    "input-bytes": (lambda t: {"input_bytes": -1.0}, "input_bytes"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRACES))
def test_validate_refuses(small, case):
    change, match = BAD_TRACES[case]
    with pytest.raises(ValueError, match=match):
        _bad(small, **change(small)).validate()


def _write_npz(path, **arrays):
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _arrays(t):
    """The raw arrays of a trace file, to be tampered with."""
    return {
        "format_version": np.array(TRACE_FORMAT_VERSION),
        "probs": t.probs,
        "labels": t.labels,
        "similarity": t.similarity,
        "stage_flops": t.stage_flops,
        "exit_flops": t.exit_flops,
        "transfer_bytes": t.transfer_bytes,
        "topology": np.array(t.topology),
        "class_names": np.array(t.class_names),
        "metadata": np.array(json.dumps(t.metadata)),
        "input_bytes": np.array(t.input_bytes),
    }


FILE_CASES = {
    "version": ({"format_version": np.array(99)}, "format_version 99 unknown"),
    "missing-key": ({"probs": None}, "missing keys"),
    "nan": ({"similarity": "nan"}, "similarity"),
    "labels-range": ({"labels": "big"}, "labels"),
    "metadata-json": ({"metadata": np.array("{not json")}, "metadata"),
    "object-array": ({"class_names": np.array([object()], dtype=object)}, "pickle|Object"),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_load_refuses_bad_files(tmp_path, small, case):
    change, match = FILE_CASES[case]
    arrays = _arrays(small)
    for key, value in change.items():
        if value is None:
            del arrays[key]
        elif isinstance(value, str) and value == "nan":
            bad = arrays[key].copy()
            bad[0, 1] = np.nan
            arrays[key] = bad
        elif isinstance(value, str) and value == "big":
            arrays[key] = arrays[key] + 100
        else:
            arrays[key] = value
    path = tmp_path / "bad.npz"
    _write_npz(path, **arrays)  # an object array is pickled inside the .npz
    with pytest.raises(ValueError, match=match) as info:
        ExitTrace.load(path)
    assert str(path) in str(info.value)


def test_load_refuses_truncated_and_garbage(tmp_path, small):
    good = tmp_path / "good.npz"
    small.save(good)
    data = good.read_bytes()
    for name, content in {
        "truncated.npz": data[: len(data) // 2],
        "garbage.npz": b"this is not a zip file" * 10,
        "empty.npz": b"",
    }.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(ValueError, match="corrupt|truncated|missing|not"):
            ExitTrace.load(p)
    with pytest.raises(ValueError, match="not found"):
        ExitTrace.load(tmp_path / "nope.npz")


def test_atomic_save_keeps_previous_file(tmp_path, small, monkeypatch):
    path = tmp_path / "t.npz"
    small.save(path)
    before = path.read_bytes()
    real = np.savez_compressed

    def dies_midway(handle, **arrays):
        handle.write(b"PK\x03\x04 partial garbage")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(np, "savez_compressed", dies_midway)
    other = synthetic_trace(n=50, seed=9)
    with pytest.raises(KeyboardInterrupt):
        other.save(path)
    monkeypatch.setattr(np, "savez_compressed", real)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.npz"]  # no temp file left behind
    assert ExitTrace.load(path).n == small.n


def test_atomic_write_text(tmp_path):
    p = tmp_path / "x.json"
    with dio.atomic_open(p, "w") as h:
        h.write("{}")
    assert p.read_text() == "{}"
    with pytest.raises(ValueError, match="mode"):
        with dio.atomic_open(p, "a"):
            pass


def test_resolve_synthetic_names():
    assert resolve_trace("synthetic") is resolve_trace("synthetic")  # cached
    t = resolve_trace("synthetic:exits=3,devices=2,classes=5,n=300,seed=4")
    assert (t.num_exits, t.num_devices, t.num_classes, t.n) == (3, 2, 5, 300)
    assert resolve_trace("synthetic-pipeline").topology == "pipeline"
    for bad in ("synthetic:exits=x", "synthetic:colour=3", "synthetic:exits"):
        with pytest.raises(ValueError, match="trace"):
            resolve_trace(bad)


def test_resolve_shipped_name_missing(checkpoints):
    with pytest.raises(ValueError, match=r"cifar10-val.*not found.*export_traces"):
        resolve_trace("cifar10-val")
    with pytest.raises(ValueError, match="Known names"):
        resolve_trace("no-such-trace")


def _manifest(root, rel, path, sha=None):
    entry = {
        "sha256": sha or hashlib.sha256(path.read_bytes()).hexdigest(),
        "bytes": path.stat().st_size,
        "command": "test",
        "commit": "0" * 40,
        "metrics": {},
    }
    (root / "MANIFEST.json").write_text(json.dumps({"files": {rel: entry}}))


def test_resolve_shipped_name_checks_manifest(checkpoints, small):
    path = checkpoints / "traces" / "cifar10-val.npz"
    small.save(path)
    _manifest(checkpoints, "traces/cifar10-val.npz", path)
    assert resolve_trace("cifar10-val").n == small.n
    # Same size, different content: the digest catches it.
    other = checkpoints / "traces" / "cifar10-test.npz"
    small.save(other)
    _manifest(checkpoints, "traces/cifar10-test.npz", other, sha="0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        resolve_trace("cifar10-test")


def test_resolve_path_and_cache_invalidation(tmp_path, small):
    path = tmp_path / "mine.npz"
    small.save(path)
    first = resolve_trace(str(path))
    assert resolve_trace(str(path)) is first
    synthetic_trace(n=60, seed=1).save(path)
    os.utime(path, ns=(1, 1))
    assert resolve_trace(str(path)).n == 60
    with pytest.raises(ValueError, match="not found"):
        resolve_trace(str(tmp_path / "missing.npz"))
