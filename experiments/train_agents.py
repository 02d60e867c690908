"""Train and ship the project's agent set within a wall-clock budget, several runs at once.

Per scenario PPO, DQN and (where the policy sees a delayed measurement of the resources) a
recurrent PPO.

    python -m experiments.train_agents --budget-minutes 25 --jobs 2       # into runs/agents
    python -m experiments.train_agents --out checkpoints/agents            # replace the shipped set
    python -m experiments.train_agents --dry-run                           # the plan only

Each agent is one ``python -m experiments.train_agent`` run (TensorBoard under ``runs/``,
model chosen on val, evaluated on the held-out split, copied to ``<out>/<algo>-<scenario>.zip``;
with ``--out checkpoints/agents`` it replaces a shipped agent and its ``MANIFEST.json`` entry,
which is why that is never the default).
``--jobs`` runs go at once, each on one torch thread, so the set takes ``ceil(runs / jobs)``
rounds. Timesteps: given per algorithm, or (0) chosen from the budget: a short probe measures
each algorithm's steps per second on this machine, and every run gets an equal share of the
budget per round (minus a margin for evaluation and shipping). The plan prints its estimated
wall-clock time against the budget.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.hyperparams import MAX_TIMESTEPS
from distree_env.children import die_with, stop_on_signals
from distree_env.config import SCENARIOS, check_drain_weight
from distree_env.registration import STREAMS
from experiments.cli import (
    MAX_JOBS,
    fail,
    one_line_errors,
    parse_args,
    require_int,
)

#: The scenarios agents are shipped for: every stream a registered id names (their requests
#: are coupled through a queue, issue 9), and the isolated one for the parity result.
TRAINED_SCENARIOS = (*STREAMS.values(), "isolated")
ALGOS = ("ppo", "dqn", "recurrent_ppo")
#: Share of a run's time left for evaluation along the run and the held-out evaluation.
MARGIN = 0.25
#: Seconds a training run gets to stop after SIGTERM before it is killed.
STOP_GRACE_S = 10.0
PROBE_STEPS = 4096


@dataclass(frozen=True)
class Args:
    """Train PPO, DQN and a recurrent PPO per scenario into ``--out`` (``checkpoints/agents``:
    replace the shipped set)."""

    scenarios: tuple[str, ...] = field(default=TRAINED_SCENARIOS, metadata={"help": "scenarios"})
    algos: tuple[str, ...] = field(default=ALGOS, metadata={"help": "algorithms"})
    budget_minutes: float = field(
        default=25.0,
        metadata={"help": "wall-clock budget of the whole set (runs go in rounds of --jobs)"},
    )
    jobs: int = field(default=2, metadata={"help": "runs at once (one torch thread each)"})
    ppo_timesteps: int = field(default=0, metadata={"help": "0 = from the budget"})
    dqn_timesteps: int = field(default=0, metadata={"help": "0 = from the budget"})
    recurrent_ppo_timesteps: int = field(default=0, metadata={"help": "0 = from the budget"})
    seed: int = field(default=1, metadata={"help": "every run's seed"})
    drain_weight: float | None = field(
        default=None,
        metadata={"help": "train_agent --drain-weight of every run (default: the scenario's)"},
    )
    out: str = field(
        default="runs/agents",
        metadata={"help": "agents folder (checkpoints/agents replaces the shipped agents)"},
    )
    runs_dir: str = field(default="runs", metadata={"help": "TensorBoard runs and checkpoints"})
    eval_requests: int = field(default=4096, metadata={"help": "requests per held-out seed"})
    dry_run: bool = field(default=False, metadata={"help": "print the plan and stop"})
    resume: bool = field(
        default=False,
        metadata={"help": "continue each run that a stopped batch left in --runs-dir (train_agent "
                  "--resume); start the others"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        for s in self.scenarios:
            if s not in SCENARIOS:
                raise ValueError(f"--scenarios {s!r} is not allowed: one of {', '.join(SCENARIOS)}")
        for a in self.algos:
            if a not in ALGOS:
                raise ValueError(f"--algos {a!r} is not allowed: one of {', '.join(ALGOS)}")
        if not 0 < self.budget_minutes <= 24 * 60:
            raise ValueError(
                f"--budget-minutes={self.budget_minutes!r} is not allowed: a number in (0, 1440]"
            )
        require_int("jobs", self.jobs, 1, MAX_JOBS)
        if self.drain_weight is not None:
            check_drain_weight(self.drain_weight, "--drain-weight")
        for name in ("ppo_timesteps", "dqn_timesteps", "recurrent_ppo_timesteps"):
            require_int(name, getattr(self, name), 0, MAX_TIMESTEPS)


def delayed_measurement(scenario: str) -> bool:
    """Whether the policy sees resource levels measured some time ago (a recurrent policy can
    remember the trend), i.e. the scenario's clock is time and its measurement period > 0."""
    from distree_env.config import EnvConfig

    cluster = EnvConfig.scenario(scenario).cluster
    return getattr(cluster, "clock", "request") == "time" and (
        getattr(cluster, "measurement_period_ms", 0.0) > 0
    )


def plan_runs(args: Args) -> list[tuple[str, str]]:
    """(algo, scenario) pairs: every algorithm on every scenario, the recurrent one only where
    the measurement is delayed."""
    return [
        (algo, s)
        for s in args.scenarios
        for algo in args.algos
        if algo != "recurrent_ppo" or delayed_measurement(s)
    ]


def _command(args: Args, algo: str, scenario: str, timesteps: int, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.train_agent",
        "--algo",
        algo,
        "--scenario",
        scenario,
        "--timesteps",
        str(timesteps),
        "--seed",
        str(args.seed),
        *(["--drain-weight", str(args.drain_weight)] if args.drain_weight is not None else []),
        "--threads",
        "1",
        "--runs-dir",
        args.runs_dir,
        "--eval-requests",
        str(args.eval_requests),
        "--save-to",
        str(out / f"{algo}-{scenario}.zip"),
        "--progress",
        "false",
    ]


def _started(args: Args, algo: str, scenario: str) -> bool:
    """Whether ``--runs-dir`` holds a run of ``algo`` on ``scenario`` with this seed (the run
    ``train_agent --resume`` continues)."""
    from experiments.train_agent import env_id_for, find_run

    env_id = env_id_for(scenario, args.drain_weight)
    return find_run(Path(args.runs_dir), f"{env_id}__{algo}-{scenario}__{args.seed}") is not None


def probe_rate(algo: str, scenario: str, seed: int, drain_weight: float | None = None) -> float:
    """Training steps per second of ``algo`` on ``scenario`` (with ``drain_weight`` where
    given, as the runs will) on one thread (a short run)."""
    import torch

    from agents.hyperparams import load_hyperparams
    from agents.sb3 import make_sb3_env
    from agents.training import algo_class
    from distree_env.config import EnvConfig
    from experiments.train_agent import env_id_for

    torch.set_num_threads(1)
    hp = load_hyperparams(algo, env_id=env_id_for(scenario, drain_weight))
    config = EnvConfig.scenario(scenario)
    if drain_weight is not None:
        config = config.replace({"reward": {"drain_weight": drain_weight}})
    env = make_sb3_env(config, hp.n_envs, seed, config.arrivals.kind == "isolated")
    kwargs = dict(hp.algo_kwargs)
    if "learning_starts" in kwargs:  # off-policy: measure with its gradient steps running
        kwargs["learning_starts"] = 0
    model = algo_class(algo)(
        hp.policy, env, seed=seed, device="cpu", policy_kwargs=hp.policy_kwargs or None, **kwargs
    )
    model.learn(min(1024, PROBE_STEPS // 4))  # warm-up: first rollout, buffers, JIT of torch ops
    start, steps = time.perf_counter(), model.num_timesteps
    model.learn(PROBE_STEPS, reset_num_timesteps=False)
    return (model.num_timesteps - steps) / (time.perf_counter() - start)


def rounds(n_runs: int, jobs: int) -> int:
    """Rounds of ``jobs`` parallel runs that ``n_runs`` runs take: the set's budget is split
    over these, not over the runs, since a round lasts as long as one run."""
    return -(-n_runs // jobs)


def budget_timesteps(args: Args, runs: list[tuple[str, str]], rates: dict[str, float]) -> dict:
    """Timesteps per algorithm so that every run takes an equal share of the budget, one share
    per round of ``--jobs`` runs (so the set fits it); those chosen from it are rounded down to
    a multiple of 1024 (at least 1024), so the plan stays within it; given ones are rounded up."""
    train_s = args.budget_minutes * 60 / rounds(len(runs), args.jobs) * (1 - MARGIN)
    given = {
        "ppo": args.ppo_timesteps,
        "dqn": args.dqn_timesteps,
        "recurrent_ppo": args.recurrent_ppo_timesteps,
    }
    out = {}
    for algo in {a for a, _ in runs}:
        if given[algo]:
            out[algo] = int(math.ceil(given[algo] / 1024) * 1024)
        else:
            out[algo] = max(1024, int(rates[algo] * train_s) // 1024 * 1024)
    return out


def planned_minutes(
    runs: list[tuple[str, str]], jobs: int, timesteps: dict[str, int], rates: dict[str, float]
) -> float | None:
    """Estimated wall-clock minutes of the set, scheduled as :func:`run_all` does (the next run
    starts when one ends), each run its training time plus the evaluation margin; None when an
    algorithm's rate was not probed (its timesteps were given)."""
    if any(algo not in rates for algo, _ in runs):
        return None
    ends = [0.0] * min(jobs, len(runs))
    for algo, _ in runs:
        free = ends.index(min(ends))
        ends[free] += timesteps[algo] / rates[algo] / (1 - MARGIN)
    return max(ends) / 60


@one_line_errors
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run from command-line ``argv`` (default: ``sys.argv``); returns the plan and results."""
    args = parse_args(Args, argv)
    out = Path(args.out)
    runs = plan_runs(args)
    if not runs:
        fail("nothing to train: no (algorithm, scenario) pair left")
    need = {a for a, _ in runs if not getattr(args, f"{a}_timesteps")}
    rates = {}
    for algo in sorted(need):
        scenario = next(s for a, s in runs if a == algo)
        rates[algo] = probe_rate(algo, scenario, args.seed, args.drain_weight)
        print(f"probe: {algo} on {scenario}: {rates[algo]:.0f} steps/s on one thread")
    timesteps = budget_timesteps(args, runs, rates)
    commands = [(a, s, _command(args, a, s, timesteps[a], out)) for a, s in runs]
    if args.resume:  # only where a run exists: --resume refuses to start one
        commands = [
            (a, s, [*cmd, "--resume"] if _started(args, a, s) else cmd) for a, s, cmd in commands
        ]
    planned = planned_minutes(runs, args.jobs, timesteps, rates)
    if planned is None:
        estimate = "unknown (timesteps given, rates not probed)"
    else:
        over = " (OVER the budget)" if planned > args.budget_minutes else ""
        estimate = f"~{planned:.1f} min{over}"
    print(
        f"plan: {len(runs)} runs, {args.jobs} at once ({rounds(len(runs), args.jobs)} rounds), "
        f"timesteps {timesteps}; planned time {estimate} of a {args.budget_minutes:g} min budget"
    )
    for _, _, cmd in commands:
        print("  " + " ".join(cmd[1:]))
    if args.dry_run:
        return {"runs": runs, "timesteps": timesteps, "rates": rates, "planned_minutes": planned,
                "commands": [cmd for _, _, cmd in commands]}  # fmt: skip
    logs = Path(args.runs_dir) / "train_agents_logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = run_all(commands, args.jobs, logs, append=args.resume)
    total = (time.perf_counter() - started) / 60
    print(f"all runs finished in {total:.1f} min (budget {args.budget_minutes:g})")
    print(json.dumps(results, indent=2))
    if any(r["returncode"] for r in results.values()):
        raise SystemExit(1)
    return {"runs": runs, "timesteps": timesteps, "rates": rates, "results": results}


def run_all(
    commands: list[tuple[str, str, list[str]]], jobs: int, logs: Path, append: bool = False
) -> dict[str, dict[str, Any]]:
    """Run ``(algo, scenario, command)``s, ``jobs`` at once, each logging to
    ``logs/<algo>-<scenario>.log`` (``append``: after the log of the run it resumes);
    returns each run's return code and minutes. Stopped (Ctrl-C, SIGTERM, SIGHUP) or failed, it
    stops the runs still going; killed (SIGKILL), its runs die with it: none trains on without
    it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pending, running, results = list(commands), [], {}
    previous = stop_on_signals()
    try:
        while pending or running:
            while pending and len(running) < jobs:
                algo, scenario, cmd = pending.pop(0)
                mode = "a" if append else "w"
                log = open(logs / f"{algo}-{scenario}.log", mode, encoding="utf-8")  # noqa: SIM115
                proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                    preexec_fn=die_with(os.getpid()),
                )  # fmt: skip
                running.append((algo, scenario, proc, log, time.perf_counter()))
            time.sleep(1.0)
            for item in list(running):
                algo, scenario, proc, log, t0 = item
                if proc.poll() is None:
                    continue
                log.close()
                running.remove(item)
                minutes = (time.perf_counter() - t0) / 60
                results[f"{algo}-{scenario}"] = {"returncode": proc.returncode, "minutes": minutes}
                state = "done" if proc.returncode == 0 else f"FAILED ({log.name})"
                print(f"{algo}-{scenario}: {state} in {minutes:.1f} min", flush=True)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _stop([item[2] for item in running])
        for item in running:
            item[3].close()
    return results


def _stop(procs: list[subprocess.Popen]) -> None:
    """Terminate ``procs``, then kill those still there after ``STOP_GRACE_S``."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
