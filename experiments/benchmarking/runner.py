"""Evaluate every policy spec on every scenario and seed through ``agents.evaluate``.

Why one path: the table must hold exactly what ``agents.evaluate`` returns for the same seed, so
the runner adds nothing but bookkeeping. Every policy sees the same seeds, hence the same requests
and resource traces (common random numbers): differences between policies are paired.

Two splits: ``test`` gives every reported number; ``val`` (optional) is only used to choose
operating points (which threshold, which latency weight), so nothing is tuned on ``test``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.evaluate import evaluate
from distree_env.config import EnvConfig
from distree_env.trace import resolve_trace
from experiments.benchmarking.analysis import METRICS, select_point, split_rows, summarize
from experiments.benchmarking.policies import LEARNED, RULE, PolicySpec, matched_random_spec

__all__ = ["BenchmarkPlan", "evaluate_point", "run_benchmark"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchmarkPlan:
    """What to run: policies, scenarios, seeds, requests per evaluation, the base config and
    the traces of each split (``val_trace`` None: operating points are chosen on test)."""

    specs: tuple[PolicySpec, ...]
    scenarios: tuple[str, ...]
    seeds: tuple[int, ...]
    n_requests: int
    config: EnvConfig
    test_trace: str
    val_trace: str | None

    def splits(self) -> tuple[tuple[str, str], ...]:
        """``(split, trace)`` pairs to run, val first."""
        val = () if self.val_trace is None else (("val", self.val_trace),)
        return (*val, ("test", self.test_trace))

    def tasks(self) -> int:
        """Evaluations the plan needs, matched random exits included (for the progress bar)."""
        learned = [spec.param for spec in self.specs if spec.kind == LEARNED]
        shipped = sum(p == self.config.reward.latency_weight for p in learned)
        per_scenario = len(self.specs) * len(self.splits()) + (shipped or len(learned) or 1)
        return per_scenario * len(self.scenarios) * len(self.seeds)


def evaluate_point(
    spec: PolicySpec, split: str, config: EnvConfig, scenario: str, seed: int, n_requests: int
) -> dict[str, Any]:
    """One row: ``agents.evaluate`` of ``spec`` on ``config`` under ``scenario`` with ``seed``."""
    metrics = evaluate(
        spec.build(), config.with_scenario(scenario), n_requests=n_requests, seed=seed
    )
    row: dict[str, Any] = {
        "split": split,
        "scenario": scenario,
        "family": spec.family,
        "kind": spec.kind,
        "policy": spec.name,
        "param": spec.param,
        "seed": seed,
    }
    row.update({m: float(metrics[m]) for m in METRICS})
    for k, share in enumerate(np.asarray(metrics["exit_fractions"], dtype=np.float64)):
        row[f"exit_{k}"] = float(share)
    return row


def _random_targets(
    rows: list[dict[str, Any]], scenario: str, latency_weight: float
) -> list[tuple[str, float]]:
    """Policies whose compute the matched ``RandomExit`` copies: the learned agents trained at
    the benchmark's latency weight (the shipped ones; every learned agent if none is), or
    without agents the rule chosen as the cheapest within 0.5 points of last-exit accuracy."""
    summary = summarize(rows)
    test = split_rows(summary, "test", scenario)
    learned = [r for r in test if r["kind"] == LEARNED]
    shipped = [r for r in learned if r["param"] == latency_weight] or learned
    if shipped:
        return [(r["policy"], r["compute_saving"]) for r in shipped]
    best = select_point(summary, scenario, "compute_saving", kind=RULE)
    return [(best["policy"], best["compute_saving"])] if best is not None else []


def run_benchmark(plan: BenchmarkPlan, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Every spec on every split, scenario and seed, then (on test) ``RandomExit`` matched to
    each learned agent's mean compute saving in that scenario."""
    tick = progress or (lambda _label: None)
    rows: list[dict[str, Any]] = []
    test_config = plan.config.replace(trace=plan.test_trace)
    for scenario in plan.scenarios:
        for split, trace in plan.splits():
            config = plan.config.replace(trace=trace)
            for spec in plan.specs:
                for seed in plan.seeds:
                    rows.append(
                        evaluate_point(spec, split, config, scenario, seed, plan.n_requests)
                    )
                    tick(f"{split} {scenario} {spec.name}")
        flops = resolve_trace(plan.test_trace)
        for target, saving in _random_targets(rows, scenario, plan.config.reward.latency_weight):
            spec = matched_random_spec(target, saving, flops)
            for seed in plan.seeds:
                rows.append(
                    evaluate_point(spec, "test", test_config, scenario, seed, plan.n_requests)
                )
                tick(f"test {scenario} {spec.name}")
    return rows
