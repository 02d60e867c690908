"""Calibration sweeps thresholds on val and never reads a test trace."""

from __future__ import annotations

import dataclasses

import pytest

from agents import calibrate
from distree_env.config import EnvConfig
from distree_env.manifest import record
from distree_env.traces import resolve_trace, synthetic_trace
from tests.agents import SYNTH


def test_calibrates_on_val_without_reading_test(shipped):
    cal = calibrate(
        "ConfidenceThreshold",
        EnvConfig(trace="cifar10-val"),
        grid=[0.5, 0.8, 0.95, 1.0],
        n_requests=512,
    )
    assert shipped and all("cifar10-val" in p for p in shipped)
    assert cal.best_reward_param in (0.5, 0.8, 0.95, 1.0)
    rewards = {p: m["mean_reward"] for p, m in cal.sweep}
    assert rewards[cal.best_reward_param] == max(rewards.values())
    assert cal.cheapest_param is not None  # t = 1.0 is last-exit, always within the budget
    chosen = dict(cal.sweep)[cal.cheapest_param]
    assert chosen["accuracy"] >= cal.last_exit_accuracy - cal.max_accuracy_loss


@pytest.mark.parametrize("trace", ["cifar10-test", "elsewhere/cifar10-test.npz", "my_test.npz"])
def test_refuses_test_trace_before_reading_it(shipped, trace):
    with pytest.raises(ValueError, match="test"):
        calibrate("FeatureDifference", EnvConfig(trace=trace), grid=[0.5])
    assert not shipped


def test_refuses_trace_marked_test_in_metadata(checkpoints):
    t = synthetic_trace(n=200)
    marked = dataclasses.replace(t, metadata={**t.metadata, "split": "test"})
    marked.save(checkpoints / "traces" / "renamed.npz")
    record(checkpoints / "traces" / "renamed.npz", "test")
    with pytest.raises(ValueError, match="split='test'"):
        calibrate("FeatureDifference", EnvConfig(trace="renamed"), grid=[0.5])


@pytest.mark.parametrize(
    "change", [{"arrivals.split": "test"}, {"cluster.bandwidth.split": "test"}]
)
def test_refuses_held_out_link_and_arrival_traces(change):
    config = EnvConfig.scenario("azure-code").replace(change)
    with pytest.raises(ValueError, match=f"{next(iter(change))}='test'"):
        calibrate("FeatureDifference", config, grid=[0.5])


def test_an_empty_grid_and_an_unknown_operating_point_are_named():
    with pytest.raises(ValueError, match="grid"):
        calibrate("FixedExit", SYNTH, grid=[])
    cal = calibrate("FixedExit", SYNTH, n_requests=64, grid=[0, 1])
    with pytest.raises(ValueError, match="'reward' or 'cheapest'"):
        cal.policy("best")


def test_fixed_exit_grid_covers_every_exit():
    cal = calibrate("FixedExit", SYNTH, n_requests=256)
    assert [p for p, _ in cal.sweep] == [0.0, 1.0, 2.0, 3.0]
    assert cal.policy("reward").k == int(cal.best_reward_param)


def test_unknown_rule_raises():
    with pytest.raises(ValueError, match="rule"):
        calibrate("Magic", SYNTH)


def test_default_grids_drop_degenerate_thresholds():
    """A threshold equal to FixedExit(0), FixedExit(1) or (nearly) LastExit is no calibration."""
    from agents.calibration import CALIBRATED_RULES

    trace = synthetic_trace(n=50, num_classes=10)
    for rule in ("RandomExit", "ConfidenceThreshold", "EntropyThreshold", "FeatureDifference"):
        grid = CALIBRATED_RULES[rule][1]
        grid = grid(trace) if callable(grid) else grid
        assert grid and 0.0 not in grid and 1.0 not in grid, rule
    confidence = CALIBRATED_RULES["ConfidenceThreshold"][1](trace)
    assert min(confidence) > 0.1  # max_prob >= 1/C always: FixedExit(0) at or below it


@pytest.mark.parametrize("trace_name", ["synthetic", "cifar10-val"])
def test_threshold_grids_hold_no_fixed_exit_in_disguise(trace_name):
    """On the trace, no grid point exits every request at the rule's first exit (the shipped
    network's feature difference never exceeds about 0.6, so 0.65-0.975 were FixedExit(1)), and
    every grid point lets some request out early."""
    from agents.calibration import CALIBRATED_RULES
    from distree_env.dynamics import EXIT_FEATURES, exit_features

    trace = resolve_trace(trace_name)
    feats, _ = exit_features(trace)
    for rule, feature, above in (
        ("ConfidenceThreshold", "max_prob", True),
        ("EntropyThreshold", "entropy", False),
        ("FeatureDifference", "feature_diff", False),
    ):
        column = feats[:, EXIT_FEATURES.index(feature)].reshape(trace.n, trace.num_exits)
        first = 1 if feature == "feature_diff" else 0
        grid = CALIBRATED_RULES[rule][1](trace)
        assert len(grid) >= 5, rule
        for t in grid:
            passes = column >= t if above else column <= t
            assert passes[:, first].mean() < 1.0 and passes[:, first:-1].any(), (rule, t)


def test_coordinate_descent_takes_another_pass_while_one_changes_something():
    """From (0, 0) the best point (1, 1) needs two passes: the first coordinate pays only once
    the second has moved. A pass that changes nothing ends the descent early."""
    from agents.calibration import _descend

    table = {(0, 0): 0.0, (1, 0): -1.0, (0, 1): 1.0, (1, 1): 2.0}
    calls = []

    def score(ts: tuple) -> tuple:
        calls.append(ts)
        return (table[ts],)

    grids = [[0, 1], [0, 1]]
    assert _descend([0, 0], grids, score, rounds=1) == (0, 1)
    assert _descend([0, 0], grids, score, rounds=2) == (1, 1)
    calls.clear()
    assert _descend([1, 1], grids, score, rounds=5) == (1, 1)
    assert len(calls) == 1 + 4  # the start, then one pass that changed nothing
