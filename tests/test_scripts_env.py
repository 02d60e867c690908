"""Smoke tests of the environment-side scripts: the demo tour and the speed benchmark."""

from __future__ import annotations

import json

import pytest

from experiments import bench_env, demo


def test_demo_prints_a_table(capsys):
    assert demo.main(["--requests", "64", "--scenario", "stable"]) == 0
    out = capsys.readouterr().out
    for policy in ("last exit", "first exit", "confidence", "entropy", "feature_diff", "oracle"):
        assert policy in out
    rows = [line.split() for line in out.splitlines() if line.startswith("last exit")]
    assert float(rows[0][3]) == 0.0  # last exit saves no compute
    with pytest.raises(SystemExit) as exc:
        demo.main(["--requests", "0"])
    assert exc.value.code == 2


def test_bench_env_runs(capsys, tmp_path):
    out_json = tmp_path / "bench.json"
    assert bench_env.main(["--seconds", "0.02", "--rounds", "1", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "vector x1024" in out and "| single" in out and "per additional single env" in out
    memory = json.loads(out_json.read_text())["memory"]
    assert 0 < memory["extra_env_mb"] and 0 < memory["pickled_env_kb"] < 1000
    with pytest.raises(SystemExit) as exc:
        bench_env.main(["--seconds", "-1"])
    assert exc.value.code == 2
