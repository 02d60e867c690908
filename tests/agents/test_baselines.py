"""Strong baselines: behaviour by feature name, the planner on hand-computable models, and
calibration on val only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agents import (
    DeadlineAware,
    LoadAware,
    PerExitThreshold,
    Planner,
    RandomExit,
    calibrate_baselines,
    evaluate,
)
from agents.baselines import StageTimeTable, StateBins, solve_planner
from agents.calibration import fit_planner, stage_time_table
from agents.rollouts import collect
from distree_env.config import EnvConfig, RewardConfig
from distree_env.dynamics import describe
from tests.agents import SYNTH

NAMES = (
    "max_prob",
    "margin",
    "entropy",
    "feature_diff",
    "progress",
    "compute_0",
    "compute_1",
    "bandwidth_0",
    "bandwidth_1",
    "elapsed_ratio",
    "queue_len",
    "oldest_wait_ratio",
)


class Layout:
    """What ``bind`` reads from an environment, in a given column order."""

    def __init__(self, names=NAMES, num_exits: int = 3) -> None:
        self.observation_names = tuple(names)
        self.num_exits = num_exits


def obs(rows: list[dict[str, float]], names=NAMES) -> np.ndarray:
    """Observations from {feature: value} dicts (absent features 0, resources 1)."""
    out = np.zeros((len(rows), len(names)), dtype=np.float32)
    for i, row in enumerate(rows):
        for j, n in enumerate(names):
            out[i, j] = row.get(n, 1.0 if n.startswith(("compute_", "bandwidth_")) else 0.0)
    return out


def test_per_exit_thresholds_by_name_and_exit():
    rule = PerExitThreshold([0.9, 0.6]).bind(Layout())
    rows = [
        {"max_prob": 0.8, "progress": 0.0},  # exit 0, below 0.9: continue
        {"max_prob": 0.95, "progress": 0.0},  # exit 0, above: exit
        {"max_prob": 0.7, "progress": 0.5},  # exit 1, above 0.6: exit
        {"max_prob": 0.1, "progress": 1.0},  # last exit: always
    ]
    assert rule.predict(obs(rows))[0].tolist() == [0, 1, 1, 1]
    perm = NAMES[::-1]  # another column order, same decisions
    assert PerExitThreshold([0.9, 0.6]).bind(Layout(perm)).predict(obs(rows, perm))[0].tolist() == [
        0,
        1,
        1,
        1,
    ]


def test_low_is_confident_for_entropy_and_none_never_exits():
    rule = PerExitThreshold([None, 0.3], feature="entropy").bind(Layout())
    rows = [
        {"entropy": 0.0, "progress": 0.0},  # None: never at exit 0
        {"entropy": 0.2, "progress": 0.5},
        {"entropy": 0.4, "progress": 0.5},
    ]
    assert rule.predict(obs(rows))[0].tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: PerExitThreshold([1.5, 0.2]), "thresholds[0]"),
        (lambda: PerExitThreshold([0.5], feature="loss"), "feature"),
        (lambda: PerExitThreshold([]), "thresholds"),
        (lambda: PerExitThreshold([0.5, 0.5, 0.5]).bind(Layout()), "thresholds has 3"),
        (lambda: DeadlineAware([0.5, 0.5], "table"), "table"),
        (lambda: LoadAware([0.5, 0.5], _table(), shift=2.0), "shift"),
    ],
)
def test_bad_parameters_name_the_field(make, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        make()


def _table(ratio: float = 0.3) -> StageTimeTable:
    # two device bins (edge 0.5), one link bin; the slow device bin takes twice as long
    r = np.array([[[2 * ratio], [ratio]], [[2 * ratio], [ratio]]])
    return StageTimeTable((0.5,), (), r)


def test_deadline_guard_exits_when_the_next_stage_would_be_late():
    rule = DeadlineAware([None, None], _table(0.3), guard=1.0).bind(Layout())
    rows = [
        {"elapsed_ratio": 0.5, "progress": 0.0},  # 0.5 + 0.3 <= 1: continue
        {"elapsed_ratio": 0.8, "progress": 0.0},  # 0.8 + 0.3 > 1: exit
        {"elapsed_ratio": 0.5, "progress": 0.0, "compute_0": 0.2},  # slow: 0.5 + 0.6 > 1
        {"elapsed_ratio": 1.2, "progress": 0.0},  # already late: the guard does not act
    ]
    assert rule.predict(obs(rows))[0].tolist() == [0, 1, 1, 0]
    off = DeadlineAware([None, None], _table(0.3), guard=0.0).bind(Layout())
    assert off.predict(obs(rows))[0].tolist() == [0, 0, 0, 0]


def test_deadline_guard_predicts_the_stage_after_the_current_exit():
    """Row k of the table is the stage from exit k to exit k + 1: at 0.7 of the deadline, the
    stage after exit 0 (0.1) keeps the request on time, the one after exit 1 (0.4) does not."""
    table = StageTimeTable((0.5,), (), np.array([[[0.2], [0.1]], [[0.8], [0.4]]]))
    rule = DeadlineAware([None, None], table, guard=1.0).bind(Layout())
    rows = [{"elapsed_ratio": 0.7, "progress": 0.0}, {"elapsed_ratio": 0.7, "progress": 0.5}]
    assert rule.predict(obs(rows))[0].tolist() == [0, 1]


def test_deadline_guard_adds_the_observed_wait_for_the_next_device():
    """With pipelining the observation has ``next_wait_ratio``: the wait before the next stage
    can start counts towards the deadline (and guard 0 still turns the guard off)."""
    names = (*NAMES, "next_wait_ratio")
    rows = [
        {"elapsed_ratio": 0.5, "progress": 0.0, "next_wait_ratio": 0.1},  # 0.5 + 0.1 + 0.3 <= 1
        {"elapsed_ratio": 0.5, "progress": 0.0, "next_wait_ratio": 0.3},  # 0.5 + 0.3 + 0.3 > 1
        {"elapsed_ratio": 1.1, "progress": 0.0, "next_wait_ratio": 0.3},  # already late
    ]
    rule = DeadlineAware([None, None], _table(0.3), guard=1.0).bind(Layout(names))
    assert rule.predict(obs(rows, names))[0].tolist() == [0, 1, 0]
    off = DeadlineAware([None, None], _table(0.3), guard=0.0).bind(Layout(names))
    assert off.predict(obs(rows, names))[0].tolist() == [0, 0, 0]


def test_load_aware_lowers_thresholds_with_the_queue():
    rule = LoadAware([0.9, 0.9], _table(0.0), guard=0.0, shift=0.2).bind(Layout())
    rows = [
        {"max_prob": 0.8, "queue_len": 0.0},  # 0.8 < 0.9: continue
        {"max_prob": 0.8, "queue_len": 1.0},  # threshold 0.7 at a full queue: exit
        {"max_prob": 0.8, "queue_len": 0.4},  # 0.82: continue
    ]
    assert rule.predict(obs(rows))[0].tolist() == [0, 1, 0]


def test_value_iteration_by_hand():
    # states: 0 = exit 0 unsure, 1 = exit 0 sure, 2 = exit 1 (last); actions continue / exit
    reward = np.array([[-0.1, 0.2], [-0.1, 0.95], [-1e9, 0.9]])
    trans = np.zeros((3, 2, 3))
    trans[0, 0, 2] = trans[1, 0, 2] = 1.0
    ends = np.array([[False, True]] * 3)
    q = solve_planner(reward, trans, ends, discount=0.0)
    # unsure: continue (-0.1 + 0.9 = 0.8) beats exit (0.2); sure: exit (0.95) beats 0.8
    np.testing.assert_allclose(q[:2], [[0.8, 0.2], [0.8, 0.95]])
    # a request ending leads to state 0 of the next one, discounted by 0.5 per request:
    # V0 = 0.8 + 0.5 V0 -> V0 = 1.6; exit at state 0 = 0.2 + 0.5 * 1.6 = 1.0
    trans[:, 1, 0] = 1.0
    q = solve_planner(reward, trans, ends, discount=0.5)
    np.testing.assert_allclose(q[0], [1.6, 1.0], atol=1e-6)
    np.testing.assert_allclose(q[2, 1], 0.9 + 0.5 * 1.6, atol=1e-6)


def test_planner_state_has_the_wait_for_the_next_device_where_observed():
    bins = StateBins("max_prob", ((0.5,), ()), (), (), (), (), (0.2,))
    names = (*NAMES, "next_wait_ratio")
    rows = [{"progress": 0.0, "next_wait_ratio": 0.1}, {"progress": 0.0, "next_wait_ratio": 0.3}]
    k = np.zeros(2, dtype=np.int64)
    short, long = bins.codes(obs(rows, names), k, names)
    assert np.unravel_index(long, bins.shape)[-1] == 1 and short == long - 1
    # no such column (no pipelining): every state is in the first wait bin
    assert bins.codes(obs(rows), k, NAMES).tolist() == [short, short]


def test_planner_acts_by_table_and_falls_back_on_unseen_states():
    bins = StateBins("max_prob", ((0.5,), (0.5,), ()), (), (), (), ())
    assert bins.shape == (3, 2, 1, 1, 1, 1, 1)
    table = np.zeros(bins.size, dtype=bool)
    seen = np.zeros(bins.size, dtype=bool)
    # exit 0: seen both bins; exit when confident. exit 1: only the unsure bin seen (continue).
    codes = {
        (k, c): np.ravel_multi_index((k, c, 0, 0, 0, 0, 0), bins.shape)
        for k in (0, 1)
        for c in (0, 1)
    }
    table[codes[0, 1]] = True
    seen[[codes[0, 0], codes[0, 1], codes[1, 0]]] = True
    fallback = np.zeros(bins.shape[0] * bins.shape[1], dtype=bool)
    fallback[1 * 2 + 1] = True  # group (exit 1, confident) says exit
    planner = Planner(bins, table, fallback, seen).bind(Layout())
    rows = [
        {"max_prob": 0.3, "progress": 0.0},
        {"max_prob": 0.9, "progress": 0.0},
        {"max_prob": 0.3, "progress": 0.5},
        {"max_prob": 0.9, "progress": 0.5},  # unseen: the group's fallback
        {"max_prob": 0.1, "progress": 1.0},  # last exit
    ]
    assert planner.predict(obs(rows))[0].tolist() == [0, 1, 0, 1, 1]


def test_stage_time_table_leaves_out_the_observed_wait_for_the_next_device():
    """With pipelining the next-stage times learned from val are the stages themselves: the
    wait before them is observed (``next_wait_ratio``), so it is not averaged into them."""
    cfg = EnvConfig.from_dict(
        {
            "trace": "synthetic:topology=pipeline,n=200",
            "cluster": {
                "pipelining": True,
                "compute": {"kind": "constant"},
                "bandwidth": {"kind": "constant"},
            },
            "arrivals": {"kind": "poisson", "utilisation": 0.9},
            "reward": {"timing": "request"},
        }
    )
    data = collect(RandomExit(0.25), cfg, n_steps=8192, seed=0)
    assert (data.column("next_wait_ratio") > 0).mean() > 0.05  # there were waits to leave out
    stage_ms = np.array(describe(cfg)["full_speed_stage_ms"])
    table = stage_time_table(data)
    assert np.allclose(table.ratio[:, 0, 0], stage_ms[1:] / cfg.deadline_ms, rtol=1e-3)


def test_fitted_planner_beats_the_behaviour_it_learned_from():
    data = collect(RandomExit(0.25), SYNTH, n_steps=16_384, seed=0)
    planner = fit_planner(data, "max_prob")
    fitted = evaluate(planner, SYNTH, n_requests=2048, seed=1)["mean_reward"]
    behaviour = evaluate(RandomExit(0.25), SYNTH, n_requests=2048, seed=1)["mean_reward"]
    assert fitted > behaviour + 0.05


TINY = dict(n_requests=256, points=3, rounds=1, data_steps=2048)


class Spy:
    """Records what a calibration evaluated (policy, seed, metrics) and which thresholds each
    named coordinate descent tried, so a test can check a choice against every candidate
    with its own arithmetic (not the calibration's scoring function)."""

    def __init__(self, monkeypatch) -> None:
        from agents import calibration

        self.evaluations: list[tuple[object, int, dict]] = []
        self.trials: dict[str, list[tuple]] = {}
        real_evaluate, real_descend = calibration.evaluate, calibration._descend

        def evaluate_spy(policy, **run):
            result = real_evaluate(policy, **run)
            self.evaluations.append((policy, run["seed"], result))
            return result

        def descend_spy(start, grids, score, rounds):
            tried = self.trials.setdefault(score.__name__, [])

            def recorded(ts):
                tried.append(ts)
                return score(ts)

            return real_descend(start, grids, recorded, rounds)

        monkeypatch.setattr(calibration, "evaluate", evaluate_spy)
        monkeypatch.setattr(calibration, "_descend", descend_spy)

    def results(self, kind: type, **attrs) -> dict[tuple, dict[int, dict]]:
        """Metrics per seed of each evaluated ``kind`` (exactly) with these attributes, by
        thresholds."""
        out: dict[tuple, dict[int, dict]] = {}
        for policy, seed, result in self.evaluations:
            if type(policy) is kind and all(getattr(policy, a) == v for a, v in attrs.items()):
                out.setdefault(policy.thresholds, {})[seed] = result
        return out


#: Reward for accuracy alone: the best reward then differs from the cheapest point within an
#: accuracy budget and from the most deadlines met at an accuracy, so a test sees which was chosen.
ACCURACY_ONLY = RewardConfig(latency_weight=0.0, deadline_penalty=0.0)


def test_calibration_on_val_gives_every_baseline(shipped):
    fits = calibrate_baselines(EnvConfig(trace="cifar10-val"), **TINY)
    assert list(fits) == [
        "PerExitThreshold",
        "PerExitThreshold[cheapest]",
        "DeadlineAware",
        "LoadAware",
        "Planner",
    ]
    assert shipped and all("cifar10-val" in p for p in shipped)
    per_exit, deadline, load = (fits[n].val["mean_reward"] for n in BASELINE_CHAIN)
    assert deadline >= per_exit - 1e-12 and load >= deadline - 1e-12  # each grid holds the previous
    cheapest = fits["PerExitThreshold[cheapest]"].val
    last = evaluate(PerExitThreshold([None, None, None]), EnvConfig(trace="cifar10-val"), 256)
    assert cheapest["accuracy"] >= last["accuracy"] - 0.01 - 1e-12


BASELINE_CHAIN = ("PerExitThreshold", "DeadlineAware", "LoadAware")


def test_load_aware_is_moved_to_a_target_accuracy():
    config = EnvConfig(trace="cifar10-val").with_scenario("bursty-stream")

    def mean(policy) -> float:  # over the seeds the point is matched on
        return float(np.mean([evaluate(policy, config, 256, seed=s)["accuracy"] for s in (0, 1)]))

    target = mean(PerExitThreshold([None, None, None]))  # reachable: never exit early
    fits = calibrate_baselines(
        config, target_accuracy=target, accuracy_tolerance=0.01, target_seeds=(0, 1), **TINY
    )
    assert list(fits)[3:5] == ["LoadAware", "LoadAware[accuracy]"]
    moved, best = fits["LoadAware[accuracy]"].policy, fits["LoadAware"].policy
    assert abs(mean(moved) - target) <= 0.01 < abs(mean(best) - target)
    with pytest.raises(ValueError, match="target_accuracy=1.5"):
        calibrate_baselines(config, target_accuracy=1.5, **TINY)


def test_operating_points_are_chosen_by_their_own_criterion(monkeypatch):
    """On the shipped val trace (where, unlike the synthetic one, earlier exits are less
    accurate), each operating point is checked against every point its descent tried, by the
    test's own arithmetic: ``[cheapest]`` the largest compute saving within the accuracy budget,
    ``LoadAware[accuracy]`` the most deadlines met within the tolerance of the target."""
    spy = Spy(monkeypatch)
    config = EnvConfig(trace="cifar10-val").with_scenario("steady-stream")
    config = dataclasses.replace(config, reward=ACCURACY_ONLY)
    seeds = (0, 1)
    exits_early = PerExitThreshold([0.8] * 3)
    target = float(np.mean([evaluate(exits_early, config, 256, seed=s)["accuracy"] for s in seeds]))
    fits = calibrate_baselines(
        config,
        target_accuracy=target,
        accuracy_tolerance=0.01,
        target_seeds=seeds,
        **TINY,
        max_accuracy_loss=0.03,
    )

    cheapest = fits["PerExitThreshold[cheapest]"]
    floor = evaluate(PerExitThreshold([None] * 3), config, 256)["accuracy"] - 0.03
    results = spy.results(PerExitThreshold, feature_name=cheapest.policy.feature_name)
    within = [results[ts][0] for ts in spy.trials["cheap"] if results[ts][0]["accuracy"] >= floor]
    assert cheapest.val["accuracy"] >= floor
    assert cheapest.val["compute_saving"] == max(m["compute_saving"] for m in within)
    assert cheapest.val["mean_reward"] < max(m["mean_reward"] for m in within)  # a real choice

    moved = fits["LoadAware[accuracy]"].policy
    results = spy.results(LoadAware, guard=moved.guard, shift=moved.shift)
    at_target = {}  # thresholds its descents tried within the tolerance -> (met, reward)
    for ts in spy.trials["matched_score"]:
        runs = [results[ts][s] for s in seeds]
        if abs(np.mean([r["accuracy"] for r in runs]) - target) <= 0.01:
            at_target[ts] = tuple(
                np.mean([r[m] for r in runs]) for m in ("qos_rate", "mean_reward")
            )
    met, reward = at_target[moved.thresholds]
    assert met == max(v[0] for v in at_target.values())
    assert reward < max(v[1] for v in at_target.values())  # a real choice


def test_each_objective_ranks_points_by_what_its_baseline_is_fitted_for():
    """Reward baselines by mean reward; ``[cheapest]`` by saving inside the accuracy budget,
    else by the accuracy nearest the budget's floor; ``[accuracy]`` by deadlines met within
    the tolerance of the target, else by the nearest accuracy."""
    from agents.calibration import objective

    def point(reward, accuracy, qos=0.9, saving=0.3):
        return {"mean_reward": reward, "accuracy": accuracy, "qos_rate": qos,
                "compute_saving": saving}  # fmt: skip

    high, low = point(0.7, 0.80), point(0.6, 0.86)
    assert objective("LoadAware", high, 0.87) > objective("LoadAware", low, 0.87)
    cheap = "PerExitThreshold[cheapest]"  # budget: 1 point below last exit's 0.87
    inside, outside = point(0.5, 0.865, saving=0.2), point(0.6, 0.85, saving=0.5)
    assert objective(cheap, inside, 0.87) > objective(cheap, outside, 0.87)
    near, far = point(0.5, 0.855, saving=0.1), point(0.6, 0.80, saving=0.6)  # both outside
    assert objective(cheap, near, 0.87) > objective(cheap, far, 0.87)
    matched = "LoadAware[accuracy]"
    on, off = point(0.5, 0.802, qos=0.95), point(0.7, 0.79, qos=0.99)
    assert objective(matched, on, 0.87, 0.80) > objective(matched, off, 0.87, 0.80)
    closer, farther = point(0.5, 0.79, qos=0.9), point(0.7, 0.78, qos=0.99)  # both outside
    assert objective(matched, closer, 0.87, 0.80) > objective(matched, farther, 0.87, 0.80)
    with pytest.raises(ValueError, match="target_accuracy"):
        objective(matched, on, 0.87)


@pytest.mark.parametrize("trace", ["cifar10-test", "elsewhere/cifar10-test.npz"])
def test_calibration_refuses_test_before_reading_it(shipped, trace):
    with pytest.raises(ValueError, match="test"):
        calibrate_baselines(EnvConfig(trace=trace), **TINY)
    assert not shipped
