"""A one-second tour: a few exit rules and the Oracle on the default environment, as a table.

    python -m experiments.demo [--requests 2048] [--seed 0] [--scenario steady-stream]

Thresholds here are round numbers, not calibrated; ``python -m experiments.benchmark`` calibrates
them on the val trace and adds the learned agents.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distree_env.config import SCENARIOS
from distree_env.registration import ENV_IDS
from experiments.cli import (
    MAX_REQUESTS,
    MAX_SEED,
    one_line_errors,
    parse_args,
    require_int,
)

#: The scenario of the default environment, ``DistrEE-v3``.
DEFAULT_SCENARIO = ENV_IDS["DistrEE-v3"]["scenario"]


@dataclass(frozen=True)
class Args:
    """Evaluate a few exit rules and the Oracle on the default DistrEE environment."""

    requests: int = field(
        default=2048, metadata={"help": f"requests per policy (1 to {MAX_REQUESTS})"}
    )
    seed: int = field(default=0, metadata={"help": f"random seed (0 to {MAX_SEED})"})
    scenario: str = field(
        default=DEFAULT_SCENARIO,
        metadata={"choices": list(SCENARIOS), "help": "the default environment's by default"},
    )

    def __post_init__(self) -> None:
        require_int("requests", self.requests, 1, MAX_REQUESTS)
        require_int("seed", self.seed, 0, MAX_SEED)


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    """Run from command-line ``argv`` (default: ``sys.argv``); returns the exit status."""
    args = parse_args(Args, argv)
    from agents import (
        ConfidenceThreshold,
        EntropyThreshold,
        FeatureDifference,
        FixedExit,
        LastExit,
        Oracle,
        evaluate,
    )
    from distree_env import EnvConfig

    config = EnvConfig.scenario(args.scenario)
    policies = {
        "last exit": LastExit(),
        "first exit": FixedExit(0),
        "confidence >= 0.8": ConfidenceThreshold(0.8),
        "entropy <= 0.3": EntropyThreshold(0.3),
        "feature_diff <= 0.25": FeatureDifference(0.25),
        "oracle (per-request hindsight)": Oracle(),
    }
    print(
        f"scenario {args.scenario!r}"
        + (" (the default environment's, DistrEE-v3)" if args.scenario == DEFAULT_SCENARIO else "")
        + f", trace "
        f"{config.trace!r}, deadline {config.deadline_ms:g} ms, {args.requests} requests per "
        f"policy (seed {args.seed}), reward per request\n"
    )
    header = (
        f"{'policy':<20} {'accuracy':>8} {'saving':>7} {'lat mean':>9} {'lat p95':>8} "
        f"{'QoS':>6} {'reward':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, policy in policies.items():
        m = evaluate(policy, config, args.requests, args.seed)
        print(
            f"{name:<20} {m['accuracy']:>8.3f} {m['compute_saving']:>7.3f} "
            f"{m['latency_mean_ms']:>7.1f}ms {m['latency_p95_ms']:>6.1f}ms "
            f"{m['qos_rate']:>6.3f} {m['mean_reward']:>7.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
