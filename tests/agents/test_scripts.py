"""Smoke run of the training-throughput script, tiny settings (the benchmark has its own tests
in tests/experiments)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from experiments import bench_training  # noqa: E402


def test_bench_training_reports_throughput_and_env_share():
    result = bench_training.main(["--timesteps", "4096"])
    assert result["steps_per_s"] > 0 and 0 < result["env_share"] < result["env_plus_adapter_share"]
