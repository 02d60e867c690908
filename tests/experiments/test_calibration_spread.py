"""The calibration-spread script on a synthetic trace (tiny settings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents import calibrate_baselines
from agents.splits import calibration_seeds, on_split
from distree_env.config import EnvConfig
from experiments import calibration_spread
from experiments.benchmark import QUICK_CALIBRATION, QUICK_WARMUP

TINY = ["--trace", "synthetic", "--quick", "--requests", "256", "--eval-seeds", "2"]


def test_one_row_per_calibration_seed_and_the_range_of_their_test_rewards(
    tmp_path: Path, capsys
) -> None:
    out = tmp_path / "spread.json"
    argv = [*TINY, "--scenarios", "steady-stream", "--seeds", "2", "--jobs", "1"]
    rows = calibration_spread.main([*argv, "--out", str(out)])
    assert [r["calibration_seed"] for r in rows] == list(calibration_seeds(2))
    assert json.loads(out.read_text()) == rows
    test = [r["test_reward"] for r in rows]
    printed = capsys.readouterr().out
    assert f"{min(test):.3f} to {max(test):.3f} over 2 calibration seeds" in printed
    # the first seed's calibration is the benchmark's: the same fit as calibrate_baselines
    val = on_split(EnvConfig.scenario("steady-stream").replace({"trace": "synthetic"}), "val")
    q = QUICK_CALIBRATION
    fits = calibrate_baselines(
        val, n_requests=q.n_requests, seed=calibration_seeds(1)[0], points=q.points,
        rounds=q.rounds, data_steps=q.data_steps, features=q.features, warmup=QUICK_WARMUP,
    )  # fmt: skip
    assert rows[0]["policy"] == repr(fits[rows[0]["best"]].policy)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scenarios", "windy"], "--scenarios"),
        (["--seeds", "0"], "--seeds"),
        (["--trace", "cifar10-test"], "--trace"),
        (["--trace", "synthetic:seed=3"], "--trace"),
        (["--out", "{tmp}"], "--out"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        calibration_spread.main([a.format(tmp=tmp_path) for a in argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
