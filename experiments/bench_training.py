"""Measure agent-training throughput and the share of it spent in the environment.

    python -m experiments.bench_training                    # PPO, hyperparams from ppo.yml
    python -m experiments.bench_training --algo dqn --timesteps 50000
    python -m experiments.bench_training --readme           # also update README.md

Prints environment steps per second of ``model.learn`` (1 torch thread by default) and the
share of wall time spent in ``DistrEEVecEnv.step`` (the simulator) and in the whole SB3 adapter
(simulator + conversion to SB3's list-of-dicts). The target is an environment share below 10%.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from agents.hyperparams import MAX_ENVS, MAX_TIMESTEPS
from agents.training import ALGOS
from experiments.cli import (
    MAX_SEED,
    MAX_THREADS,
    fail,
    one_line_errors,
    parse_args,
    require_int,
)


@dataclass(frozen=True)
class Args:
    """Training throughput and environment share for one algorithm."""

    algo: str = field(default="ppo", metadata={"help": "algorithm", "choices": list(ALGOS)})
    timesteps: int = field(default=50_000, metadata={"help": "environment steps timed"})
    n_envs: int = field(default=0, metadata={"help": "parallel envs (0 = from hyperparams)"})
    threads: int = field(default=1, metadata={"help": "torch threads"})
    seed: int = field(default=0, metadata={"help": "the learner's seed"})
    readme: bool = field(default=False, metadata={"help": "update README.md (bench-training)"})

    def __post_init__(self) -> None:
        require_int("timesteps", self.timesteps, 1, MAX_TIMESTEPS)
        require_int("threads", self.threads, 1, MAX_THREADS)
        require_int("n_envs", self.n_envs, 0, MAX_ENVS)
        require_int("seed", self.seed, 0, MAX_SEED)


@one_line_errors
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run from command-line ``argv`` (default: ``sys.argv``); returns the figures it prints."""
    args = parse_args(Args, argv)
    import torch
    from stable_baselines3.common.vec_env import VecEnvWrapper, VecMonitor

    from agents.hyperparams import load_hyperparams
    from agents.sb3 import SB3VecEnv
    from agents.training import algo_class
    from distree_env.vector_env import DistrEEVecEnv

    torch.set_num_threads(args.threads)
    try:
        hp = load_hyperparams(args.algo)
    except ValueError as exc:
        fail(str(exc))
    n_envs = args.n_envs or hp.n_envs

    class TimedSimulator(DistrEEVecEnv):
        seconds = 0.0

        def step(self, actions: Any) -> Any:
            start = time.perf_counter()
            out = super().step(actions)
            TimedSimulator.seconds += time.perf_counter() - start
            return out

    class TimedAdapter(VecEnvWrapper):
        seconds = 0.0

        def reset(self) -> Any:
            return self.venv.reset()

        def step_wait(self) -> Any:
            start = time.perf_counter()
            out = self.venv.step_wait()
            TimedAdapter.seconds += time.perf_counter() - start
            return out

    simulator = TimedSimulator(n_envs, autoreset_mode="SameStep")  # what SB3 expects
    env = VecMonitor(TimedAdapter(SB3VecEnv(simulator, request_episodes=True)))
    env.seed(args.seed)
    model = algo_class(args.algo)(
        hp.policy,
        env,
        seed=args.seed,
        device="cpu",
        policy_kwargs=hp.policy_kwargs or None,
        **hp.algo_kwargs,
    )
    start = time.perf_counter()
    model.learn(args.timesteps)
    wall = time.perf_counter() - start
    result = {
        "algo": args.algo,
        "n_envs": n_envs,
        "torch_threads": args.threads,
        "timesteps": int(model.num_timesteps),
        "steps_per_s": model.num_timesteps / wall,
        "env_share": TimedSimulator.seconds / wall,
        "env_plus_adapter_share": TimedAdapter.seconds / wall,
        "wall_s": wall,
    }
    line = (
        f"{args.algo}: {result['steps_per_s']:.0f} env steps/s with {n_envs} envs, "
        f"{args.threads} torch thread(s); environment {100 * result['env_share']:.1f}% of "
        f"training time ({100 * result['env_plus_adapter_share']:.1f}% with the SB3 adapter)"
    )
    print(line)
    print(json.dumps(result))
    if args.readme:
        from distree_env.manifest import machine
        from experiments.readme import update_block

        update_block("bench-training", f"`{line}` (measured on {machine()})")
    return result


if __name__ == "__main__":
    main()
