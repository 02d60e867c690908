"""How much does the best calibrated baseline depend on its calibration seed? Measured.

    python -m experiments.calibration_spread --scenarios bursty-stream steady-stream --seeds 3

The benchmark calibrates the baselines (``agents.calibrate_baselines``) once per scenario, on the
first calibration seed: its exploring data, its grids and its paired evaluations all come from
that seed. This script repeats the calibration with ``--seeds`` calibration seeds
(``agents.splits.calibration_seeds``; the first is the benchmark's), with the full benchmark's
sizes and warm-up, chooses the best baseline of each on the val seeds, as the benchmark does,
and measures it on the held-out split (test exit, link and arrival traces, held-out seeds). The
spread of those test rewards is how much of an agent's margin over "the best baseline" a
different calibration draw could take or give. ``LoadAware[accuracy]`` is left out: it needs
an agent's accuracy to aim at.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distree_env.config import SCENARIOS
from experiments.cli import MAX_JOBS, MAX_REQUESTS, one_line_errors, parse_args, require_int

#: Most calibration seeds one run takes (each is a full calibration).
MAX_SEEDS = 16


@dataclass(frozen=True)
class Args:
    """Calibrate the baselines with several calibration seeds and measure the best on test."""

    scenarios: tuple[str, ...] = field(
        default=("bursty-stream", "steady-stream", "azure-code"), metadata={"help": "scenarios"}
    )
    seeds: int = field(default=3, metadata={"help": "calibration seeds per scenario"})
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
        require_int("seeds", self.seeds, 1, MAX_SEEDS)
        require_int("eval_seeds", self.eval_seeds, 1, MAX_SEEDS)
        require_int("requests", self.requests, 1, MAX_REQUESTS)
        require_int("jobs", self.jobs, 1, MAX_JOBS)
        from agents.splits import held_out_trace, is_test_name
        from distree_env.io import require_output_file

        if self.out:
            require_output_file(self.out, "--out")

        if is_test_name(self.trace):
            raise ValueError(f"--trace {self.trace!r} is not allowed: a val trace (cifar10-val)")
        try:
            held_out_trace(self.trace)
        except ValueError as e:
            raise ValueError(f"--trace: {e}") from None


def spread_row(args: Args, scenario: str, calibration_seed: int) -> dict[str, Any]:
    """One calibration of ``scenario`` with ``calibration_seed``: the best baseline on the val
    seeds and its figures on val and test."""
    from agents import calibrate_baselines, evaluate
    from agents.splits import held_out_seeds, on_split
    from distree_env.config import EnvConfig
    from experiments.benchmark import (
        FULL_CALIBRATION,
        FULL_WARMUP,
        QUICK_CALIBRATION,
        QUICK_WARMUP,
    )

    sizes, warmup = (QUICK_CALIBRATION, QUICK_WARMUP) if args.quick else (
        FULL_CALIBRATION, FULL_WARMUP
    )  # fmt: skip
    base = EnvConfig.scenario(scenario).replace({"trace": args.trace})
    val, test = on_split(base, "val"), on_split(base, "test")
    fits = calibrate_baselines(
        val,
        n_requests=sizes.n_requests,
        seed=calibration_seed,
        points=sizes.points,
        rounds=sizes.rounds,
        data_steps=sizes.data_steps,
        features=sizes.features,
        warmup=warmup,
    )

    def mean_reward(policy: Any, config: EnvConfig, seeds: Any) -> float:
        runs = [evaluate(policy, config, args.requests, seed=s, warmup=warmup) for s in seeds]
        return float(np.mean([r["mean_reward"] for r in runs]))

    on_val = {
        name: mean_reward(fit.policy, val, range(args.eval_seeds)) for name, fit in fits.items()
    }
    best = max(on_val, key=on_val.__getitem__)
    return {
        "scenario": scenario,
        "calibration_seed": calibration_seed,
        "best": best,
        "policy": repr(fits[best].policy),
        "val_reward": on_val[best],
        "test_reward": mean_reward(fits[best].policy, test, held_out_seeds(args.eval_seeds)),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per calibration, then each scenario's range of test rewards."""
    lines = [
        "| scenario | calibration seed | best baseline on val | val reward | test reward |",
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
            f"- {scenario}: test reward of the best baseline {min(test):.3f} to {max(test):.3f} "
            f"over {len(test)} calibration seeds (spread {max(test) - min(test):.3f})"
        )
    return "\n".join(lines)


@one_line_errors
def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run every (scenario, calibration seed), print the table, write ``--out``."""
    from agents.splits import calibration_seeds
    from distree_env.io import atomic_write_text

    args = parse_args(Args, argv)
    tasks = [(s, c) for s in args.scenarios for c in calibration_seeds(args.seeds)]
    with ProcessPoolExecutor(max_workers=min(args.jobs, len(tasks))) as pool:
        rows = list(pool.map(spread_row, [args] * len(tasks), *zip(*tasks, strict=True)))
    print(table(rows))
    if args.out:
        atomic_write_text(args.out, json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
