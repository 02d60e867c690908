"""Calibrate rules and baselines on the ``val`` trace: best reward, and cheapest within budget.

Why: a rule is only a fair baseline with its best parameters, and "best" has two readings: the
highest mean reward (the RL objective), and the cheapest point whose accuracy stays within
``max_accuracy_loss`` of last-exit (how early-exit papers report). Both are found on ``val``;
asking for a test trace is an error, raised before the trace is read.

``calibrate`` sweeps one classic rule's parameter; ``calibrate_baselines`` fits the strong
baselines of ``agents.baselines`` (coordinate descent over per-exit thresholds, then the deadline
guard, then the load shift; the planner from transition statistics).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.baselines import (
    CONFIDENCE_FEATURES,
    DeadlineAware,
    LoadAware,
    PerExitThreshold,
    Planner,
    StageTimeTable,
    StateBins,
    slowest_levels,
    solve_planner,
)
from agents.evaluation import EvalResult, evaluate
from agents.rollouts import Transitions, collect, require_val
from agents.rules import (
    ConfidenceThreshold,
    EntropyThreshold,
    FeatureDifference,
    FixedExit,
    LastExit,
    RandomExit,
    RulePolicy,
    check_integer,
    check_number,
)
from distree_env.config import EnvConfig, build_config
from distree_env.dynamics import EXIT_FEATURES, NEXT_WAIT, exit_features
from distree_env.traces import ExitTrace, resolve_trace

__all__ = [
    "BASELINES",
    "CALIBRATED_RULES",
    "ACCURACY_TOLERANCE",
    "MAX_ACCURACY_LOSS",
    "BaselineFit",
    "Calibration",
    "calibrate",
    "calibrate_all",
    "calibrate_baselines",
    "fit_planner",
    "objective",
    "stage_time_table",
]

#: The accuracy budget of a "cheapest" operating point: at most this far below last-exit.
MAX_ACCURACY_LOSS = 0.01
#: "Equal accuracy": at most half a point apart, as a fraction (the deadline comparison's).
ACCURACY_TOLERANCE = 0.005

#: Parameters strictly inside (0, 1): at 0 or 1 every threshold rule (and RandomExit) degenerates
#: into a fixed exit or (nearly) never exits early, which FixedExit and LastExit already cover.
_OPEN_GRID = tuple(float(x) for x in np.round(np.linspace(0.0, 1.0, 41), 3))[1:-1]


def _fixed_grid(trace: ExitTrace) -> tuple[float, ...]:
    return tuple(float(k) for k in range(trace.num_exits))


def _threshold_grid(feature: str, exits_above: bool) -> Callable[[ExitTrace], tuple[float, ...]]:
    """The open-grid thresholds of a rule on ``feature`` that are no other rule in disguise on the
    trace: not every request passing at the rule's first exit (``FixedExit``; e.g. a top
    probability is always at least 1/C) and not none passing before the last (``LastExit``)."""

    def grid(trace: ExitTrace) -> tuple[float, ...]:
        feats, _ = exit_features(trace)
        column = feats[:, EXIT_FEATURES.index(feature)].reshape(trace.n, trace.num_exits)
        first = 1 if feature == "feature_diff" else 0  # feature_diff has no exit 0 to agree with
        early = column[:, first : max(trace.num_exits - 1, first + 1)].astype(np.float64)
        kept = []
        for t in _OPEN_GRID:
            passes = early >= t if exits_above else early <= t
            if passes[:, 0].mean() < 1.0 and passes.any():
                kept.append(t)
        return tuple(kept)

    return grid


#: Rule name -> (factory from one parameter, grid of that parameter or a function of the trace).
CALIBRATED_RULES: dict[str, tuple[Callable[[float], RulePolicy], Any]] = {
    "FixedExit": (lambda k: FixedExit(int(k)), _fixed_grid),
    "RandomExit": (RandomExit, _OPEN_GRID),
    "ConfidenceThreshold": (ConfidenceThreshold, _threshold_grid("max_prob", True)),
    "EntropyThreshold": (EntropyThreshold, _threshold_grid("entropy", False)),
    "FeatureDifference": (FeatureDifference, _threshold_grid("feature_diff", False)),
}


@dataclass(frozen=True)
class Calibration:
    """Result of one rule's sweep: the chosen parameters and every point of the sweep."""

    rule: str
    best_reward_param: float
    cheapest_param: float | None  # None when no parameter meets the accuracy budget
    last_exit_accuracy: float
    max_accuracy_loss: float
    sweep: tuple[tuple[float, dict[str, Any]], ...]

    def policy(self, which: str = "reward") -> RulePolicy:
        """The rule at its best-reward (``"reward"``) or cheapest (``"cheapest"``) parameter."""
        if which not in ("reward", "cheapest"):
            raise ValueError(f"which={which!r} is not allowed: 'reward' or 'cheapest'")
        param = self.best_reward_param if which == "reward" else self.cheapest_param
        if param is None:
            raise ValueError(f"{self.rule}: no parameter within the accuracy budget")
        return CALIBRATED_RULES[self.rule][0](param)


def calibrate(
    rule: str,
    config: EnvConfig | dict[str, Any] | None = None,
    max_accuracy_loss: float = MAX_ACCURACY_LOSS,
    grid: Sequence[float] | None = None,
    n_requests: int = 4096,
    seed: int = 0,
    num_envs: int = 64,
) -> Calibration:
    """Sweep ``rule``'s parameter on ``config``'s (val) trace; see the module docstring."""
    if rule not in CALIBRATED_RULES:
        raise ValueError(f"rule={rule!r} is not allowed: one of {', '.join(CALIBRATED_RULES)}")
    check_number("max_accuracy_loss", max_accuracy_loss)  # a share of accuracy, not percent
    config = build_config(config)
    require_val(config, "calibrate")
    factory, default_grid = CALIBRATED_RULES[rule]
    if grid is None:
        trace = resolve_trace(config.trace)
        grid = default_grid(trace) if callable(default_grid) else default_grid
    if len(grid) == 0:
        raise ValueError("grid=[] is not allowed: at least one parameter to sweep")
    run = dict(config=config, n_requests=n_requests, seed=seed, num_envs=num_envs)
    reference = evaluate(LastExit(), **run)["accuracy"]
    sweep = tuple((float(p), evaluate(factory(p), **run)) for p in grid)
    best = max(sweep, key=lambda pm: pm[1]["mean_reward"])[0]
    within = [pm for pm in sweep if pm[1]["accuracy"] >= reference - max_accuracy_loss]
    cheapest = max(within, key=lambda pm: pm[1]["compute_saving"])[0] if within else None
    return Calibration(rule, best, cheapest, reference, float(max_accuracy_loss), sweep)


def calibrate_all(
    config: EnvConfig | dict[str, Any] | None = None, **kwargs: Any
) -> dict[str, Calibration]:
    """:func:`calibrate` for every rule in :data:`CALIBRATED_RULES`."""
    return {rule: calibrate(rule, config, **kwargs) for rule in CALIBRATED_RULES}


# ---- strong baselines ---------------------------------------------------------------------------
#: The baselines :func:`calibrate_baselines` fits, in order (each starts from the one before);
#: with a target accuracy, ``LoadAware[accuracy]`` follows ``LoadAware``.
BASELINES = (
    "PerExitThreshold",
    "PerExitThreshold[cheapest]",
    "DeadlineAware",
    "LoadAware",
    "Planner",
)
_GUARDS = (0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
_SHIFTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
_BEHAVIOUR_EXIT = 0.25  # exit probability of the exploring policy whose steps are the data


@dataclass(frozen=True)
class BaselineFit:
    """One calibrated baseline: the policy, its val metrics, how many evaluations it took and
    the calibration's seed (its draw: exploring data and paired evaluations)."""

    name: str
    policy: RulePolicy
    val: EvalResult
    evaluations: int
    seed: int


def objective(
    name: str,
    metrics: Mapping[str, Any],
    last_exit_accuracy: float,
    target_accuracy: float | None = None,
    max_accuracy_loss: float = MAX_ACCURACY_LOSS,
    accuracy_tolerance: float = ACCURACY_TOLERANCE,
) -> tuple:
    """What the calibration of baseline ``name`` maximises, as a sortable tuple of ``metrics``
    (an evaluation, or a mean over seeds): the mean reward; for ``[cheapest]`` the compute
    saving among points within ``max_accuracy_loss`` of ``last_exit_accuracy`` (the nearest
    accuracy while none is); for ``[accuracy]`` the deadlines met among points within
    ``accuracy_tolerance`` of ``target_accuracy`` (the nearest while none is). Why public: two
    fits of one baseline (two calibration draws) are compared by what each was fitted for."""
    if name.endswith("[cheapest]"):
        floor = last_exit_accuracy - max_accuracy_loss
        ok = metrics["accuracy"] >= floor - 1e-12
        gain = metrics["compute_saving"] if ok else metrics["accuracy"] - floor
        return (ok, gain, metrics["mean_reward"])
    if name.endswith("[accuracy]"):
        if target_accuracy is None:
            raise ValueError(f"{name}: its objective needs target_accuracy, got None")
        gap = abs(metrics["accuracy"] - target_accuracy)
        ok = gap <= accuracy_tolerance + 1e-12
        return (ok, metrics["qos_rate"] if ok else -gap, metrics["mean_reward"])
    return (metrics["mean_reward"],)


class _Scorer:
    """Evaluations on val with a memo: the same parameters are never evaluated twice."""

    def __init__(self, config: EnvConfig, n_requests: int, seed: int, warmup: int = 0) -> None:
        self.run = dict(config=config, n_requests=n_requests, seed=seed, warmup=warmup)
        self.memo: dict[Any, tuple[RulePolicy, EvalResult]] = {}

    def __call__(self, key: Any, make: Callable[[], RulePolicy]) -> tuple[RulePolicy, EvalResult]:
        if key not in self.memo:
            policy = make()
            self.memo[key] = (policy, evaluate(policy, **self.run))
        return self.memo[key]


def _exit_grids(data: Transitions, feature: str, points: int) -> list[list[float | None]]:
    """Per exit but the last: ``points`` thresholds at quantiles of ``feature`` there, and None
    (never exit)."""
    grids = []
    value = data.column(feature)
    for k in range(data.num_exits - 1):
        here = value[data.exit_index == k].astype(np.float64)
        if len(here) == 0:
            grids.append([None])
            continue
        q = np.unique(np.round(np.quantile(here, np.linspace(0.02, 0.98, points)), 4))
        grids.append([*(float(t) for t in np.clip(q, 0.0, 1.0)), None])
    return grids


def _finer(
    grids: Sequence[Sequence[float | None]], at: Sequence[float | None], points: int = 9
) -> list[list[float | None]]:
    """Per exit, ``points`` thresholds spanning the grid steps on either side of ``at``'s value
    (just that value where it is None): a quantile grid's steps move accuracy by about a point,
    too coarse to match an accuracy within half a point."""
    out: list[list[float | None]] = []
    for grid, value in zip(grids, at, strict=True):
        values = sorted(v for v in grid if v is not None)
        if value is None or not values:
            out.append([value])
            continue
        i = values.index(value) if value in values else int(np.searchsorted(values, value))
        low, high = values[max(i - 1, 0)], values[min(i + 1, len(values) - 1)]
        out.append([float(v) for v in np.round(np.linspace(low, high, points), 4)])
    return out


def _descend(
    start: list[float | None],
    grids: Sequence[Sequence[float | None]],
    score: Callable[[tuple], tuple],
    rounds: int,
) -> tuple:
    """Coordinate descent: change one threshold at a time to its best grid value, ``rounds``
    passes (stops early when a pass changes nothing). Returns the best thresholds."""
    best = tuple(start)
    best_score = score(best)
    for _ in range(rounds):
        changed = False
        for i, grid in enumerate(grids):
            for value in grid:
                trial = best[:i] + (value,) + best[i + 1 :]
                s = score(trial)
                if s > best_score:
                    best, best_score, changed = trial, s, True
        if not changed:
            break
    return best


def stage_time_table(data: Transitions, bins: int = 3) -> StageTimeTable:
    """Mean next-stage time (share of the deadline) per exit and slowest device / link level,
    from the steps of ``data`` that continued; empty cells take their exit's mean."""
    steps = (data.action == 0) & (data.next_exit_index == data.exit_index + 1)
    delta = data.column("elapsed_ratio", "next_obs") - data.column("elapsed_ratio")
    if NEXT_WAIT in data.names:  # the wait for the next device is observed, not predicted
        delta = delta - data.column(NEXT_WAIT)
    c_level, b_level = slowest_levels(data.obs, data.names)
    c_edges, b_edges = _edges(c_level, bins), _edges(b_level, bins)
    table = StageTimeTable(c_edges, b_edges, np.zeros((data.num_exits - 1, 1, 1)))
    ci, bi = table.bins(data.obs, data.names)
    ratio = np.zeros((data.num_exits - 1, len(c_edges) + 1, len(b_edges) + 1))
    for k in range(data.num_exits - 1):
        at = steps & (data.exit_index == k)
        mean_k = float(delta[at].mean()) if at.any() else 0.0
        total = np.zeros(ratio.shape[1:])
        count = np.zeros(ratio.shape[1:])
        np.add.at(total, (ci[at], bi[at]), delta[at])
        np.add.at(count, (ci[at], bi[at]), 1.0)
        ratio[k] = np.where(count > 0, total / np.maximum(count, 1.0), mean_k)
    return StageTimeTable(c_edges, b_edges, ratio)


def _edges(values: np.ndarray, bins: int) -> tuple[float, ...]:
    """Bin edges: between the distinct values when there are at most ``bins`` of them (the
    levels of a Markov process), else at quantiles."""
    distinct = np.unique(np.round(values.astype(np.float64), 6))
    if len(distinct) <= bins:
        return tuple(float(x) for x in (distinct[:-1] + distinct[1:]) / 2)
    q = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return tuple(float(x) for x in np.unique(q))


def fit_planner(
    data: Transitions,
    feature: str = "max_prob",
    confidence_bins: int = 8,
    resource_bins: int = 3,
    queue_edges: Sequence[float] = (1e-6, 0.25, 0.5),
    elapsed_edges: Sequence[float] = (0.5, 0.8, 1.0),
    wait_edges: Sequence[float] = (1e-6, 0.1, 0.3),
    discount: float = 0.95,
    min_count: int = 5,
) -> Planner:
    """A :class:`Planner` from val transitions: empirical rewards and successor frequencies per
    (state, action) on the states seen, (state, action) pairs seen fewer than ``min_count``
    times borrow the statistics of their (exit, confidence bin) group, and
    :func:`agents.baselines.solve_planner` gives the action values.

    :param data: transitions from :func:`agents.rollouts.collect` on val (both actions seen).
    :param feature: confidence feature binned at per-exit quantiles (``confidence_bins``).
    :param resource_bins: bins of the slowest device and of the slowest link level (between
        the levels of a Markov process, else at quantiles).
    :param queue_edges: bin edges of ``queue_len`` (default: empty, light, half, heavy).
    :param elapsed_edges: bin edges of ``elapsed_ratio`` (default: early, later, near the
        deadline, late).
    :param wait_edges: bin edges of ``next_wait_ratio``, used where the data has it
        (pipelining; default: none, short, long, very long).
    :param discount: per-request discount of the value iteration.
    :param min_count: visits below which a (state, action) pair backs off to its group.
    """
    if NEXT_WAIT not in data.names:  # no wait observed (no pipelining): one bin
        wait_edges = ()
    bins = _state_bins(
        data, feature, confidence_bins, resource_bins, queue_edges, elapsed_edges, wait_edges
    )
    model = _empirical_model(data, bins, min_count)
    ends = np.array([[False, True]] * len(model.seen_codes))
    q = solve_planner(model.r_mean, model.transition, ends, discount, model.successors_of)
    exit_seen = q[:, 1] >= q[:, 0]
    table = np.zeros(bins.size, dtype=bool)
    table[model.seen_codes] = exit_seen
    seen = np.zeros(bins.size, dtype=bool)
    seen[model.seen_codes] = True
    votes = np.zeros((bins.shape[0] * bins.shape[1], 2))
    np.add.at(votes, (model.group, exit_seen.astype(np.int64)), model.count.sum(axis=1))
    fallback = votes[:, 1] >= votes[:, 0]
    return Planner(bins, table, fallback, seen)


def _state_bins(
    data: Transitions,
    feature: str,
    confidence_bins: int,
    resource_bins: int,
    queue_edges: Sequence[float],
    elapsed_edges: Sequence[float],
    wait_edges: Sequence[float],
) -> StateBins:
    """The planner's discretisation: ``feature`` at per-exit quantiles of val, the slowest
    device and link levels at :func:`_edges`, queue, elapsed time and wait at the given edges."""
    conf_edges = []
    value = data.column(feature).astype(np.float64)
    for k in range(data.num_exits):
        here = value[data.exit_index == k]
        if len(here) == 0:
            conf_edges.append(())
            continue
        q = np.quantile(here, np.linspace(0, 1, confidence_bins + 1)[1:-1])
        conf_edges.append(tuple(float(x) for x in np.unique(q)))
    c_level, b_level = slowest_levels(data.obs, data.names)
    return StateBins(
        feature,
        tuple(conf_edges),
        _edges(c_level, resource_bins),
        _edges(b_level, resource_bins),
        tuple(float(e) for e in queue_edges),
        tuple(float(e) for e in elapsed_edges),
        tuple(float(e) for e in wait_edges),
    )


@dataclass(frozen=True)
class _EmpiricalModel:
    """The finite model :func:`solve_planner` solves, over the ``n`` states seen on val."""

    seen_codes: np.ndarray  # [n] flat StateBins codes of the states seen
    group: np.ndarray  # [n] back-off group (exit, confidence bin) of each seen state
    count: np.ndarray  # [n, 2] visits per (state, action), the group's where rare
    r_mean: np.ndarray  # [n, 2] mean reward; -1e9 where the action cannot be chosen
    transition: tuple[np.ndarray, np.ndarray, np.ndarray]  # sparse (rows, next states, probs)
    successors_of: np.ndarray  # [2n] the row of each (state, action)'s successor distribution


def _empirical_model(data: Transitions, bins: StateBins, min_count: int) -> _EmpiricalModel:
    """Empirical rewards and successor frequencies per (state, action) seen in ``data``; pairs
    seen fewer than ``min_count`` times use their (exit, confidence bin) group's statistics."""
    s = bins.codes(data.obs, data.exit_index, data.names)
    s_next = bins.codes(data.next_obs, data.next_exit_index, data.names)
    seen_codes = np.unique(np.concatenate([s, s_next]))
    n = len(seen_codes)
    si, sj = np.searchsorted(seen_codes, s), np.searchsorted(seen_codes, s_next)
    a = data.action.astype(np.int64)
    count = np.zeros((n, 2))
    reward = np.zeros((n, 2))
    np.add.at(count, (si, a), 1.0)
    np.add.at(reward, (si, a), data.reward)
    # successor counts as sparse triplets: pair row (s * 2 + a) -> next state
    pair_next, t_count = np.unique((si * 2 + a) * n + sj, return_counts=True)
    t_row, t_col = pair_next // n, pair_next % n
    # back-off of rare pairs to their (exit, confidence) group: the group's statistics
    group = bins.coarse(seen_codes)
    g_ids, g_of = np.unique(group, return_inverse=True)
    g_count = np.zeros((len(g_ids), 2))
    g_reward = np.zeros((len(g_ids), 2))
    np.add.at(g_count, g_of, count)
    np.add.at(g_reward, g_of, reward)
    rare = count < min_count
    # successor distributions: each pair's own (rows 0..2n-1), then each group's (2n + group row)
    g_keys, g_inv = np.unique((g_of[t_row // 2] * 2 + t_row % 2) * n + t_col, return_inverse=True)
    g_tcount = np.bincount(g_inv, weights=t_count)
    g_row = g_keys // n
    pair_count = count.reshape(-1)
    group_total = g_count.reshape(-1)
    row_all = np.concatenate([t_row, 2 * n + g_row])
    col_all = np.concatenate([t_col, g_keys % n])
    prob_all = np.concatenate(
        [
            t_count / np.maximum(pair_count[t_row], 1.0),
            g_tcount / np.maximum(group_total[g_row], 1.0),
        ]
    )
    pairs = np.arange(2 * n)
    successors_of = np.where(rare.reshape(-1), 2 * n + g_of[pairs // 2] * 2 + pairs % 2, pairs)
    count = np.where(rare, g_count[g_of], count)
    reward = np.where(rare, g_reward[g_of], reward)
    known = count > 0
    r_mean = np.where(known, reward / np.maximum(count, 1.0), 0.0)
    last = np.unravel_index(seen_codes, bins.shape)[0] >= data.num_exits - 1
    # never-tried actions cannot be chosen: continuing at the last exit is not an action
    r_mean = np.where(known, r_mean, -1e9)
    r_mean[last, 0] = -1e9
    r_mean[~known.any(axis=1), 1] = 0.0  # a state never left on val: neutral, not -1e9 upstream
    return _EmpiricalModel(
        seen_codes, group, count, r_mean, (row_all, col_all, prob_all), successors_of
    )


def calibrate_baselines(
    config: EnvConfig | dict[str, Any] | None = None,
    max_accuracy_loss: float = MAX_ACCURACY_LOSS,
    n_requests: int = 4096,
    seed: int = 0,
    points: int = 10,
    rounds: int = 2,
    data_steps: int = 65_536,
    features: Sequence[str] = tuple(CONFIDENCE_FEATURES),
    target_accuracy: float | None = None,
    accuracy_tolerance: float = ACCURACY_TOLERANCE,
    target_seeds: Sequence[int] = (),
    warmup: int = 0,
) -> dict[str, BaselineFit]:
    """Fit every baseline of :data:`BASELINES` on ``config``'s val trace.

    1. Data: ``data_steps`` transitions of an exploring policy (``RandomExit(0.25)``).
    2. The confidence feature: the best single threshold shared by every exit, over
       ``features`` (grids at quantiles of val).
    3. ``PerExitThreshold``: coordinate descent over the per-exit thresholds from that point,
       best mean reward; ``[cheapest]``: from "never exit", the largest compute saving whose
       accuracy is within ``max_accuracy_loss`` of last-exit.
    4. ``DeadlineAware``: the guard over a grid, then one pass over the thresholds;
       ``LoadAware``: the load shift over a grid, then one pass over the thresholds. Each
       grid includes the previous baseline's value (guard 0, shift 0), so on val each is at least
       as good as the one before.
    5. ``Planner``: :func:`fit_planner` on the data, and again on the data of the planner
       itself (with 20% random actions): the model is fitted where the policy goes.
    6. With ``target_accuracy`` (a learned agent's accuracy on ``target_seeds``):
       ``LoadAware[accuracy]``, the load-aware rule moved to that operating point: from
       ``LoadAware``, its guard and shift over their grids, then coordinate descent over its
       thresholds (then over finer steps around them), each for the fewest deadline misses
       among points within ``accuracy_tolerance`` of the target (the nearest accuracy while
       none is), averaged over ``target_seeds`` (default: ``seed``). Comparing an agent's
       misses with a rule of another accuracy, or with one that sees only confidence, would
       not be a fair comparison; and since one seed's accuracy varies by about half a point,
       the point is matched on the seeds the agent was measured on.

    :param config: the val environment (a test trace is refused before it is read).
    :param max_accuracy_loss: accuracy budget of the cheapest operating point, in [0, 1].
    :param n_requests: requests per val evaluation; ``seed``: its seed (all evaluations share
        it, so differences between parameters are paired).
    :param points: thresholds per exit in a grid; ``rounds``: coordinate-descent passes.
    :param data_steps: transitions collected for grids, stage times and the planner.
    :param features: confidence features to choose from.
    :param target_accuracy: accuracy in [0, 1] of the extra ``LoadAware[accuracy]`` point (None:
        no such point); ``accuracy_tolerance``: how close, in [0, 1], counts as equal;
        ``target_seeds``: the seeds whose mean accuracy is matched.
    :param warmup: requests per stream before an evaluation counts (``agents.evaluate``).
    """
    _check_baseline_args(max_accuracy_loss, points, rounds, data_steps, features)
    if target_accuracy is not None:
        check_number("target_accuracy", target_accuracy, 0.0, 1.0)
    check_number("accuracy_tolerance", accuracy_tolerance, 0.0, 1.0)
    config = build_config(config)
    require_val(config, "calibrate_baselines")
    purpose = "calibrate_baselines"
    data = collect(RandomExit(_BEHAVIOUR_EXIT), config, data_steps, seed, purpose=purpose)
    score = _Scorer(config, n_requests, seed, warmup)
    k1 = data.num_exits - 1

    def per_exit(ts: tuple, feature: str) -> tuple[RulePolicy, EvalResult]:
        return score(("pe", feature, ts), lambda: PerExitThreshold(list(ts), feature))

    # 2. the feature, by its best shared threshold
    feature, start, grids = _shared_threshold(data, features, points, per_exit)
    fits: dict[str, BaselineFit] = {}

    def done(name: str, policy: RulePolicy, val: EvalResult, before: int) -> None:
        fits[name] = BaselineFit(name, policy, val, len(score.memo) - before, seed)

    # 3. per-exit thresholds
    before = len(score.memo)
    reward_of = lambda ts: (per_exit(ts, feature)[1]["mean_reward"],)  # noqa: E731
    best = _descend(list(start), grids, reward_of, rounds)
    done("PerExitThreshold", *per_exit(best, feature), before)
    before = len(score.memo)
    reference = evaluate(LastExit(), **score.run)["accuracy"]

    def cheap(ts: tuple) -> tuple:
        m = per_exit(ts, feature)[1]
        return objective(
            "PerExitThreshold[cheapest]", m, reference, max_accuracy_loss=max_accuracy_loss
        )

    cheapest = _descend([None] * k1, grids, cheap, rounds)
    done("PerExitThreshold[cheapest]", *per_exit(cheapest, feature), before)

    # 4. deadline guard, then load shift
    table = stage_time_table(data)

    def deadline(ts: tuple, guard: float) -> tuple[RulePolicy, EvalResult]:
        return score(("da", ts, guard), lambda: DeadlineAware(list(ts), table, guard, feature))

    before = len(score.memo)
    guard = max(_GUARDS, key=lambda g: (deadline(best, g)[1]["mean_reward"], -g))
    da = _descend(list(best), grids, lambda ts: (deadline(ts, guard)[1]["mean_reward"],), 1)
    done("DeadlineAware", *deadline(da, guard), before)

    def load(ts: tuple, shift: float) -> tuple[RulePolicy, EvalResult]:
        return score(
            ("la", ts, guard, shift), lambda: LoadAware(list(ts), table, guard, shift, feature)
        )

    before = len(score.memo)
    shift = max(_SHIFTS, key=lambda s: (load(da, s)[1]["mean_reward"], -s))
    la = _descend(list(da), grids, lambda ts: (load(ts, shift)[1]["mean_reward"],), 1)
    done("LoadAware", *load(la, shift), before)
    if target_accuracy is not None:
        before = len(score.memo)
        scorers = [
            score if s == seed else _Scorer(config, n_requests, s, warmup)
            for s in target_seeds or (seed,)
        ]

        def load_rule(ts: tuple, g: float, sh: float) -> LoadAware:
            return LoadAware(list(ts), table, g, sh, feature)

        def at_accuracy(ts: tuple, g: float, sh: float) -> tuple:
            runs = [sc(("la", ts, g, sh), lambda: load_rule(ts, g, sh))[1] for sc in scorers]
            mean = {
                m: float(np.mean([r[m] for r in runs]))
                for m in ("accuracy", "qos_rate", "mean_reward")
            }
            return objective(
                "LoadAware[accuracy]",
                mean,
                reference,
                target_accuracy,
                accuracy_tolerance=accuracy_tolerance,
            )

        # the guard and the shift too: fitted for reward, they can cap the accuracy
        a_guard = max(_GUARDS, key=lambda g: at_accuracy(la, g, shift))
        a_shift = max(_SHIFTS, key=lambda sh: at_accuracy(la, a_guard, sh))

        def matched_score(ts: tuple) -> tuple:
            return at_accuracy(ts, a_guard, a_shift)

        matched = _descend(list(la), grids, matched_score, rounds)
        matched = _descend(list(matched), _finer(grids, matched), matched_score, 1)
        fit = score(("la", matched, a_guard, a_shift), lambda: load_rule(matched, a_guard, a_shift))
        done("LoadAware[accuracy]", *fit, before)

    # 5. the planner, refitted on its own state distribution
    before = len(score.memo)
    planner = fit_planner(data, feature)
    explore = _Explore(planner, 0.2, seed)
    own = collect(explore, config, data_steps, seed + 1, purpose=purpose)
    candidates = [planner, fit_planner(_join(data, own), feature)]
    results = [score(("planner", i), lambda p=p: p) for i, p in enumerate(candidates)]
    done("Planner", *max(results, key=lambda pr: pr[1]["mean_reward"]), before)
    return fits


def _check_baseline_args(
    max_accuracy_loss: float, points: int, rounds: int, data_steps: int, features: Sequence[str]
) -> None:
    """Refuse bad arguments of :func:`calibrate_baselines` before any data is collected."""
    check_number("max_accuracy_loss", max_accuracy_loss)  # a share of accuracy, not percent
    for name, value, low in (
        ("points", points, 2),
        ("rounds", rounds, 1),
        ("data_steps", data_steps, 1),
    ):
        check_integer(f"calibrate_baselines: {name}", value, low)
    for f in features:
        if f not in CONFIDENCE_FEATURES:
            raise ValueError(
                f"features: {f!r} is not allowed: one of {', '.join(CONFIDENCE_FEATURES)}"
            )


def _shared_threshold(
    data: Transitions,
    features: Sequence[str],
    points: int,
    per_exit: Callable[[tuple, str], tuple[RulePolicy, EvalResult]],
) -> tuple[str, tuple, list[list[float | None]]]:
    """The confidence feature whose best single threshold, shared by every exit, earns the most
    on val: (that feature, that threshold per exit as the descent's start, its per-exit grids).
    Falls back to ``features[0]`` and "never exit" when no feature has a grid point."""
    k1 = data.num_exits - 1
    best_shared: tuple[float, str, tuple] | None = None
    grids_of = {f: _exit_grids(data, f, points) for f in features}
    for f in features:
        pooled = sorted({t for g in grids_of[f] for t in g if t is not None})
        for t in pooled[:: max(len(pooled) // points, 1)]:
            reward = per_exit((t,) * k1, f)[1]["mean_reward"]
            if best_shared is None or reward > best_shared[0]:
                best_shared = (reward, f, (t,) * k1)
    if best_shared is None:
        return features[0], (None,) * k1, grids_of[features[0]]
    return best_shared[1], best_shared[2], grids_of[best_shared[1]]


class _Explore(RulePolicy):
    """``policy`` with a share ``epsilon`` of random actions (data near the policy's states)."""

    def __init__(self, policy: RulePolicy, epsilon: float, seed: int) -> None:
        super().__init__()
        self.policy, self.epsilon = policy, epsilon
        self.rng = np.random.default_rng(seed)

    def bind(self, env: Any) -> _Explore:
        super().bind(env)
        self.policy.bind(env)
        return self

    def decide(self, obs: np.ndarray) -> np.ndarray:
        act = self.policy.decide(obs)
        flip = self.rng.random(len(obs)) < self.epsilon
        return np.where(flip, self.rng.random(len(obs)) < 0.5, act)


def _join(a: Transitions, b: Transitions) -> Transitions:
    return Transitions(
        a.names,
        a.num_exits,
        *(
            np.concatenate([getattr(a, f), getattr(b, f)])
            for f in ("obs", "exit_index", "action", "reward", "next_obs", "next_exit_index")
        ),
    )
