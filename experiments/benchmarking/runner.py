"""Run the benchmark: calibrate on val, then evaluate every policy on val and test per seed.

Every evaluation goes through ``agents.evaluate``, per scenario and seed.

Why one path: the table must hold exactly what ``agents.evaluate`` returns for the same seed, so
the runner adds nothing but bookkeeping. Every policy sees the same seeds, hence the same requests,
arrivals and resource traces (common random numbers): differences between policies are paired.

Two splits: ``val`` (the val exit trace, the training arrival/link traces and the seeds 0 to
N-1; the baselines are calibrated on the same traces with seeds of their own,
``agents.splits.calibration_seeds``, so that their val figures are out of sample as the agents'
are) is where every choice is made, ``test`` (the test exit trace, the held-out arrival/link
traces and the held-out seeds of ``agents.splits.held_out_seeds``, so that Poisson and MMPP
arrivals and resource paths are held out too) gives every reported number.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.baselines import CONFIDENCE_FEATURES
from agents.calibration import BaselineFit, calibrate_baselines, objective
from agents.evaluation import evaluate
from agents.splits import calibration_seeds, held_out_seeds, on_split
from distree_env.config import EnvConfig
from distree_env.traces import resolve_trace
from experiments.benchmarking.analysis import METRICS, TOLERANCE, best_agent_on_val, summarize
from experiments.benchmarking.policies import (
    AgentFile,
    PolicySpec,
    baseline_specs,
    learned_specs,
    reference_specs,
    rule_specs,
)

__all__ = [
    "BenchmarkPlan",
    "CalibrationSizes",
    "best_draws",
    "choose_on_val",
    "evaluate_point",
    "measure_on_test",
    "run_benchmark",
    "run_scenario",
    "split_configs",
]

Progress = Callable[[str], None]
#: How often a worker checks that the benchmark process is still there (seconds).
_WATCH_S = 1.0


@dataclass(frozen=True)
class CalibrationSizes:
    """Sizes of the val calibration of the baselines (see ``agents.calibrate_baselines``); the
    defaults are the full benchmark's."""

    n_requests: int = 2048
    points: int = 8
    rounds: int = 2
    data_steps: int = 32_768
    features: Sequence[str] = tuple(CONFIDENCE_FEATURES)
    #: Calibrations per scenario, each with a seed of its own (its exploring data, confidence
    #: feature and descent start); every baseline keeps the draw best on the val seeds.
    draws: int = 3


@dataclass(frozen=True)
class BenchmarkPlan:
    """What to run: scenarios, the val seeds (test takes as many held-out ones), requests per
    evaluation, the base config, the exit traces of each split, rule grid size, calibration
    sizes, the learned agents (loaded with ``trust`` as the benchmark was asked), the
    requests each stream answers before an evaluation counts (``warmup``)."""

    scenarios: tuple[str, ...]
    seeds: tuple[int, ...]
    n_requests: int
    config: EnvConfig
    test_trace: str
    val_trace: str
    thresholds: int
    calibration: CalibrationSizes
    agents: tuple[AgentFile, ...] = ()
    trust: bool = False
    warmup: int = 0

    def calibration_seeds(self) -> tuple[int, ...]:
        """The seeds the baselines are calibrated on, as many as :attr:`seeds` and apart from
        them (out of sample on val, as the agents are)."""
        return calibration_seeds(len(self.seeds))

    def calibration_draws(self) -> tuple[int, ...]:
        """The seeds of the calibration draws: the first calibration seeds, as many as
        ``calibration.draws``."""
        return calibration_seeds(self.calibration.draws)

    def split_seeds(self, split: str) -> tuple[int, ...]:
        """The seeds of ``split``: :attr:`seeds` on val, as many held-out seeds on test."""
        return self.seeds if split == "val" else held_out_seeds(len(self.seeds))


def split_configs(plan: BenchmarkPlan, scenario: str) -> dict[str, EnvConfig]:
    """``{"val": ..., "test": ...}``: the scenario on each split's exit trace, and a scenario
    that replays link or arrival traces (``cellular``, ``azure-code``) on that split's traces:
    training traces on val, held-out ones on test."""
    base = plan.config.with_scenario(scenario)
    return {
        split: on_split(base, split, trace)
        for split, trace in (("val", plan.val_trace), ("test", plan.test_trace))
    }


def evaluate_point(
    spec: PolicySpec,
    split: str,
    config: EnvConfig,
    scenario: str,
    seed: int,
    n_requests: int,
    warmup: int = 0,
) -> dict[str, Any]:
    """One row: ``agents.evaluate`` of ``spec`` on ``config`` with ``seed`` (every policy meets
    the same streams on a seed: ``evaluate``'s independent streams)."""
    metrics = evaluate(spec.build(), config, n_requests=n_requests, seed=seed, warmup=warmup)
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


def _load(trust: bool) -> Callable[[str], Any]:
    def load(ref: str) -> Any:
        import torch

        from agents import load_agent

        torch.set_num_threads(1)  # small forward passes; the machine is shared
        return load_agent(ref, trust=trust)

    return load


def calibrate_scenario(
    plan: BenchmarkPlan,
    configs: dict[str, EnvConfig],
    target_accuracy: float | None,
    seed: int,
) -> dict[str, BaselineFit]:
    """The baselines of one scenario, calibrated on val with one draw's ``seed``; the
    calibration seeds are where ``LoadAware[accuracy]`` matches ``target_accuracy``.

    :param target_accuracy: the best agent's accuracy on the calibration seeds
        (:func:`calibration_accuracy`), where the load-aware rule gets a point of its own
        (``LoadAware[accuracy]``) for the equal-accuracy deadline comparison.
    :param seed: the calibration's draw (its exploring data and paired evaluations), one of
        :meth:`BenchmarkPlan.calibration_draws`.
    """
    c = plan.calibration
    seeds = plan.calibration_seeds()
    return calibrate_baselines(
        configs["val"],
        n_requests=c.n_requests,
        seed=seed,
        points=c.points,
        rounds=c.rounds,
        data_steps=c.data_steps,
        features=c.features,
        target_accuracy=target_accuracy,
        accuracy_tolerance=TOLERANCE,
        target_seeds=seeds,
        warmup=plan.warmup,
    )


def scenario_specs(plan: BenchmarkPlan, fits: dict[str, BaselineFit]) -> list[PolicySpec]:
    """Specs of one scenario but its agents: references, rules on the val grid, and the
    baselines ``fits`` calibrated on val."""
    return [
        *reference_specs(),
        *rule_specs(resolve_trace(plan.val_trace), plan.thresholds),
        *baseline_specs(fits),
    ]


def _rows(
    plan: BenchmarkPlan, scenario: str, specs: list[PolicySpec], split: str, config: EnvConfig
) -> list[dict[str, Any]]:
    """Every spec on ``split`` with every seed of that split."""
    return [
        evaluate_point(
            spec,
            split,
            config,
            scenario,
            seed,
            plan.n_requests,
            plan.warmup,
        )
        for spec in specs
        for seed in plan.split_seeds(split)
    ]


def _learned(plan: BenchmarkPlan, scenario: str) -> list[PolicySpec]:
    """The agents evaluated on ``scenario``: its own and those of no scenario."""
    agents = [a for a in plan.agents if a.scenario in (None, scenario)]
    return learned_specs(agents, _load(plan.trust))


def calibration_accuracy(plan: BenchmarkPlan, spec: PolicySpec, config: EnvConfig) -> float:
    """``spec``'s mean accuracy on the streams ``LoadAware[accuracy]`` is matched on: the
    calibration seeds, with the calibration's requests and the plan's warm-up. Why not its val
    accuracy: equal accuracy is measured on the same streams; under bursts a policy's accuracy
    moves with the bursts a seed brings (PPO in ``bursty-stream``: 80.1% on the val seeds, 80.9%
    on the calibration seeds), by more than the half point that counts as equal."""
    c = plan.calibration
    runs = [
        evaluate(spec.build(), config, c.n_requests, seed=s, warmup=plan.warmup)
        for s in plan.calibration_seeds()
    ]
    return float(np.mean([r["accuracy"] for r in runs]))


def best_draws(
    draws: Sequence[dict[str, BaselineFit]],
    val_rows: Callable[[dict[str, BaselineFit]], list[dict[str, Any]]],
    last_exit_accuracy: float,
    target_accuracy: float | None,
) -> tuple[dict[str, BaselineFit], list[dict[str, Any]], dict[str, dict[int, float]]]:
    """Per baseline, the draw whose fit scores best on val by what it was fitted for
    (``agents.calibration.objective``, on its mean over the val seeds; ``[accuracy]`` at the
    best agent's val accuracy, where the deadline comparison looks for it; the first draw on a
    tie). Returns the chosen fits, their val rows, and per baseline the mean val reward of each
    draw, keyed by the draw's seed (the record shows how much the draw mattered)."""
    options: dict[str, list[tuple[tuple, BaselineFit, list[dict[str, Any]]]]] = {}
    record: dict[str, dict[int, float]] = {}
    for fits in draws:
        rows = val_rows(fits)
        means = {r["policy"]: r for r in summarize(rows)}
        for name, fit in fits.items():
            key = objective(
                name, means[name], last_exit_accuracy, target_accuracy, accuracy_tolerance=TOLERANCE
            )
            mine = [r for r in rows if r["policy"] == name]
            options.setdefault(name, []).append((key, fit, mine))
            record.setdefault(name, {})[fit.seed] = means[name]["mean_reward"]
    # max() keeps the first of equal keys: the earlier draw on a tie
    chosen = {name: max(found, key=lambda option: option[0]) for name, found in options.items()}
    return (
        {name: fit for name, (_, fit, _) in chosen.items()},
        [row for _, _, rows in chosen.values() for row in rows],
        record,
    )


def choose_on_val(
    plan: BenchmarkPlan, scenario: str
) -> tuple[list[dict[str, Any]], dict[str, BaselineFit], dict[str, dict[int, float]]]:
    """The val half of a scenario: the agents on val first (the best one's accuracy on the
    calibration seeds is where the load-aware rule is also calibrated), then the references
    and rules, then the baselines of every calibration draw on val and :func:`best_draws`.
    Returns the val rows, the calibrated baselines chosen and the draws' val rewards."""
    configs = split_configs(plan, scenario)
    val = configs["val"]
    learned = _learned(plan, scenario)
    learned_val = _rows(plan, scenario, learned, "val", val)
    best = best_agent_on_val(summarize(learned_val))
    target = None
    if best is not None:
        spec = next(s for s in learned if s.name == best["policy"])
        target = calibration_accuracy(plan, spec, val)
    fixed = [*reference_specs(), *rule_specs(resolve_trace(plan.val_trace), plan.thresholds)]
    fixed_val = _rows(plan, scenario, fixed, "val", val)
    last = next((r for r in summarize(fixed_val) if r["family"] == "LastExit"), None)
    draws = [calibrate_scenario(plan, configs, target, seed) for seed in plan.calibration_draws()]
    fits, baseline_val, record = best_draws(
        draws,
        lambda fits: _rows(plan, scenario, baseline_specs(fits), "val", val),
        math.nan if last is None else last["accuracy"],
        None if best is None else best["accuracy"],
    )
    return fixed_val + baseline_val + learned_val, fits, record


def measure_on_test(
    plan: BenchmarkPlan, scenario: str, fits: dict[str, BaselineFit]
) -> list[dict[str, Any]]:
    """The test half of a scenario: every spec (``fits`` as calibrated on val) and every agent
    on test."""
    test = split_configs(plan, scenario)["test"]
    specs = scenario_specs(plan, fits) + _learned(plan, scenario)
    return _rows(plan, scenario, specs, "test", test)


def calibrated_params(
    fits: dict[str, BaselineFit], draws: dict[str, dict[int, float]]
) -> dict[str, Any]:
    """The calibrated baselines as the JSON record keeps them: the policy, its reward in its
    own calibration, its draw, and every draw's mean reward on the val seeds."""
    return {
        name: {
            "repr": repr(fit.policy),
            "calibration_reward": fit.val["mean_reward"],
            "draw": fit.seed,
            "val_reward_by_draw": {str(seed): r for seed, r in draws.get(name, {}).items()},
        }
        for name, fit in fits.items()
    }


def run_scenario(plan: BenchmarkPlan, scenario: str) -> tuple[list[dict[str, Any]], dict]:
    """For one scenario: :func:`choose_on_val`, then :func:`measure_on_test`; returns the rows
    and the calibrated parameters."""
    val_rows, fits, draws = choose_on_val(plan, scenario)
    return val_rows + measure_on_test(plan, scenario, fits), calibrated_params(fits, draws)


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: end the worker once the benchmark process ``parent`` is gone (killed,
    say), instead of finishing a scenario for nobody. Ctrl-C reaches the whole process group:
    the benchmark process handles it (one line) and ends the workers, which ignore it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_WATCH_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _run_parallel(
    plan: BenchmarkPlan, jobs: int, done: Callable[[str, tuple[list, dict]], None]
) -> None:
    """Every scenario in worker processes, in two tasks each (its val half, then its test half
    once the val half is done), so that the workers stay busy to the end instead of one of
    them finishing the last scenario alone."""
    context = multiprocessing.get_context("spawn")  # no forked torch or thread state
    with ProcessPoolExecutor(
        min(jobs, len(plan.scenarios)),
        mp_context=context,
        initializer=_exit_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        try:
            _collect(plan, pool, done)
        except BaseException:  # Ctrl-C, SIGTERM: end the workers now, not after their scenario
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()  # (no public way before Python 3.14's terminate_workers)
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _collect(
    plan: BenchmarkPlan, pool: ProcessPoolExecutor, finish: Callable[[str, tuple[list, dict]], None]
) -> None:
    """Submit each scenario's val half, then its test half once the val half is done; ``finish``
    gets each scenario's result as it finishes."""
    pending = {pool.submit(choose_on_val, plan, s): ("val", s) for s in plan.scenarios}
    val: dict[str, tuple[list[dict[str, Any]], dict[str, BaselineFit], dict]] = {}
    while pending:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            half, scenario = pending.pop(future)
            if half == "val":
                val[scenario] = future.result()
                fits = val[scenario][1]
                pending[pool.submit(measure_on_test, plan, scenario, fits)] = ("test", scenario)
            else:
                rows, fits, draws = val[scenario]
                finish(scenario, (rows + future.result(), calibrated_params(fits, draws)))


def run_benchmark(
    plan: BenchmarkPlan,
    jobs: int = 1,
    progress: Progress | None = None,
    finished: dict[str, tuple[list, dict]] | None = None,
    on_finished: Callable[[str, tuple[list, dict]], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every scenario (``jobs`` at once, in worker processes), rows in scenario order whatever
    the order they finish in; returns the rows and the calibrated baselines per scenario.

    :param finished: scenarios already done (a resumed run's): their results are taken as they
        are, the others computed.
    :param on_finished: called with each scenario computed here and its result, as it finishes.
    """
    tick = progress or (lambda _label: None)
    results: dict[str, tuple[list, dict]] = dict(finished or {})
    for scenario in results:
        tick(scenario)

    def done(scenario: str, result: tuple[list, dict]) -> None:
        results[scenario] = result
        if on_finished is not None:
            on_finished(scenario, result)
        tick(scenario)

    todo = dataclasses.replace(plan, scenarios=tuple(s for s in plan.scenarios if s not in results))
    if jobs <= 1 or len(todo.scenarios) <= 1:
        for scenario in todo.scenarios:
            done(scenario, run_scenario(todo, scenario))
    elif todo.scenarios:
        _run_parallel(todo, jobs, done)
    rows = [row for s in plan.scenarios for row in results[s][0]]
    return rows, {s: results[s][1] for s in plan.scenarios}
