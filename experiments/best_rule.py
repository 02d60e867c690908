"""Print the ``run_live --policy`` spec of the classic rule with the best mean reward on val.

Why: the live benchmark compares LastExit, the best rule and an agent; "best" is chosen in the
simulator on the val trace (with the calibrated cluster profile), never on test or live data.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from agents.calibration import calibrate_all
from distree_env.config import SCENARIOS, build_config
from experiments.cli import (
    MAX_REQUESTS,
    one_line_errors,
    parse_args,
    read_config_overrides,
    require_int,
)
from experiments.run_live import RULE_SPECS


@dataclass
class Args:
    """Choose the best classic rule on val for a scenario and cluster profile."""

    scenario: str = field(
        default="steady-stream", metadata={"help": "scenario name", "choices": tuple(SCENARIOS)}
    )
    profile: str = field(
        default="", metadata={"help": "cluster profile, JSON or YAML (calibrate_cluster)"}
    )
    trace: str | None = field(
        default=None, metadata={"help": "val trace to choose on (unset: the scenario's own)"}
    )
    requests: int = field(
        default=2048, metadata={"help": f"requests per evaluated point (1 to {MAX_REQUESTS})"}
    )

    def __post_init__(self) -> None:
        require_int("requests", self.requests, 1, MAX_REQUESTS)


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    """Run from command-line ``argv`` (default: ``sys.argv``); prints the spec."""
    args = parse_args(Args, argv)
    overrides = {}
    if args.profile:
        overrides = read_config_overrides(args.profile, "--profile")
    if args.trace is not None:
        overrides["trace"] = args.trace
    config = build_config(None, args.scenario, overrides)
    results = calibrate_all(config, n_requests=args.requests, num_envs=32)
    best = max(results.values(), key=lambda c: dict(c.sweep)[c.best_reward_param]["mean_reward"])
    for c in results.values():
        reward = dict(c.sweep)[c.best_reward_param]["mean_reward"]
        print(f"{c.rule}: best {c.best_reward_param:g} reward {reward:.4f}", file=sys.stderr)
    param = best.best_reward_param
    prefix = {cls: name for name, cls in RULE_SPECS.items()}[best.rule]
    print(f"{prefix}:{int(param) if best.rule == 'FixedExit' else param:g}")


if __name__ == "__main__":
    main()
