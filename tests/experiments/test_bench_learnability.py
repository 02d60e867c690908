"""bench_learnability end to end with tiny settings: it trains, evaluates on the held-out split
and prints the figure (the real 300k-step run is a benchmark, not a test)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from experiments import bench_learnability  # noqa: E402


def test_tiny_cleanrl_run_prints_reward_per_request(capsys):
    argv = ["--learners", "cleanrl", "--timesteps", "512", "--eval-seeds", "1"]
    result = bench_learnability.main([*argv, "--eval-requests", "256", "--tuned", "none"])
    assert -2.0 < result["cleanrl"]["mean"] < 1.0  # a reward per request (at most the bonus)
    assert "cleanrl defaults, 512 steps:" in capsys.readouterr().out


def test_held_out_config_uses_test_traces():
    config, scenario = bench_learnability.held_out_config("DistrEE-Cellular-v2")
    assert scenario == "cellular"
    assert config.trace.endswith("-test") and config.cluster.bandwidth.split == "test"
    assert config.arrivals.split == "test"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [(["--env-id", "CartPole-v1"], "not a DistrEE environment"),
     (["--tuned", "nosuch"], "--tuned 'nosuch'")],
)  # fmt: skip
def test_a_foreign_id_or_a_missing_tuned_agent_is_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_learnability.main([*argv, "--timesteps", "64", "--eval-seeds", "1"])
    assert exc.value.code == 2 and needle in capsys.readouterr().err
