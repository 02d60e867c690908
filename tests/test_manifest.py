"""MANIFEST.json: recording survives concurrent writers; checking refuses swapped files."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from distree_env.manifest import record, verify


def _record_many(root: str, names: list[str]) -> None:
    from pathlib import Path

    for name in names:
        record(Path(root) / name, "test", root=Path(root))


def test_concurrent_records_lose_no_entry(tmp_path):
    names = [f"f{i}.bin" for i in range(40)]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(bytes([i]) * 10)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_record_many, args=(str(tmp_path), names[i::4])) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    files = json.loads((tmp_path / "MANIFEST.json").read_text())["files"]
    assert sorted(files) == sorted(names)


def test_verify_refuses_a_changed_file(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    record(f, "test", root=tmp_path)
    assert verify(f, root=tmp_path)
    f.write_bytes(b"abd")  # same size, other bytes
    with pytest.raises(ValueError, match="sha256"):
        verify(f, root=tmp_path)
    f.write_bytes(b"abcd")
    with pytest.raises(ValueError, match="truncated or was replaced"):
        verify(f, root=tmp_path)
    with pytest.raises(ValueError, match="not listed"):
        verify(tmp_path / "MANIFEST.json", root=tmp_path, required=True)
