"""Steps per second of DistrEE (default config: DistrEE-v2) beside CartPole-v1, in the same run.

    python -m experiments.bench_env [--seconds 1.0] [--rounds 5] [--json FILE] [--readme]

Both sides are measured the same way: the raw environment classes (no ``gym.make`` wrappers),
random actions drawn in advance, autoreset by hand for the single envs and by the vector envs
themselves; the single env also through ``gym.make`` on both sides (the wrappers a user gets:
order enforcing, the passive env checker, and CartPole's time limit). Each configuration is
timed in several interleaved rounds and the best round is kept. Time is this process's CPU
time (``time.process_time``; every env here runs on one thread), so other jobs on a shared
machine do not count against either side. Targets (issues 9 and 14): single env ratio
>= 1.0, vector env at 1024 sub-envs >= 0.5 of CartPoleVectorEnv.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv, CartPoleVectorEnv

from distree_env import DistrEEEnv, DistrEEVecEnv
from distree_env.io import atomic_open, require_output_file
from distree_env.registration import V1_EPISODES  # same dynamics, one reset per 128 requests
from experiments.cli import OneLineParser, one_line_errors

VECTOR_SIZES = (1, 64, 1024)
#: The CartPole each row is compared with.
BASELINES = {
    "single": "CartPoleEnv",
    "single gym.make": 'gym.make("CartPole-v1")',
    "single, v1 episodes": "CartPoleEnv",
    "vector x1024, v1 episodes": "CartPoleVectorEnv x1024",
}
#: Longest timed round and most rounds accepted (the whole run takes about 2 x 4 x both).
MAX_SECONDS = 60.0
MAX_ROUNDS = 100


def _cpu_seconds() -> float:
    """CPU time of this process: unlike wall-clock time, it does not count while other jobs
    hold the cores."""
    return time.process_time()


def _single_runner(env, steps: int) -> Callable[[], int]:
    actions = np.random.default_rng(0).integers(0, 2, steps).tolist()
    env.reset(seed=0)

    def run() -> int:
        step, reset = env.step, env.reset
        for a in actions:
            _, _, terminated, truncated, _ = step(a)
            if terminated or truncated:
                reset()
        return steps

    return run


def _vector_runner(env, steps: int) -> Callable[[], int]:
    n = env.num_envs
    actions = np.random.default_rng(0).integers(0, 2, (64, n))
    env.reset(seed=0)

    def run() -> int:
        step = env.step
        for i in range(steps):
            step(actions[i & 63])
        return steps * n

    return run


def _calibrate(run_factory: Callable[[int], Callable[[], int]], seconds: float) -> Callable:
    """A runner sized so that one call takes about ``seconds``."""
    steps = 64
    while True:
        run = run_factory(steps)
        t0 = _cpu_seconds()
        run()
        dt = _cpu_seconds() - t0
        if dt >= seconds / 4 or steps >= 1 << 22:
            return run_factory(max(64, int(steps * seconds / max(dt, 1e-9))))
        steps *= 4


def measure(pairs: dict[str, tuple[Callable, Callable]], seconds: float, rounds: int) -> dict:
    """Best-of-``rounds`` steps/s for each (distree, cartpole) pair, interleaved."""
    runners = {
        name: (_calibrate(ours, seconds), _calibrate(theirs, seconds))
        for name, (ours, theirs) in pairs.items()
    }
    best = {name: [0.0, 0.0] for name in runners}
    for _ in range(rounds):
        for name, (ours, theirs) in runners.items():
            for side, run in enumerate((ours, theirs)):
                t0 = _cpu_seconds()
                count = run()
                rate = count / (_cpu_seconds() - t0)
                best[name][side] = max(best[name][side], rate)
    return {
        name: {"distree": ours, "cartpole": theirs, "ratio": ours / theirs}
        for name, (ours, theirs) in best.items()
    }


def measure_memory(instances: int = 16) -> dict[str, float]:
    """Memory of single envs (issue 12 targets: <= 2 MB per additional instance, pickled < 1 MB).

    ``extra_env_mb``: Python-heap growth (tracemalloc) per additional ``DistrEEEnv`` built and
    reset with its own seed, after one warm-up env built the shared, config-keyed tables.
    ``pickled_env_kb``: ``pickle.dumps`` of a stepped env (tables and pools are rebuilt on load).
    """
    import gc
    import pickle
    import tracemalloc

    warm = DistrEEEnv()
    warm.reset(seed=0)
    warm.step(0)
    pickled = len(pickle.dumps(warm))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        envs = []
        for i in range(instances):
            env = DistrEEEnv()
            env.reset(seed=1000 + i)
            envs.append(env)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return {"extra_env_mb": grown / instances / 1e6, "pickled_env_kb": pickled / 1e3}


def format_table(results: dict, rounds: int, load: float) -> str:
    """A Markdown table of the results, with date and machine."""
    cpu = _cpu_name()
    lines = [
        "| environment | DistrEE steps/s | CartPole steps/s | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in results.items():
        baseline = BASELINES.get(name) or f"CartPoleVectorEnv x{name.split('x')[1]}"
        lines.append(
            f"| {name} (vs {baseline}) | {row['distree']:,.0f} | {row['cartpole']:,.0f} "
            f"| {row['ratio']:.2f} |"
        )
    lines.append("")
    lines.append(
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu}, {os.cpu_count()} cores, no GPU, "
        f"load average {load:.1f} during the run; Python {platform.python_version()}, "
        f"numpy {np.__version__}; raw env classes (and gym.make where named), random "
        f"actions, CPU time, best of {rounds} interleaved rounds."
    )
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    """Run from command-line ``argv`` (default: ``sys.argv``); returns the exit status."""
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=1.0,
        help="length of one timed round, CPU seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="interleaved rounds, the best kept (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--readme", action="store_true", help="write the table into README.md (block bench-env)"
    )
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= MAX_SECONDS:  # also refuses nan and inf
        parser.error(f"--seconds={args.seconds!r} is not allowed: a number in (0, {MAX_SECONDS:g}]")
    if not 1 <= args.rounds <= MAX_ROUNDS:
        parser.error(f"--rounds={args.rounds!r} is not allowed: an integer in [1, {MAX_ROUNDS}]")
    if args.json is not None:
        try:
            require_output_file(args.json, "--json")
        except ValueError as exc:
            parser.error(str(exc))

    pairs: dict[str, tuple[Callable, Callable]] = {
        "single": (
            lambda s: _single_runner(DistrEEEnv(), s),
            lambda s: _single_runner(CartPoleEnv(), s),
        ),
        "single gym.make": (
            lambda s: _single_runner(gym.make("DistrEE-v2"), s),
            lambda s: _single_runner(gym.make("CartPole-v1"), s),
        ),
        "single, v1 episodes": (
            lambda s: _single_runner(DistrEEEnv(**V1_EPISODES), s),
            lambda s: _single_runner(CartPoleEnv(), s),
        ),
    }
    for n in VECTOR_SIZES:
        pairs[f"vector x{n}"] = (
            lambda s, n=n: _vector_runner(DistrEEVecEnv(n), max(1, s // n)),
            lambda s, n=n: _vector_runner(CartPoleVectorEnv(num_envs=n), max(1, s // n)),
        )
    pairs["vector x1024, v1 episodes"] = (
        lambda s: _vector_runner(DistrEEVecEnv(1024, **V1_EPISODES), max(1, s // 1024)),
        lambda s: _vector_runner(CartPoleVectorEnv(num_envs=1024), max(1, s // 1024)),
    )
    results = measure(pairs, args.seconds, args.rounds)
    memory = measure_memory()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = format_table(results, args.rounds, load)
    table += (
        f"\n\nMemory: {memory['extra_env_mb']:.2f} MB per additional single env (own seed), "
        f"pickled env {memory['pickled_env_kb']:.0f} kB."
    )
    print(table)
    if args.readme:
        from experiments.readme import update_block

        update_block("bench-env", table)
    if args.json is not None:
        payload = {
            "results": results,
            "memory": memory,
            "load_average": load,
            "python": sys.version,
        }
        with atomic_open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
