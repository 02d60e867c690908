"""A short evaluation of simple exit rules on the default DistrEE environment (``make demo``).

    python -m experiments.demo [--episodes 64] [--seed 0] [--scenario fluctuating]

Runs each rule on the same seeded episodes of ``DistrEEVecEnv`` and prints one table: accuracy,
compute saving against always taking the last exit, mean and p95 latency, the share of requests
within the deadline, and the mean episode return. The Oracle looks at the labels and the realised
latencies, so it is an upper bound, not a policy.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

from distree_env import SCENARIOS, DistrEEVecEnv, EnvConfig

Rule = Callable[[DistrEEVecEnv, np.ndarray], np.ndarray]


def _feature(env: DistrEEVecEnv, obs: np.ndarray, name: str) -> np.ndarray:
    return obs[:, env.observation_names.index(name)]


RULES: dict[str, Rule] = {
    "last exit": lambda env, obs: np.zeros(env.num_envs, dtype=np.int64),
    "first exit": lambda env, obs: np.ones(env.num_envs, dtype=np.int64),
    "confidence >= 0.8": lambda env, obs: (_feature(env, obs, "max_prob") >= 0.8).astype(int),
    "entropy <= 0.3": lambda env, obs: (_feature(env, obs, "entropy") <= 0.3).astype(int),
    "similarity >= 0.7": lambda env, obs: (_feature(env, obs, "similarity") >= 0.7).astype(int),
    "oracle (bound)": lambda env, obs: env.oracle_actions(),
}


def evaluate(rule: Rule, config: EnvConfig, episodes: int, seed: int) -> dict[str, float]:
    """Mean episode metrics of ``rule`` over ``episodes`` episodes (one per sub-env)."""
    env = DistrEEVecEnv(episodes, config)
    obs, _ = env.reset(seed=seed)
    done = np.zeros(episodes, dtype=bool)
    returns = np.zeros(episodes)
    rows: dict[str, np.ndarray] = {}
    while not done.all():
        obs, reward, terminated, _, info = env.step(rule(env, obs))
        returns += np.where(done, 0.0, reward)
        finished = terminated & ~done
        if finished.any():
            for key in (
                "accuracy",
                "compute_saving",
                "latency_mean_ms",
                "latency_p95_ms",
                "qos_rate",
            ):
                rows.setdefault(key, np.zeros(episodes))[finished] = info["final_info"][key][
                    finished
                ]
            done |= finished
    out = {key: float(v.mean()) for key, v in rows.items()}
    out["return"] = float(returns.mean())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=64, help="episodes per rule (>= 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenario", choices=SCENARIOS, default="fluctuating")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    config = EnvConfig.scenario(args.scenario)
    print(
        f"DistrEE-v0, trace {config.trace!r}, scenario {args.scenario!r}, "
        f"{config.requests_per_episode} requests/episode, deadline {config.deadline_ms:g} ms, "
        f"{args.episodes} episodes per rule (seed {args.seed})\n"
    )
    header = (
        f"{'rule':<20} {'accuracy':>8} {'saving':>7} {'lat mean':>9} {'lat p95':>8} "
        f"{'QoS':>6} {'return':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, rule in RULES.items():
        m = evaluate(rule, config, args.episodes, args.seed)
        print(
            f"{name:<20} {m['accuracy']:>8.3f} {m['compute_saving']:>7.3f} "
            f"{m['latency_mean_ms']:>7.1f}ms {m['latency_p95_ms']:>6.1f}ms "
            f"{m['qos_rate']:>6.3f} {m['return']:>7.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
