"""How much does the best calibrated baseline depend on its calibration draw? Measured.

    python -m experiments.calibration_spread --scenarios bursty-stream steady-stream --seeds 3

The benchmark calibrates the baselines (``runner.calibrate_scenario``) once per scenario, on the
first calibration seed: its exploring data, its grids and its paired evaluations all come from
that seed. This script repeats the calibration with ``--seeds`` calibration seeds
(``agents.splits.calibration_seeds``; the first is the benchmark's), with the full benchmark's
sizes and warm-up, chooses the best of each draw's calibrated baselines on the val seeds and
measures it on the held-out split (test exit, link and arrival traces, held-out seeds). The
spread of those test rewards is how much stronger (or weaker) "the best baseline" an agent is
compared with could have come out. Only the calibrated baselines are compared: the classic rules
the benchmark also weighs do not depend on the draw. ``LoadAware[accuracy]`` is left out: it
needs an agent's accuracy to aim at.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

import numpy as np

from distree_env.config import SCENARIOS
from experiments.cli import MAX_JOBS, MAX_REQUESTS, one_line_errors, parse_args, require_int

#: Most calibration draws one run takes (each is a full calibration).
MAX_DRAWS = 16
#: Most val (and test) seeds an evaluation averages over.
MAX_EVAL_SEEDS = 64


@dataclass(frozen=True)
class Args:
    """Calibrate the baselines with several calibration seeds and measure the best on test."""

    scenarios: tuple[str, ...] = field(
        default=("bursty-stream", "steady-stream", "azure-code"), metadata={"help": "scenarios"}
    )
    seeds: int = field(default=3, metadata={"help": "calibration seeds (draws) per scenario"})
    eval_seeds: int = field(default=5, metadata={"help": "val seeds (and as many test seeds)"})
    requests: int = field(default=4096, metadata={"help": "requests per evaluation"})
    trace: str = field(default="cifar10-val", metadata={"help": "the val exit trace"})
    quick: bool = field(
        default=False, metadata={"help": "the benchmark's --quick calibration sizes (tests)"}
    )
    jobs: int = field(default=2, metadata={"help": "calibrations at once (processes)"})
    out: str = field(default="", metadata={"help": "also write the rows here (JSON)"})

    def __post_init__(self) -> None:
        for s in self.scenarios:
            if s not in SCENARIOS:
                raise ValueError(f"--scenarios {s!r} is not allowed: one of {', '.join(SCENARIOS)}")
        if len(set(self.scenarios)) < len(self.scenarios):
            raise ValueError(f"--scenarios {' '.join(self.scenarios)}: each at most once")
        require_int("seeds", self.seeds, 1, MAX_DRAWS)
        require_int("eval_seeds", self.eval_seeds, 1, MAX_EVAL_SEEDS)
        require_int("requests", self.requests, 1, MAX_REQUESTS)
        require_int("jobs", self.jobs, 1, MAX_JOBS)
        from agents.splits import held_out_trace, is_test_name
        from distree_env.io import require_output_file
        from distree_env.traces import resolve_trace

        if self.out:
            require_output_file(self.out, "--out")
        if is_test_name(self.trace):
            raise ValueError(f"--trace {self.trace!r} is not allowed: a val trace (cifar10-val)")
        try:  # before any work: both splits exist and test is held out from val
            val, test = resolve_trace(self.trace), resolve_trace(held_out_trace(self.trace))
        except ValueError as e:
            raise ValueError(f"--trace: {e}") from None
        if test.same_samples(val):
            raise ValueError(f"--trace {self.trace!r}: its test split holds the same samples")


def plan_of(args: Args) -> Any:
    """The benchmark plan these calibrations and evaluations follow (sizes, warm-up, seeds)."""
    from agents.splits import held_out_trace
    from distree_env.config import EnvConfig
    from experiments.benchmark import (
        FULL_CALIBRATION,
        FULL_WARMUP,
        QUICK_CALIBRATION,
        QUICK_WARMUP,
    )
    from experiments.benchmarking.runner import BenchmarkPlan

    return BenchmarkPlan(
        scenarios=args.scenarios,
        seeds=tuple(range(args.eval_seeds)),
        n_requests=args.requests,
        config=EnvConfig(),
        test_trace=held_out_trace(args.trace),
        val_trace=args.trace,
        thresholds=0,  # no rule grids: the rules do not depend on the draw
        calibration=QUICK_CALIBRATION if args.quick else FULL_CALIBRATION,
        warmup=QUICK_WARMUP if args.quick else FULL_WARMUP,
    )


def spread_row(args: Args, scenario: str, calibration_seed: int) -> dict[str, Any]:
    """One calibration of ``scenario`` with ``calibration_seed``: the best calibrated baseline
    on the val seeds and its mean reward on val and test."""
    from agents import evaluate
    from experiments.benchmarking.runner import calibrate_scenario, split_configs

    plan = plan_of(args)
    configs = split_configs(plan, scenario)
    fits = calibrate_scenario(plan, configs, None, seed=calibration_seed)

    def mean_reward(policy: Any, split: str) -> float:
        runs = [
            evaluate(policy, configs[split], plan.n_requests, seed=s, warmup=plan.warmup)
            for s in plan.split_seeds(split)
        ]
        return float(np.mean([r["mean_reward"] for r in runs]))

    on_val = {name: mean_reward(fit.policy, "val") for name, fit in fits.items()}
    best = max(on_val, key=on_val.__getitem__)
    return {
        "scenario": scenario,
        "calibration_seed": calibration_seed,
        "best": best,
        "policy": repr(fits[best].policy),
        "val_reward": on_val[best],
        "test_reward": mean_reward(fits[best].policy, "test"),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per calibration, then each scenario's range of test rewards."""
    lines = [
        "| scenario | calibration seed | best calibrated baseline on val | val reward "
        "| test reward |",
        "|---|---:|---|---:|---:|",
    ]
    lines += [
        f"| {r['scenario']} | {r['calibration_seed']} | `{r['policy']}` | "
        f"{r['val_reward']:.3f} | {r['test_reward']:.3f} |"
        for r in rows
    ]
    lines.append("")
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        test = [r["test_reward"] for r in rows if r["scenario"] == scenario]
        lines.append(
            f"- {scenario}: test reward of the best calibrated baseline {min(test):.3f} to "
            f"{max(test):.3f} over {len(test)} calibration seeds (spread "
            f"{max(test) - min(test):.3f})"
        )
    return "\n".join(lines)


@one_line_errors
def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run every (scenario, calibration seed), print the table, write ``--out``."""
    from agents.splits import calibration_seeds
    from distree_env.io import atomic_write_text

    args = parse_args(Args, argv)
    tasks = [(s, c) for s in args.scenarios for c in calibration_seeds(args.seeds)]
    if args.jobs == 1:
        rows = [spread_row(args, s, c) for s, c in tasks]
    else:  # spawned workers, as the benchmark's: no state forked from this process
        with ProcessPoolExecutor(min(args.jobs, len(tasks)), get_context("spawn")) as pool:
            rows = list(pool.map(spread_row, [args] * len(tasks), *zip(*tasks, strict=True)))
    print(table(rows))
    if args.out:
        atomic_write_text(args.out, json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
