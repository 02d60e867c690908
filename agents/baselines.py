"""The strongest non-learned exit policies: they see what a learned agent sees.

Why: a learned agent is only worth its cost if it beats hand-made policies that read the same
observation. Each baseline here reads its features by name (``observation_names``) and has a few
parameters that ``agents.calibrate`` chooses on the ``val`` trace only:

- :class:`PerExitThreshold`: one threshold per exit on one confidence feature;
- :class:`DeadlineAware`: the same, and it also exits when the next stage is predicted to end
  after the deadline (a table of stage times per exit and measured resource level, learned from
  val rollouts);
- :class:`LoadAware`: its thresholds move with the queue length, the idea of adaptive serving
  systems such as Apparate (SOSP 2024): under load, answer earlier;
- :class:`Planner`: a model-based policy: value iteration over (exit, confidence bin, resource
  level bin, queue bin, elapsed-time bin), from transition statistics of val rollouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.rules import RulePolicy, check_number
from distree_env.dynamics import NEXT_WAIT

__all__ = [
    "CONFIDENCE_FEATURES",
    "DeadlineAware",
    "LoadAware",
    "PerExitThreshold",
    "Planner",
    "StageTimeTable",
    "StateBins",
    "slowest_levels",
    "solve_planner",
]

#: Confidence features a threshold can use: True where a high value means "safe to exit".
CONFIDENCE_FEATURES: dict[str, bool] = {
    "max_prob": True,
    "margin": True,
    "entropy": False,
    "feature_diff": False,
}


def _check_feature(owner: str, feature: str) -> str:
    if feature not in CONFIDENCE_FEATURES:
        raise ValueError(
            f"{owner}.feature={feature!r} is not allowed: one of {', '.join(CONFIDENCE_FEATURES)}"
        )
    return feature


def slowest_levels(obs: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the slowest measured device level (``compute_*``) and the slowest link level
    (``bandwidth_*``): a request's next stage waits for both. 1.0 where there are none."""
    compute = [i for i, n in enumerate(names) if n.startswith("compute_")]
    bandwidth = [i for i, n in enumerate(names) if n.startswith("bandwidth_")]
    c = obs[:, compute].min(axis=1) if compute else np.ones(len(obs))
    b = obs[:, bandwidth].min(axis=1) if bandwidth else np.ones(len(obs))
    return c, b


class PerExitThreshold(RulePolicy):
    """Exit at exit ``k`` when ``feature`` passes ``thresholds[k]``.

    ``max_prob`` and ``margin`` pass at or above the threshold, ``entropy`` and ``feature_diff``
    at or below. ``None`` means "never exit here". The last exit always answers (the env ends
    the request there), so ``thresholds`` has one entry per exit but the last (extra entries are
    refused at ``bind``).

    :param thresholds: one value in [0, 1] (or None) per exit before the last.
    :param feature: the confidence feature, a key of :data:`CONFIDENCE_FEATURES`.
    """

    def __init__(self, thresholds: Sequence[float | None], feature: str = "max_prob") -> None:
        super().__init__()
        owner = type(self).__name__
        self.feature_name = _check_feature(owner, feature)
        if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence):
            raise ValueError(f"{owner}.thresholds={thresholds!r}: expected a list of numbers")
        if not thresholds:
            raise ValueError(f"{owner}.thresholds: expected at least one threshold, got none")
        self.thresholds: tuple[float | None, ...] = tuple(
            None if t is None else check_number(f"{owner}.thresholds[{i}]", t, 0.0, 1.0)
            for i, t in enumerate(thresholds)
        )
        self.exits_above = CONFIDENCE_FEATURES[feature]
        never = np.inf if self.exits_above else -np.inf
        self._t = np.array([never if t is None else t for t in self.thresholds], dtype=np.float64)

    def bind(self, env: Any) -> PerExitThreshold:
        """Adopt ``env``'s layout; refuses a threshold count that does not fit its exits."""
        super().bind(env)
        if len(self.thresholds) != self.num_exits - 1:
            raise ValueError(
                f"{type(self).__name__}.thresholds has {len(self.thresholds)} entries; the "
                f"environment has {self.num_exits} exits, so give {self.num_exits - 1} (the "
                "last exit always answers)"
            )
        return self

    def _level(self, obs: np.ndarray, k: np.ndarray) -> np.ndarray:
        """The threshold in force for each row (subclasses shift it)."""
        return self._t[np.minimum(k, len(self._t) - 1)]

    def confident(self, obs: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Boolean ``[n]``: the confidence feature passes the (possibly shifted) threshold."""
        value = self.feature(obs, self.feature_name).astype(np.float64)
        level = self._level(obs, k)
        return value >= level if self.exits_above else value <= level

    def decide(self, obs: np.ndarray) -> np.ndarray:
        """Exit where the feature passes its exit's threshold, and always at the last exit."""
        k = self.exit_index(obs)
        return self.confident(obs, k) | (k >= self.num_exits - 1)

    def params(self) -> dict[str, Any]:
        """The parameters as JSON-friendly values (what the benchmark records)."""
        return {"feature": self.feature_name, "thresholds": list(self.thresholds)}

    def __repr__(self) -> str:
        ts = ", ".join("never" if t is None else f"{t:.3g}" for t in self.thresholds)
        return f"{type(self).__name__}({self.feature_name}: {ts})"


@dataclass(frozen=True)
class StageTimeTable:
    """Mean time of the next stage, as a share of the deadline, per exit and resource bin.

    Learned from val rollouts (``agents.calibrate``): for every request that continued from exit
    ``k``, the increase of ``elapsed_ratio`` until exit ``k + 1``, grouped by the slowest measured
    device level and the slowest measured link level at exit ``k``.

    :param compute_edges: bin edges of the slowest device level (ascending).
    :param bandwidth_edges: bin edges of the slowest link level (ascending).
    :param ratio: ``[K - 1, len(compute_edges) + 1, len(bandwidth_edges) + 1]`` mean increase.
    """

    compute_edges: tuple[float, ...]
    bandwidth_edges: tuple[float, ...]
    ratio: np.ndarray

    def bins(self, obs: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(device bin, link bin) of each observation row."""
        c, b = slowest_levels(obs, names)
        return (
            np.searchsorted(np.asarray(self.compute_edges), c, side="right"),
            np.searchsorted(np.asarray(self.bandwidth_edges), b, side="right"),
        )

    def next_stage(self, obs: np.ndarray, k: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """Predicted share of the deadline the next stage takes (0 at the last exit)."""
        ci, bi = self.bins(obs, names)
        last = self.ratio.shape[0]
        out = self.ratio[np.minimum(k, last - 1), ci, bi]
        return np.where(k >= last, 0.0, out)


class DeadlineAware(PerExitThreshold):
    """:class:`PerExitThreshold`, and exit when continuing is predicted to miss the deadline:
    ``elapsed_ratio + guard * next_stage > 1`` (next stage from a :class:`StageTimeTable`;
    with pipelining, ``next_stage`` also holds the observed ``next_wait_ratio``).

    Why a guard and not a hard rule: missing the deadline costs a fixed penalty, a wrong early
    answer costs the correctness bonus; ``guard`` (chosen on val) trades them. Once a request is
    already late, continuing cannot make it later than late, so the guard only acts while the
    request can still make its deadline.

    :param thresholds: as :class:`PerExitThreshold`.
    :param table: next-stage times learned on val.
    :param guard: multiplier of the predicted next-stage time (>= 0; 0 turns the guard off).
    :param feature: as :class:`PerExitThreshold`.
    """

    def __init__(
        self,
        thresholds: Sequence[float | None],
        table: StageTimeTable,
        guard: float = 1.0,
        feature: str = "max_prob",
    ) -> None:
        super().__init__(thresholds, feature)
        if not isinstance(table, StageTimeTable):
            raise ValueError(f"{type(self).__name__}.table: expected a StageTimeTable")
        self.table = table
        self.guard = check_number(f"{type(self).__name__}.guard", guard, 0.0, 100.0)

    def will_miss(self, obs: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Boolean ``[n]``: on time now, late after the next stage (as predicted; after the
        observed wait for the next device too, where the observation has one: pipelining)."""
        elapsed = self.feature(obs, "elapsed_ratio").astype(np.float64)
        ahead = self.table.next_stage(obs, k, self.observation_names)
        if NEXT_WAIT in self.observation_names:
            ahead = ahead + self.feature(obs, NEXT_WAIT)
        return (elapsed <= 1.0) & (elapsed + self.guard * ahead > 1.0)

    def decide(self, obs: np.ndarray) -> np.ndarray:
        """Exit where the threshold passes or the next stage would miss the deadline."""
        k = self.exit_index(obs)
        return super().decide(obs) | self.will_miss(obs, k)

    def params(self) -> dict[str, Any]:
        """The thresholds' parameters and ``guard``."""
        return {**super().params(), "guard": self.guard}

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}; guard {self.guard:g})"


class LoadAware(DeadlineAware):
    """:class:`DeadlineAware` whose thresholds move with the load: at queue length ``q`` (the
    ``queue_len`` observation, waiting requests over queue capacity) the threshold of exit ``k``
    is ``t_k - shift * q`` for features that exit above (``t_k + shift * q`` below), so a busy
    cluster answers earlier and frees its devices for the requests waiting behind.

    :param shift: threshold change at a full queue, in [0, 1].
    :param thresholds, table, guard, feature: as :class:`DeadlineAware`.
    """

    def __init__(
        self,
        thresholds: Sequence[float | None],
        table: StageTimeTable,
        guard: float = 1.0,
        shift: float = 0.0,
        feature: str = "max_prob",
    ) -> None:
        super().__init__(thresholds, table, guard, feature)
        self.shift = check_number(f"{type(self).__name__}.shift", shift, 0.0, 1.0)

    def _level(self, obs: np.ndarray, k: np.ndarray) -> np.ndarray:
        load = self.feature(obs, "queue_len").astype(np.float64)
        sign = -1.0 if self.exits_above else 1.0
        return super()._level(obs, k) + sign * self.shift * load

    def params(self) -> dict[str, Any]:
        """:class:`DeadlineAware`'s parameters and ``shift``."""
        return {**super().params(), "shift": self.shift}

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}; shift {self.shift:g})"


# ---- the planner --------------------------------------------------------------------------------
@dataclass(frozen=True)
class StateBins:
    """How an observation becomes a discrete planner state.

    State = (exit k, confidence bin, slowest-device bin, slowest-link bin, queue bin, elapsed
    bin, next-device wait bin); each bin is ``searchsorted(edges, value, side="right")``.
    Confidence edges are per exit (quantiles of val), the others shared. The wait is
    ``next_wait_ratio`` where the observation has it (pipelining), else 0: with no
    ``wait_edges`` it is one bin and the states are those without it.
    """

    feature: str
    confidence_edges: tuple[tuple[float, ...], ...]  # one tuple per exit
    compute_edges: tuple[float, ...]
    bandwidth_edges: tuple[float, ...]
    queue_edges: tuple[float, ...]
    elapsed_edges: tuple[float, ...]
    wait_edges: tuple[float, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        """Sizes of the state's dimensions."""
        return (
            len(self.confidence_edges),
            max(len(e) for e in self.confidence_edges) + 1,
            len(self.compute_edges) + 1,
            len(self.bandwidth_edges) + 1,
            len(self.queue_edges) + 1,
            len(self.elapsed_edges) + 1,
            len(self.wait_edges) + 1,
        )

    @property
    def size(self) -> int:
        """Number of discrete states (the length of a planner's tables)."""
        return int(np.prod(self.shape))

    def codes(self, obs: np.ndarray, k: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """Flat state index of each observation row (exit ``k`` given)."""
        col = {n: i for i, n in enumerate(names)}
        value = obs[:, col[self.feature]]
        conf = np.zeros(len(obs), dtype=np.int64)
        for kk, edges in enumerate(self.confidence_edges):
            rows = k == kk
            if rows.any():
                conf[rows] = np.searchsorted(np.asarray(edges), value[rows], side="right")
        c, b = slowest_levels(obs, names)
        q, e = obs[:, col["queue_len"]], obs[:, col["elapsed_ratio"]]
        w = obs[:, col[NEXT_WAIT]] if NEXT_WAIT in col else np.zeros(len(obs), obs.dtype)
        parts = (
            np.minimum(k, len(self.confidence_edges) - 1),
            conf,
            np.searchsorted(np.asarray(self.compute_edges), c, side="right"),
            np.searchsorted(np.asarray(self.bandwidth_edges), b, side="right"),
            np.searchsorted(np.asarray(self.queue_edges), q, side="right"),
            np.searchsorted(np.asarray(self.elapsed_edges), e, side="right"),
            np.searchsorted(np.asarray(self.wait_edges), w, side="right"),
        )
        return np.ravel_multi_index(parts, self.shape).astype(np.int64)

    def coarse(self, codes: np.ndarray) -> np.ndarray:
        """The (exit, confidence bin) part of flat states: the back-off group of rare states."""
        k, conf = np.unravel_index(codes, self.shape)[:2]
        return (k * self.shape[1] + conf).astype(np.int64)


def solve_planner(
    reward: np.ndarray,
    transition: np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray],
    ends_request: np.ndarray,
    discount: float = 0.95,
    successors_of: np.ndarray | None = None,
    tol: float = 1e-9,
    max_iter: int = 100_000,
) -> np.ndarray:
    """Action values of a finite model by value iteration.

    ``Q[s, a] = reward[s, a] + g(a) * sum_s' transition[s, a, s'] * max_a' Q[s', a']`` with
    ``g = discount`` for actions that end a request (``ends_request[s, a]``) and 1 inside a
    request: the objective is reward per request (what ``evaluate`` reports), discounted over
    requests only, so answering early is not favoured just because it takes fewer steps.
    Within a request this is backward induction over the exits; across requests it carries the
    effect of a decision on the queue. A row of ``transition`` may sum to less than 1 (the
    rest: no known successor, value 0).

    :param reward: ``[S, A]`` expected immediate reward.
    :param transition: ``[S, A, S]`` successor probabilities, or sparse triplets
        ``(rows, next_states, probabilities)`` over successor distributions numbered by row
        (``row = s * A + a`` unless ``successors_of`` says otherwise).
    :param ends_request: ``[S, A]`` booleans.
    :param discount: per-request discount in [0, 1).
    :param successors_of: ``[S * A]`` the row of each (state, action)'s successor distribution
        (several pairs may share one, e.g. rare pairs their group's); default: its own.
    :returns: ``[S, A]`` action values.
    """
    discount = check_number("solve_planner.discount", discount, 0.0, 0.9999)
    n_s, n_a = reward.shape
    if isinstance(transition, np.ndarray):
        s, a, nxt = np.nonzero(transition)
        rows, cols, probs = s * n_a + a, nxt, transition[s, a, nxt]
    else:
        rows, cols, probs = transition
    if successors_of is None:
        successors_of = np.arange(n_s * n_a)
    n_rows = max(int(successors_of.max()) + 1, int(rows.max()) + 1 if len(rows) else 0)
    g = np.where(ends_request, discount, 1.0).reshape(-1)
    r = reward.astype(np.float64).reshape(-1)
    q = r.copy()
    for _ in range(max_iter):
        v = q.reshape(n_s, n_a).max(axis=1)
        expected = np.bincount(rows, weights=probs * v[cols], minlength=n_rows)
        new = r + g * expected[successors_of]
        if np.max(np.abs(new - q)) < tol:
            q = new
            break
        q = new
    return q.reshape(n_s, n_a)


class Planner(RulePolicy):
    """Model-based exit policy: the best action of each discrete state from a solved model.

    ``exit_table[s]`` says whether to exit in state ``s`` (see :class:`StateBins`); states
    not ``seen`` on val use ``fallback[(exit, confidence bin)]``, the visit-weighted majority of
    the seen states in their group. Built by ``agents.calibration.fit_planner``.

    :param bins: the state discretisation.
    :param exit_table: ``[bins.size]`` booleans.
    :param fallback: ``[K * confidence bins]`` booleans.
    :param seen: ``[bins.size]`` booleans (default: every state).
    """

    def __init__(
        self,
        bins: StateBins,
        exit_table: np.ndarray,
        fallback: np.ndarray,
        seen: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(bins, StateBins):
            raise ValueError("Planner.bins: expected a StateBins")
        exit_table = np.asarray(exit_table, dtype=bool)
        fallback = np.asarray(fallback, dtype=bool)
        if exit_table.shape != (bins.size,):
            raise ValueError(
                f"Planner.exit_table has shape {exit_table.shape}, expected ({bins.size},)"
            )
        if fallback.shape != (bins.shape[0] * bins.shape[1],):
            raise ValueError(
                f"Planner.fallback has shape {fallback.shape}, expected "
                f"({bins.shape[0] * bins.shape[1]},)"
            )
        self.bins = bins
        self.exit_table = exit_table
        self.fallback = fallback
        self.seen = np.ones(bins.size, dtype=bool) if seen is None else np.asarray(seen, dtype=bool)
        if self.seen.shape != (bins.size,):
            raise ValueError(f"Planner.seen has shape {self.seen.shape}, expected ({bins.size},)")

    def decide(self, obs: np.ndarray) -> np.ndarray:
        """Look each row's state up in the solved table (fallback for unseen states)."""
        k = self.exit_index(obs)
        codes = self.bins.codes(obs, k, self.observation_names)
        act = np.where(
            self.seen[codes], self.exit_table[codes], self.fallback[self.bins.coarse(codes)]
        )
        return act | (k >= self.num_exits - 1)

    def __repr__(self) -> str:
        return f"Planner({self.bins.feature}, {self.bins.size} states)"
