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


def test_every_run_gets_an_equal_share_of_the_budget_per_round():
    args = train_agents.Args(scenarios=("steady-stream",), budget_minutes=10, jobs=2)
    runs = train_agents.plan_runs(args)
    assert len(runs) == 3  # two rounds of two jobs
    rates = {"ppo": 1000.0, "dqn": 500.0, "recurrent_ppo": 100.0}
    steps = train_agents.budget_timesteps(args, runs, rates)
    share_s = 10 * 60 / 2 * (1 - train_agents.MARGIN)
    for algo, rate in rates.items():
        assert rate * share_s - 1024 < steps[algo] <= rate * share_s
        assert steps[algo] % 1024 == 0


@pytest.mark.parametrize(
    ("n_runs", "jobs", "expected"), [(1, 2, 1), (2, 2, 1), (3, 2, 2), (5, 1, 5)]
)
def test_rounds_of_parallel_runs(n_runs, jobs, expected):
    assert train_agents.rounds(n_runs, jobs) == expected


@pytest.mark.parametrize(
    ("scenarios", "algos", "jobs"),
    [
        (("steady-stream",), ("ppo",), 2),  # one run on two jobs: not twice the budget
        (("steady-stream",), train_agents.ALGOS, 2),  # three runs, two rounds
        (("steady-stream", "isolated"), ("ppo", "dqn"), 3),  # four runs, two rounds
    ],
)
def test_the_planned_set_fits_the_budget(scenarios, algos, jobs):
    args = train_agents.Args(scenarios=scenarios, algos=algos, budget_minutes=25, jobs=jobs)
    runs = train_agents.plan_runs(args)
    rates = {"ppo": 900.0, "dqn": 300.0, "recurrent_ppo": 120.0}
    steps = train_agents.budget_timesteps(args, runs, rates)
    planned = train_agents.planned_minutes(runs, jobs, steps, rates)
    assert 24 < planned <= 25  # the whole budget used, not more


def test_planned_time_follows_the_scheduler_and_is_unknown_without_rates():
    runs = [("ppo", "a"), ("ppo", "b"), ("dqn", "c")]
    steps, rates = {"ppo": 3000, "dqn": 1500}, {"ppo": 100.0, "dqn": 100.0}
    run_min = 30 / (1 - train_agents.MARGIN) / 60  # 30 s of training plus the margin
    # two jobs: the dqn run follows a ppo run; three jobs: all at once
    assert train_agents.planned_minutes(runs, 2, steps, rates) == pytest.approx(1.5 * run_min)
    assert train_agents.planned_minutes(runs, 3, steps, rates) == pytest.approx(run_min)
    assert train_agents.planned_minutes(runs, 2, steps, {"ppo": 100.0}) is None


def test_dry_run_prints_the_planned_time_against_the_budget(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(
        train_agents, "probe_rate", lambda algo, scenario, seed, drain_weight: 2000.0
    )
    argv = ["--scenarios", "steady-stream", "--algos", "ppo", "--dry-run", "--out", str(tmp_path)]
    result = train_agents.main(argv)
    assert 24 < result["planned_minutes"] <= 25
    out = capsys.readouterr().out
    assert f"planned time ~{result['planned_minutes']:.1f} min of a 25 min budget" in out
    assert "1 runs, 2 at once (1 rounds)" in out


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
    assert "planned time unknown (timesteps given, rates not probed)" in out
    assert "--algo ppo --scenario isolated --timesteps 2048" in out
    assert out.count("--drain-weight 1.5") == 2  # every run
    assert str(tmp_path / "dqn-isolated.zip") in out


def test_resume_continues_the_runs_a_stopped_batch_left_and_starts_the_others(tmp_path):
    """``--resume`` passes ``--resume`` to each run whose folder ``train_agent --resume`` would
    find (same experiment and seed), and starts the others afresh."""
    runs = tmp_path / "runs"
    (runs / "DistrEE-v0__ppo-isolated__1__1700000000").mkdir(parents=True)
    (runs / "DistrEE-v0__dqn-isolated__2__1700000000").mkdir()  # another seed: not this batch's
    argv = ["--scenarios", "isolated", "--algos", "ppo", "dqn", "--ppo-timesteps", "2048",
            "--dqn-timesteps", "2048", "--dry-run", "--out", str(tmp_path / "agents"),
            "--runs-dir", str(runs)]  # fmt: skip
    ppo, dqn = train_agents.main([*argv, "--resume"])["commands"]
    assert ppo[-1] == "--resume" and "--resume" not in dqn
    assert all("--resume" not in cmd for cmd in train_agents.main(argv)["commands"])


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
