"""Trace names: synthetic strings, shipped names verified against MANIFEST, paths, the cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from distree_env.manifest import record
from distree_env.traces import SHIPPED_TRACES, clear_cache, resolve_trace, synthetic_trace
from tests.traces.conftest import raw_arrays, write_npz


def test_synthetic_names():
    assert resolve_trace("synthetic") is resolve_trace("synthetic")  # cached
    t = resolve_trace("synthetic:exits=3,devices=2,classes=5,n=300,seed=4")
    assert (t.num_exits, t.num_devices, t.num_classes, t.n) == (3, 2, 5, 300)
    assert resolve_trace("synthetic-pipeline").topology == "pipeline"
    assert resolve_trace("synthetic:n=300, seed=4, exits=3, devices=2, classes=5") is t


@pytest.mark.parametrize(
    "name, match",
    [
        ("synthetic:exits=x", r"exits='x' is not allowed; expected a int"),
        ("synthetic:colour=3", r"bad item 'colour=3'; expected key=value with key in"),
        ("synthetic:exits", "bad item 'exits'"),
        ("synthetic:n=5,n=6", "given twice"),
        ("synthetic:n=100000000", r"n=100000000 .*MAX_SAMPLES"),
        ("synthetic:classes=100000", r"num_classes=100000 .*MAX_CLASSES"),
        ("synthetic:exits=1000000", r"num_exits=1000000 .*MAX_EXITS"),
        ("synthetic:n=1000000", r"MAX_SYNTHETIC_CELLS"),
        ("", "non-empty"),
        ("a b", "not a known name"),
    ],
)
def test_bad_names_refused(name, match):
    with pytest.raises(ValueError, match=match):
        resolve_trace(name)


def test_shipped_names_missing_say_which_script_makes_them(checkpoints):
    assert set(SHIPPED_TRACES) == {
        "cifar10-val",
        "cifar10-test",
        "cifar10-pipeline-val",
        "cifar10-pipeline-test",
    }
    with pytest.raises(ValueError, match=r"cifar10-val.*not found.*`python -m experiments\."):
        resolve_trace("cifar10-val")
    with pytest.raises(ValueError, match=r"--prefix cifar10-pipeline`"):
        resolve_trace("cifar10-pipeline-test")
    with pytest.raises(ValueError, match="Known names"):
        resolve_trace("no-such-trace")


@pytest.fixture
def shipped_val(checkpoints, small):
    path = checkpoints / "traces" / "cifar10-val.npz"
    small.save(path)
    record(path, "test")
    return path


def test_listed_trace_loads(shipped_val, small):
    assert resolve_trace("cifar10-val").n == small.n
    assert resolve_trace(str(shipped_val)).n == small.n  # the same file by path


def _edit_manifest(root, change):
    path = root / "MANIFEST.json"
    manifest = json.loads(path.read_text())
    change(manifest["files"])
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda root: (root / "MANIFEST.json").unlink(), "MANIFEST.json' is missing"),
        (lambda root: _edit_manifest(root, lambda f: f.clear()), "not listed"),
        (
            lambda root: _edit_manifest(root, lambda f: f.update({"traces/cifar10-val.npz": None})),
            "sha256",
        ),
        (
            lambda root: _edit_manifest(root, lambda f: f["traces/cifar10-val.npz"].pop("sha256")),
            "sha256",
        ),
        (
            lambda root: _edit_manifest(
                root, lambda f: f["traces/cifar10-val.npz"].update(sha256="0" * 64)
            ),
            "sha256",
        ),
    ],
    ids=["manifest-deleted", "unlisted", "null-entry", "no-sha256", "wrong-sha256"],
)
def test_unverified_shipped_trace_refused(shipped_val, checkpoints, damage, match):
    resolve_trace("cifar10-val")  # cached now: the cache must not bypass the check
    damage(checkpoints)
    for name in ("cifar10-val", str(shipped_val)):
        with pytest.raises(ValueError, match=match) as info:
            resolve_trace(name)
        assert "cifar10-val.npz" in str(info.value)


def test_unlisted_file_in_traces_folder_refused(checkpoints, small, shipped_val):
    other = checkpoints / "traces" / "extra.npz"
    small.save(other)
    with pytest.raises(ValueError, match="not listed") as info:
        resolve_trace("extra")
    assert "extra.npz" in str(info.value)


def test_user_file_outside_checkpoints_needs_no_manifest(tmp_path, small, checkpoints):
    path = tmp_path / "mine.npz"
    small.save(path)
    assert resolve_trace(path).n == small.n
    with pytest.raises(ValueError, match="not found"):
        resolve_trace(str(tmp_path / "missing.npz"))


def _same_size_variant(small, seed):
    """A trace with ``small``'s shapes and metadata but other content (same uncompressed size)."""
    other = synthetic_trace(n=small.n, seed=seed)
    arrays = raw_arrays(other)
    arrays["metadata"] = np.array(json.dumps(small.metadata))
    return arrays


def test_cache_never_serves_a_rewritten_file_of_same_size_and_mtime(tmp_path, small):
    path = tmp_path / "mine.npz"
    write_npz(path, **_same_size_variant(small, 10))
    first = resolve_trace(path)
    before = path.stat()
    replacement = tmp_path / "next.npz"
    write_npz(replacement, **_same_size_variant(small, 11))
    with open(path, "r+b") as handle:  # rewrite in place: same inode, same size
        handle.write(replacement.read_bytes())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )
    second = resolve_trace(path)
    assert second is not first
    assert not np.array_equal(second.labels, first.labels)
    assert resolve_trace(path) is second  # unchanged file: served from the cache


def test_cached_traces_are_read_only(tmp_path, small):
    t = resolve_trace("synthetic:n=64")
    with pytest.raises(ValueError, match="read-only"):
        t.probs[0, 0, 0] = 1.0
    clear_cache()
    assert resolve_trace("synthetic:n=64") is not t
