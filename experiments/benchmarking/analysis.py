"""Seeds to mean and spread, Pareto fronts, and the headline figures of the benchmark.

Why separate from the runner: these are pure functions of the result rows, so they are tested
on hand-made rows and can be re-run on a saved CSV without evaluating anything again.

The headline questions (issue 5): at accuracy within ``tolerance`` of last-exit, how much compute
and latency do the best rule and the learned agent save; what share of requests meets the
deadline; and is the learned agent ahead of every rule on the accuracy-latency front (at its
accuracy, does every rule's curve need a higher mean latency)?
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from agents.evaluate import METRICS
from experiments.benchmarking.policies import LEARNED as LEARNED_KIND
from experiments.benchmarking.policies import RULE as RULE_KIND

__all__ = [
    "METRICS",
    "TOLERANCE",
    "cost_at_accuracy",
    "front_comparison",
    "headline",
    "pareto_front",
    "select_point",
    "split_rows",
    "summarize",
    "table_rows",
]

#: Columns that identify a point (everything but the seed).
KEY = ("split", "scenario", "family", "kind", "policy", "param")
#: "Comparable accuracy": at most half a point below last-exit, as a fraction.
TOLERANCE = 0.005

Row = dict[str, Any]


def _exit_columns(rows: Iterable[Row]) -> list[str]:
    cols: dict[str, None] = {}
    for row in rows:
        cols.update((c, None) for c in row if c.startswith("exit_"))
    return sorted(cols, key=lambda c: int(c.split("_")[1]))


def summarize(rows: Sequence[Row]) -> list[Row]:
    """One row per point: mean of every metric over seeds (``<metric>``), its sample standard
    deviation (``<metric>_std``), ``seeds``, and ``latency_saving`` against the scenario's
    ``LastExit`` of the same split (1 - mean latency / last-exit mean latency), in first-seen
    order."""
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in KEY), []).append(row)
    exits = _exit_columns(rows)
    out: list[Row] = []
    for key, members in groups.items():
        summary: Row = dict(zip(KEY, key, strict=True))
        summary["seeds"] = len(members)
        for metric in (*METRICS, *exits):
            values = np.array([m.get(metric, 0.0) for m in members], dtype=np.float64)
            summary[metric] = float(values.mean())
            summary[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out.append(summary)
    last = {
        (r["split"], r["scenario"]): r["latency_mean_ms"] for r in out if r["family"] == "LastExit"
    }
    for r in out:
        ref = last.get((r["split"], r["scenario"]))
        r["latency_saving"] = 1.0 - r["latency_mean_ms"] / ref if ref else math.nan
    return out


def pareto_front(rows: Sequence[Row], cost: str = "latency_mean_ms") -> list[Row]:
    """Points no other point beats on both accuracy (higher) and ``cost`` (lower), sorted by
    accuracy (and so by cost) ascending."""
    front: list[Row] = []
    for row in sorted(rows, key=lambda r: (r[cost], -r["accuracy"])):
        if not front or row["accuracy"] > front[-1]["accuracy"]:
            front.append(row)
    return front


def cost_at_accuracy(front: Sequence[Row], accuracy: float, cost: str = "latency_mean_ms") -> float:
    """The ``cost`` a curve needs to reach ``accuracy``: linear between its front points (mixing
    two thresholds gets exactly that), its cheapest point's cost below its range, ``inf`` above."""
    if not front or accuracy > front[-1]["accuracy"]:
        return math.inf
    if accuracy <= front[0]["accuracy"]:
        return float(front[0][cost])
    for lo, hi in zip(front, front[1:], strict=False):
        if lo["accuracy"] < accuracy <= hi["accuracy"]:
            w = (accuracy - lo["accuracy"]) / (hi["accuracy"] - lo["accuracy"])
            return float(lo[cost] + w * (hi[cost] - lo[cost]))
    return float(front[-1][cost])  # pragma: no cover (accuracy == front[-1] handled above)


def _last_exit(rows: Sequence[Row]) -> Row | None:
    return next((r for r in rows if r["family"] == "LastExit"), None)


def split_rows(summary: Sequence[Row], split: str, scenario: str) -> list[Row]:
    """The summary rows of one split (``test`` reports, ``val`` selects) and scenario."""
    return [r for r in summary if r["split"] == split and r["scenario"] == scenario]


def _best(rows: Sequence[Row], members: Sequence[Row], metric: str, tolerance: float) -> Row | None:
    last = _last_exit(rows)
    if last is None:
        return None
    floor = last["accuracy"] - tolerance - 1e-12
    return max(
        (r for r in members if r["accuracy"] >= floor), key=lambda r: r[metric], default=None
    )


def select_point(
    summary: Sequence[Row],
    scenario: str,
    metric: str,
    *,
    kind: str | None = None,
    family: str | None = None,
    tolerance: float = TOLERANCE,
) -> Row | None:
    """The test row of the ``kind`` (or ``family``) point with the largest ``metric`` among
    those within ``tolerance`` of last-exit accuracy, chosen on the ``val`` split (on ``test``
    only when no val rows were run): operating points are never tuned on the test trace."""
    test = split_rows(summary, "test", scenario)
    choose = split_rows(summary, "val", scenario) or test
    members = [
        r
        for r in choose
        if (kind is None or r["kind"] == kind) and (family is None or r["family"] == family)
    ]
    choice = _best(choose, members, metric, tolerance)
    if choice is None:
        return None
    return next((r for r in test if r["policy"] == choice["policy"]), None)


def _versus_rules(agent: Row, fronts: dict[str, list[Row]]) -> dict[str, Any]:
    """One learned point against every rule curve at the point's accuracy."""
    need = {f: cost_at_accuracy(fr, agent["accuracy"]) for f, fr in fronts.items()}
    lat = agent["latency_mean_ms"]
    finite = {f: v for f, v in need.items() if math.isfinite(v)}
    closest = min(finite, key=finite.get, default=None)
    worst = 1.0 - lat / finite[closest] if closest is not None else math.inf
    return {
        "policy": agent["policy"],
        "accuracy": agent["accuracy"],
        "latency_mean_ms": lat,
        "latency_mean_ms_std": agent["latency_mean_ms_std"],
        "qos_rate": agent["qos_rate"],
        "rules_latency_ms": {f: (v if math.isfinite(v) else None) for f, v in need.items()},
        "closest_rule": closest,
        "margin_ms": None if closest is None else finite[closest] - lat,
        "worst_margin": worst,
        "ahead": bool(worst > 0),
    }


def front_comparison(summary: Sequence[Row]) -> dict[str, Any] | None:
    """Is a learned point ahead of every rule curve at its own accuracy (a lower mean latency
    than each rule's front needs there)? Returns the learned point with the largest worst-case
    relative margin: each rule family's latency at that accuracy (None where the rule cannot
    reach it), the closest rule, the margin (ms and relative) and ``ahead``; ``points`` holds
    the same for every learned point. None without learned points."""
    families: dict[str, list[Row]] = {}
    for r in summary:
        if r["kind"] == RULE_KIND:
            families.setdefault(r["family"], []).append(r)
    fronts = {f: pareto_front(rows) for f, rows in families.items()}
    points = [_versus_rules(r, fronts) for r in summary if r["kind"] == LEARNED_KIND]
    if not points:
        return None
    best = dict(max(points, key=lambda p: p["worst_margin"]))
    best["points"] = points
    return best


def _brief(row: Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    keys = (
        "policy",
        "family",
        "accuracy",
        "accuracy_std",
        "compute_saving",
        "latency_saving",
        "latency_mean_ms",
        "latency_mean_ms_std",
        "qos_rate",
    )
    return {k: row[k] for k in keys}


def headline(summary: Sequence[Row], scenario: str, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """The headline figures of one scenario on the test split, JSON-friendly (module docstring)."""
    rows = split_rows(summary, "test", scenario)
    learned = [r for r in rows if r["kind"] == LEARNED_KIND]
    most_accurate = max(learned, key=lambda r: r["accuracy"], default=None)
    metrics = ("compute_saving", "latency_saving")
    return {
        "scenario": scenario,
        "tolerance_points": 100 * tolerance,
        "selected_on": "val" if split_rows(summary, "val", scenario) else "test",
        "last_exit": _brief(_last_exit(rows)),
        "oracle": _brief(next((r for r in rows if r["family"] == "Oracle"), None)),
        "best_rule": {
            m: _brief(select_point(summary, scenario, m, kind=RULE_KIND, tolerance=tolerance))
            for m in metrics
        },
        "learned": {
            m: _brief(select_point(summary, scenario, m, kind=LEARNED_KIND, tolerance=tolerance))
            for m in metrics
        },
        "learned_most_accurate": _brief(most_accurate),
        "front": front_comparison(rows),
    }


def table_rows(summary: Sequence[Row], scenario: str, tolerance: float = TOLERANCE) -> list[Row]:
    """The test rows a reader needs for one scenario: last-exit, each rule family at its
    cheapest point within ``tolerance`` of last-exit accuracy (chosen as in
    :func:`select_point`; its most accurate point if none is), every learned agent, the matched
    random exits, and the Oracle."""
    rows = split_rows(summary, "test", scenario)
    last = _last_exit(rows)
    picked: list[Row] = [last] if last is not None else []
    for family in dict.fromkeys(r["family"] for r in rows if r["kind"] == RULE_KIND):
        point = select_point(
            summary, scenario, "compute_saving", family=family, tolerance=tolerance
        )
        if point is None:
            point = max((r for r in rows if r["family"] == family), key=lambda r: r["accuracy"])
        picked.append(point)
    picked += [r for r in rows if r["kind"] == LEARNED_KIND]
    picked += [r for r in rows if r["family"] == "RandomExit"]
    picked += [r for r in rows if r["family"] == "Oracle"]
    return picked
