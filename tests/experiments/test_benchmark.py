"""The benchmark script end to end on a synthetic trace, and its analysis on hand-made rows."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from agents import ConfidenceThreshold, LastExit, RandomExit, evaluate
from distree_env.config import EnvConfig
from distree_env.trace import resolve_trace
from experiments import benchmark
from experiments.benchmarking.analysis import (
    cost_at_accuracy,
    front_comparison,
    pareto_front,
    select_point,
)
from experiments.benchmarking.policies import (
    agent_file,
    discover_agents,
    random_exit_probability,
)

SMALL = [
    "--trace",
    "synthetic",
    "--seeds",
    "2",
    "--requests",
    "256",
    "--thresholds",
    "4",
    "--progress",
    "false",
]
README = "# Title\n\nintro\n\n<!-- BEGIN benchmark -->\nold text\n<!-- END benchmark -->\n\nrest\n"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """One small ``--quick`` run (rules only) with a README to update."""
    out = tmp_path_factory.mktemp("bench")
    (out / "README.md").write_text(README, encoding="utf-8")
    argv = [
        "--quick",
        *SMALL,
        "--scenarios",
        "stable",
        "fluctuating",
        "--agents",
        "none",
        "--out",
        str(out / "results"),
        "--update-readme",
        "--readme",
        str(out / "README.md"),
    ]
    assert benchmark.main(argv) == 0
    return out


def test_quick_run_writes_every_output(quick_run: Path, capsys) -> None:
    results = quick_run / "results"
    for name in (
        "benchmark_points.csv",
        "benchmark_summary.csv",
        "benchmark.md",
        "benchmark.json",
        "pareto.png",
        "exits.png",
    ):
        assert (results / name).stat().st_size > 0, name
    assert not list(results.glob(".*.tmp")), "temporary files left behind"
    data = json.loads((results / "benchmark.json").read_text())
    assert [h["scenario"] for h in data["headlines"]] == ["stable", "fluctuating"]
    assert data["val_trace"] == "synthetic:seed=1"
    best = data["headlines"][1]["best_rule"]["compute_saving"]
    last = data["headlines"][1]["last_exit"]
    assert best["accuracy"] >= last["accuracy"] - 0.02  # chosen on val, so a little slack


@pytest.mark.parametrize("name", ["pareto.png", "exits.png"])
def test_plots_are_png_images(quick_run: Path, name: str) -> None:
    import matplotlib.image

    path = quick_run / "results" / name
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 400
    assert float(np.std(image[..., :3])) > 0.05  # not a blank canvas


def test_readme_block_is_replaced_and_nothing_else(quick_run: Path) -> None:
    text = (quick_run / "README.md").read_text(encoding="utf-8")
    head, _, tail = text.partition("<!-- BEGIN benchmark -->\n")
    block, _, after = tail.partition("<!-- END benchmark -->")
    assert head == "# Title\n\nintro\n\n" and after == "\n\nrest\n"
    assert "old text" not in block and "| LastExit |" in block
    assert "![" in block and "(docs/benchmark.png)" in block
    assert (quick_run / "docs" / "benchmark.png").read_bytes()[:4] == b"\x89PNG"


def test_table_equals_agents_evaluate(quick_run: Path) -> None:
    """Every reported number is what ``agents.evaluate`` returns for the same seeds."""
    points = _read_csv(quick_run / "results" / "benchmark_points.csv")
    summary = _read_csv(quick_run / "results" / "benchmark_summary.csv")
    table = (quick_run / "results" / "benchmark.md").read_text(encoding="utf-8")
    config = EnvConfig(trace="synthetic").with_scenario("fluctuating")
    rule = next(
        r
        for r in summary
        if r["split"] == "test"
        and r["scenario"] == "fluctuating"
        and r["family"] == "ConfidenceThreshold"
    )
    for name, policy in (
        ("LastExit", LastExit()),
        (rule["policy"], ConfidenceThreshold(float(rule["param"]))),
    ):
        expected = [evaluate(policy, config, n_requests=256, seed=s) for s in (0, 1)]
        got = [
            r
            for r in points
            if r["split"] == "test" and r["scenario"] == "fluctuating" and r["policy"] == name
        ]
        assert [int(r["seed"]) for r in got] == [0, 1]
        for row, metrics in zip(got, expected, strict=True):
            for key in ("accuracy", "compute_saving", "latency_mean_ms", "qos_rate", "mean_reward"):
                assert float(row[key]) == metrics[key], (name, key)
        mean = next(
            r
            for r in summary
            if r["split"] == "test" and r["scenario"] == "fluctuating" and r["policy"] == name
        )
        accuracy = np.mean([m["accuracy"] for m in expected])
        assert float(mean["accuracy"]) == pytest.approx(accuracy, abs=1e-15)
        if name == "LastExit":
            std = np.std([m["accuracy"] for m in expected], ddof=1)
            assert f"| LastExit | {100 * accuracy:.2f} ± {100 * std:.2f} |" in table


def test_same_arguments_give_identical_files(tmp_path: Path) -> None:
    argv = [*SMALL, "--scenarios", "congested", "--agents", "none", "--seeds", "1"]
    for run in ("a", "b"):
        assert benchmark.main([*argv, "--out", str(tmp_path / run)]) == 0
    for name in ("benchmark_points.csv", "benchmark_summary.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    a, b = (json.loads((tmp_path / run / "benchmark.json").read_text()) for run in "ab")
    assert a["headlines"] == b["headlines"]


def test_learned_agent_and_matched_random(tmp_path: Path, checkpoints: Path) -> None:
    """An agent file named ``ALGO_lwW.zip`` is evaluated as latency weight W, and a RandomExit
    spending the compute of the agent at the default weight (0.5) is added."""
    torch = pytest.importorskip("torch")
    from stable_baselines3 import PPO

    from agents.sb3 import make_sb3_env

    torch.set_num_threads(1)
    env = make_sb3_env(EnvConfig(trace="synthetic"), n_envs=2, seed=0)
    paths = [tmp_path / f"ppo_lw{w}.zip" for w in ("0.2", "0.5")]
    for seed, path in enumerate(paths):
        PPO("MlpPolicy", env, n_steps=16, batch_size=16, seed=seed, device="cpu").save(path)
    out = tmp_path / "results"
    argv = [
        *SMALL,
        "--scenarios",
        "fluctuating",
        "--agents",
        *map(str, paths),
        "--trust",
        "--seeds",
        "1",
        "--val-trace",
        "none",
        "--out",
        str(out),
    ]
    assert benchmark.main(argv) == 0
    summary = _read_csv(out / "benchmark_summary.csv")
    learned = [r for r in summary if r["kind"] == "learned"]
    assert [(r["family"], r["policy"], float(r["param"])) for r in learned] == [
        ("PPO", "PPO(lw=0.2)", 0.2),
        ("PPO", "PPO(lw=0.5)", 0.5),
    ]
    (random_row,) = [r for r in summary if r["family"] == "RandomExit"]
    assert random_row["policy"].endswith("~ PPO(lw=0.5)")
    assert float(random_row["compute_saving"]) == pytest.approx(
        float(learned[1]["compute_saving"]), abs=0.06
    )
    headline = json.loads((out / "benchmark.json").read_text())["headlines"][0]
    assert {p["policy"] for p in headline["front"]["points"]} == {"PPO(lw=0.2)", "PPO(lw=0.5)"}
    assert headline["selected_on"] == "test"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scenarios", "windy"], "--scenarios"),
        (["--seeds", "0"], "--seeds"),
        (["--requests", "-5"], "--requests"),
        (["--trace", "no-such-trace"], "--trace"),
        (["--trace", "synthetic", "--val-trace", "missing.npz"], "--val-trace"),
        (["--trace", "synthetic", "--agents", "nonexistent-agent"], "nonexistent-agent"),
        (["--trace", "synthetic", "--agents", "auto", "none"], "--agents"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys, checkpoints) -> None:
    with pytest.raises(SystemExit) as info:
        benchmark.main([*argv, "--progress", "false", "--out", str(checkpoints / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (checkpoints / "out").exists()


# ---- analysis on hand-made rows -----------------------------------------------------------
def _row(family: str, kind: str, acc: float, lat: float, split: str = "test", **extra) -> dict:
    return {
        "split": split,
        "scenario": "s",
        "family": family,
        "kind": kind,
        "policy": extra.pop("policy", f"{family}({acc},{lat})"),
        "param": None,
        "accuracy": acc,
        "latency_mean_ms": lat,
        "latency_mean_ms_std": 0.1,
        "compute_saving": 1 - lat / 40,
        "latency_saving": 1 - lat / 40,
        "qos_rate": 1.0,
        "accuracy_std": 0.0,
        **extra,
    }


def test_pareto_front_and_interpolation() -> None:
    rows = [
        _row("R", "rule", a, lat)
        for a, lat in ((0.70, 10), (0.80, 20), (0.78, 25), (0.90, 40), (0.85, 45))
    ]
    front = pareto_front(rows)
    assert [(r["accuracy"], r["latency_mean_ms"]) for r in front] == [
        (0.70, 10),
        (0.80, 20),
        (0.90, 40),
    ]
    assert cost_at_accuracy(front, 0.85) == pytest.approx(30.0)
    assert cost_at_accuracy(front, 0.60) == 10.0
    assert math.isinf(cost_at_accuracy(front, 0.95))


def test_front_comparison_states_who_is_ahead() -> None:
    rules = [_row("A", "rule", a, lat) for a, lat in ((0.7, 10), (0.9, 30))]
    rules += [_row("B", "rule", a, lat) for a, lat in ((0.7, 12), (0.85, 20))]
    ahead = front_comparison([*rules, _row("PPO", "learned", 0.8, 15)])
    assert ahead["ahead"] is True
    assert ahead["rules_latency_ms"] == {"A": pytest.approx(20.0), "B": pytest.approx(52 / 3)}
    behind = front_comparison([*rules, _row("PPO", "learned", 0.8, 18)])
    assert behind["ahead"] is False and behind["worst_margin"] < 0
    assert front_comparison(rules) is None


def test_operating_point_is_chosen_on_val() -> None:
    """The test numbers are reported, but the point is the one that qualified on val."""
    rows = [
        _row("LastExit", "baseline", 0.90, 40, policy="LastExit"),
        _row("LastExit", "baseline", 0.90, 40, "val", policy="LastExit"),
        _row("C", "rule", 0.897, 20, policy="C(a)"),
        _row("C", "rule", 0.880, 30, "val", policy="C(a)"),
        _row("C", "rule", 0.880, 25, policy="C(b)"),
        _row("C", "rule", 0.898, 35, "val", policy="C(b)"),
    ]
    point = select_point(rows, "s", "compute_saving", kind="rule")
    assert point["policy"] == "C(b)" and point["split"] == "test"
    only_test = [r for r in rows if r["split"] == "test"]
    assert select_point(only_test, "s", "compute_saving", kind="rule")["policy"] == "C(a)"


def test_random_exit_matches_compute() -> None:
    trace = resolve_trace("synthetic")
    p = random_exit_probability(0.3, trace)
    config = EnvConfig(trace="synthetic")
    measured = evaluate(RandomExit(p), config, n_requests=4096, seed=0)["compute_saving"]
    assert measured == pytest.approx(0.3, abs=0.02)
    assert random_exit_probability(0.0, trace) == 0.0
    assert random_exit_probability(0.99, trace) == 1.0


def test_agent_names_give_algorithm_and_latency_weight(tmp_path: Path) -> None:
    for name in ("ppo.zip", "ppo_lw0.5.zip", "ppo_lw0.2.zip", "dqn.zip", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    found = discover_agents(tmp_path, default_latency_weight=0.5)
    assert [(a.algo, a.latency_weight, Path(a.ref).name) for a in found] == [
        ("dqn", 0.5, "dqn"),
        ("ppo", 0.2, "ppo_lw0.2.zip"),
        ("ppo", 0.5, "ppo"),
    ]
    assert agent_file("maskable_ppo_lw1.zip", 0.5).algo == "maskable_ppo"
    assert agent_file("maskable_ppo_lw1.zip", 0.5).latency_weight == 1.0
