"""Atomic writes: a writer killed with SIGKILL mid-write leaves the previous file intact, and its
temporary file is removed by the next write."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

from distree_env.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]

SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    from distree_env.io import atomic_open
    with atomic_open(sys.argv[1], "wb") as f:
        for _ in range(1000):
            f.write(b"new" * 1000)
            f.flush()
            print("wrote", flush=True)
            time.sleep(0.01)
    """
)


def test_sigkill_mid_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old content")
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(target)], cwd=ROOT, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    for _ in range(5):  # the writer is well into the new file
        assert proc.stdout.readline() == b"wrote\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == b"old content"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "data.bin"]
    assert all(name.startswith(".data.bin.") and name.endswith(".tmp") for name in leftovers)
    atomic_write_text(target, "next")  # the next write of the file removes the dead writer's
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_written_files_get_ordinary_permissions(tmp_path):
    path = tmp_path / "x.txt"
    atomic_write_text(path, "hi")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert path.read_text() == "hi"


def test_atomic_write_text_and_mode_check(tmp_path):
    import pytest

    from distree_env.io import atomic_open

    path = tmp_path / "x.json"
    with atomic_open(path, "w") as handle:
        handle.write("{}")
    assert path.read_text() == "{}"
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(path, "a"):
            pass


def test_json_files_are_strict_json_with_nan_as_null(tmp_path, monkeypatch):
    """RFC 8259 has no NaN: what the project writes as JSON (the manifest here) says null, so
    that any parser reads it."""
    import json

    from distree_env.io import strict_json
    from distree_env.manifest import record

    assert strict_json({"a": float("nan"), "b": [1.5, float("-inf")], "c": (2,)}) == (
        '{"a": null, "b": [1.5, null], "c": [2]}'
    )
    monkeypatch.setenv("DISTREE_CHECKPOINTS", str(tmp_path))
    (tmp_path / "w.bin").write_bytes(b"weights")
    record(tmp_path / "w.bin", "test", {"std": float("nan"), "mean": 0.5})

    def refuse(word: str) -> None:
        raise ValueError(f"not JSON: {word}")

    manifest = json.loads((tmp_path / "MANIFEST.json").read_text(), parse_constant=refuse)
    assert manifest["files"]["w.bin"]["metrics"] == {"std": None, "mean": 0.5}
