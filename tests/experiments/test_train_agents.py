"""The agent-set driver's plan: which runs, how many steps each within the budget."""

from __future__ import annotations

import pytest

from experiments import train_agents


def test_recurrent_agent_only_where_the_measurement_is_delayed():
    args = train_agents.Args(scenarios=("isolated", "bursty-stream"))
    assert train_agents.plan_runs(args) == [
        ("ppo", "isolated"),
        ("dqn", "isolated"),
        ("ppo", "bursty-stream"),
        ("dqn", "bursty-stream"),
        ("recurrent_ppo", "bursty-stream"),
    ]


def test_every_run_gets_an_equal_share_of_the_budget():
    args = train_agents.Args(scenarios=("steady-stream",), budget_minutes=10, jobs=2)
    runs = train_agents.plan_runs(args)
    rates = {"ppo": 1000.0, "dqn": 500.0, "recurrent_ppo": 100.0}
    steps = train_agents.budget_timesteps(args, runs, rates)
    share_s = 10 * 60 * 2 / 3 * (1 - train_agents.MARGIN)
    for algo, rate in rates.items():
        assert steps[algo] == pytest.approx(rate * share_s, abs=1024)
        assert steps[algo] % 1024 == 0


def test_dry_run_with_given_timesteps_prints_the_commands(capsys, tmp_path):
    argv = ["--scenarios", "isolated", "--algos", "ppo", "dqn", "--ppo-timesteps", "2048"]
    argv += [
        "--dqn-timesteps",
        "4096",
        "--drain-weight",
        "1.5",
        "--dry-run",
        "--out",
        str(tmp_path),
    ]
    result = train_agents.main(argv)
    assert result["timesteps"] == {"ppo": 2048, "dqn": 4096}
    out = capsys.readouterr().out
    assert "--algo ppo --scenario isolated --timesteps 2048" in out
    assert out.count("--drain-weight 1.5") == 2  # every run
    assert str(tmp_path / "dqn-isolated.zip") in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--scenarios", "windy"], "--scenarios"),
        (["--algos", "sac"], "--algos"),
        (["--drain-weight", "-2"], "--drain-weight"),
    ],
)
def test_bad_arguments_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as info:
        train_agents.main(argv)
    assert info.value.code == 2 and needle in capsys.readouterr().err
