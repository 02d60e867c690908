"""Smoke runs of the comparison and throughput scripts, tiny settings."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from experiments import bench_training, compare_policies  # noqa: E402
from tests.agents import SYNTH  # noqa: E402


def test_compare_policies_prints_every_policy(tmp_path, capsys):
    out = tmp_path / "results.json"
    cfg = tmp_path / "env.json"
    cfg.write_text(json.dumps(SYNTH))
    results = compare_policies.main(
        [
            "--config",
            str(cfg),
            "--seeds",
            "2",
            "--n-requests",
            "64",
            "--calibration-requests",
            "64",
            "--agents",
            "missing",
            "--json-out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert "skipping agent 'missing'" in text
    labels = list(results)
    assert labels[0] == "LastExit" and labels[-1] == "Oracle (upper bound)"
    assert any(label.startswith("Similarity(") for label in labels)
    assert all(label in text for label in labels) and out.is_file()
    oracle = results["Oracle (upper bound)"]["mean_reward"]["mean"]
    assert all(r["mean_reward"]["mean"] <= oracle + 1e-9 for r in results.values())


def test_compare_policies_refuses_a_test_training_trace(tmp_path, capsys):
    cfg = tmp_path / "env.json"
    cfg.write_text('{"trace": "cifar10-test"}')
    with pytest.raises(SystemExit) as exc:
        compare_policies.main(["--config", str(cfg)])
    assert exc.value.code == 2 and "test split" in capsys.readouterr().err


def test_bench_training_reports_throughput_and_env_share():
    result = bench_training.main(["--timesteps", "4096"])
    assert result["steps_per_s"] > 0 and 0 < result["env_share"] < result["env_plus_adapter_share"]
