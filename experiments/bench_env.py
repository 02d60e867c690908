"""Steps per second of DistrEE-v0 beside Gymnasium's CartPole-v1, measured in the same run.

    python -m experiments.bench_env [--seconds 1.0] [--rounds 5] [--json FILE] [--readme]

Both sides are measured the same way: the raw environment classes (no ``gym.make`` wrappers),
random actions drawn in advance, autoreset by hand for the single envs and by the vector envs
themselves. Each configuration is timed in several interleaved rounds and the best round is
kept, so that a busy machine penalises both sides alike. Targets (issue 2): single env ratio
>= 1.0, vector env at 1024 sub-envs >= 0.5 of CartPoleVectorEnv.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv, CartPoleVectorEnv

from distree_env import DistrEEEnv, DistrEEVecEnv
from distree_env.io import atomic_open

VECTOR_SIZES = (1, 64, 1024)


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
        t0 = time.perf_counter()
        run()
        dt = time.perf_counter() - t0
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
                t0 = time.perf_counter()
                count = run()
                rate = count / (time.perf_counter() - t0)
                best[name][side] = max(best[name][side], rate)
    return {
        name: {"distree": ours, "cartpole": theirs, "ratio": ours / theirs}
        for name, (ours, theirs) in best.items()
    }


def format_table(results: dict, rounds: int, load: float) -> str:
    """A Markdown table of the results, with date and machine."""
    cpu = _cpu_name()
    lines = [
        "| environment | DistrEE steps/s | CartPole steps/s | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in results.items():
        baseline = "CartPoleEnv" if name == "single" else f"CartPoleVectorEnv x{name.split('x')[1]}"
        lines.append(
            f"| {name} (vs {baseline}) | {row['distree']:,.0f} | {row['cartpole']:,.0f} "
            f"| {row['ratio']:.2f} |"
        )
    lines.append("")
    lines.append(
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu}, {os.cpu_count()} cores, no GPU, "
        f"load average {load:.1f} during the run; Python {platform.python_version()}, "
        f"numpy {np.__version__}; raw env classes, random actions, best of {rounds} "
        "interleaved rounds."
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one timed round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (best kept)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--readme", action="store_true", help="write the table into README.md (block bench-env)"
    )
    args = parser.parse_args(argv)
    if not (args.seconds > 0 and args.rounds >= 1):
        parser.error("--seconds must be > 0 and --rounds >= 1")

    pairs: dict[str, tuple[Callable, Callable]] = {
        "single": (
            lambda s: _single_runner(DistrEEEnv(), s),
            lambda s: _single_runner(CartPoleEnv(), s),
        )
    }
    for n in VECTOR_SIZES:
        pairs[f"vector x{n}"] = (
            lambda s, n=n: _vector_runner(DistrEEVecEnv(n), max(1, s // n)),
            lambda s, n=n: _vector_runner(CartPoleVectorEnv(num_envs=n), max(1, s // n)),
        )
    results = measure(pairs, args.seconds, args.rounds)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = format_table(results, args.rounds, load)
    print(table)
    if args.readme:
        from experiments.readme import update_block

        update_block("bench-env", table)
    if args.json is not None:
        payload = {"results": results, "load_average": load, "python": sys.version}
        with atomic_open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
