"""The calibration-spread script on a synthetic trace (tiny settings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents import FixedExit, LastExit, evaluate
from agents.calibration import BaselineFit
from agents.splits import calibration_seeds
from experiments import calibration_spread
from experiments.benchmarking import runner

TINY = ["--trace", "synthetic", "--quick", "--requests", "256", "--eval-seeds", "2"]


def test_each_draw_is_calibrated_with_its_seed_and_its_best_chosen_on_val(monkeypatch) -> None:
    drawn = []

    def fake_calibration(plan, configs, target_accuracy, seed=None):
        drawn.append((seed, target_accuracy))
        return {
            "first-exit": BaselineFit("first-exit", FixedExit(0), {}, 0),
            "last-exit": BaselineFit("last-exit", LastExit(), {}, 0),
        }

    monkeypatch.setattr(runner, "calibrate_scenario", fake_calibration)
    argv = [*TINY, "--scenarios", "steady-stream", "--seeds", "2", "--jobs", "1"]
    rows = calibration_spread.main(argv)
    assert drawn == [(s, None) for s in calibration_seeds(2)]
    args = calibration_spread.parse_args(calibration_spread.Args, argv)
    plan = calibration_spread.plan_of(args)
    val = runner.split_configs(plan, "steady-stream")["val"]
    on_val = {
        name: sum(
            evaluate(p, val, 256, seed=s, warmup=plan.warmup)["mean_reward"] for s in (0, 1)
        ) / 2
        for name, p in (("first-exit", FixedExit(0)), ("last-exit", LastExit()))
    }  # fmt: skip
    assert {r["best"] for r in rows} == {max(on_val, key=on_val.__getitem__)}
    assert rows[0]["val_reward"] == pytest.approx(max(on_val.values()))


def test_a_real_run_prints_one_row_per_draw_and_their_range(tmp_path: Path, capsys) -> None:
    out = tmp_path / "spread.json"
    argv = [*TINY, "--scenarios", "steady-stream", "--seeds", "2", "--jobs", "2"]
    rows = calibration_spread.main([*argv, "--out", str(out)])
    assert [r["calibration_seed"] for r in rows] == list(calibration_seeds(2))
    assert json.loads(out.read_text()) == rows
    test = [r["test_reward"] for r in rows]
    printed = capsys.readouterr().out
    assert f"{min(test):.3f} to {max(test):.3f} over 2 calibration seeds" in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scenarios", "windy"], "--scenarios"),
        (["--scenarios", "steady-stream", "steady-stream"], "--scenarios"),
        (["--seeds", "0"], "--seeds"),
        (["--trace", "cifar10-test"], "--trace"),
        (["--trace", "synthetic:seed=3"], "--trace"),
        (["--trace", "{tmp}/nosuch-val.npz"], "--trace"),
        (["--out", "{tmp}"], "--out"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        calibration_spread.main([a.format(tmp=tmp_path) for a in argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
