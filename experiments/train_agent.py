"""Train an exit-policy agent (stable-baselines3) on DistrEE-v0, with TensorBoard and resume.

    python -m experiments.train_agent --algo ppo --timesteps 300000 --seed 1
    python -m experiments.train_agent --algo dqn --seed 1 --resume      # continue a killed run
    python -m experiments.train_agent --algo ppo --save-to checkpoints/agents/ppo.zip

Runs are named CleanRL-style ``DistrEE-v0__<exp>__<seed>__<unixtime>`` under ``runs/``
(``tensorboard --logdir runs``): SB3's curves plus ``distree/*`` episode metrics and
``eval/mean_reward`` on the val trace. ``--resume`` continues the newest run of the same
experiment and seed from its last checkpoint (model, replay buffer, normalisation statistics).
By default the learner sees every request as an episode (``--request-episodes``, see
``agents.sb3.SB3VecEnv``), so ``rollout/ep_rew_mean`` and ``eval/mean_reward`` are per request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.hyperparams import ENV_ID
from agents.training import ALGOS
from experiments.cli import fail, parse_args, run_name


def _positive(name: str, value: int, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        flag = "--" + name.replace("_", "-")
        raise ValueError(f"{flag}={value!r} is not allowed: an integer >= {low}")


@dataclass(frozen=True)
class Args:
    """Train an exit policy for DistrEE-v0 with stable-baselines3."""

    algo: str = field(default="ppo", metadata={"choices": list(ALGOS)})
    timesteps: int = field(default=0, metadata={"help": "environment steps (0 = from hyperparams)"})
    seed: int = 1
    n_envs: int = field(default=0, metadata={"help": "parallel envs (0 = from hyperparams)"})
    config: str | None = field(default=None, metadata={"help": "JSON/YAML of EnvConfig fields"})
    hyperparams: str | None = field(
        default=None, metadata={"help": "rl-zoo3 .yml (default experiments/hyperparams/ALGO.yml)"}
    )
    exp_name: str = field(default="", metadata={"help": "experiment name (default: the algo)"})
    run_name: str = field(default="", metadata={"help": "exact run folder name under --runs-dir"})
    runs_dir: str = "runs"
    resume: bool = field(default=False, metadata={"help": "continue the newest matching run"})
    eval_freq: int = field(default=20_000, metadata={"help": "steps between val evals (0 = off)"})
    eval_episodes: int = field(default=256, metadata={"help": "episodes per val evaluation"})
    request_episodes: bool = field(
        default=True, metadata={"help": "the learner sees each request as an episode"}
    )
    checkpoint_freq: int = field(default=20_000, metadata={"help": "steps between checkpoints"})
    save_to: str | None = field(
        default=None, metadata={"help": "ship the final model (e.g. checkpoints/agents/ppo.zip)"}
    )
    eval_seeds: int = field(default=5, metadata={"help": "seeds of the held-out evaluation"})
    eval_requests: int = field(default=4096, metadata={"help": "requests per evaluation seed"})
    threads: int = field(default=1, metadata={"help": "torch threads"})
    progress: bool = True
    verbose: int = 0

    def __post_init__(self) -> None:
        _positive("timesteps", self.timesteps, 0)
        _positive("seed", self.seed, 0)
        _positive("n_envs", self.n_envs, 0)
        _positive("eval_freq", self.eval_freq, 0)
        _positive("eval_episodes", self.eval_episodes)
        _positive("checkpoint_freq", self.checkpoint_freq)
        _positive("eval_seeds", self.eval_seeds)
        _positive("eval_requests", self.eval_requests)
        _positive("threads", self.threads)
        if self.config is not None and not Path(self.config).is_file():
            raise ValueError(f"--config={self.config!r}: file not found")
        if self.hyperparams is not None and not Path(self.hyperparams).is_file():
            raise ValueError(f"--hyperparams={self.hyperparams!r}: file not found")
        if self.save_to is not None and not self.save_to.endswith(".zip"):
            raise ValueError(f"--save-to={self.save_to!r} is not allowed: a path ending in .zip")
        for name in ("exp_name", "run_name"):
            value = getattr(self, name)
            if "/" in value or value in (".", ".."):
                raise ValueError(f"--{name.replace('_', '-')}={value!r}: a plain name, no '/'")


def load_env_config(path: str | None) -> Any:
    """EnvConfig from a JSON or YAML file of (possibly nested or dotted) overrides."""
    from distree_env.config import EnvConfig

    if path is None:
        return EnvConfig()
    text = Path(path).read_text(encoding="utf-8")
    try:
        if path.endswith((".yml", ".yaml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 (any parse error becomes one clear line)
        raise ValueError(f"--config {path!r}: cannot parse ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path!r}: expected a mapping of EnvConfig fields")
    return EnvConfig().replace(data)


def find_run(runs_dir: Path, prefix: str) -> Path | None:
    """The newest run folder named ``<prefix>__<unixtime>``."""
    runs = [p for p in runs_dir.glob(f"{prefix}__*") if p.name[len(prefix) + 2 :].isdigit()]
    return max(runs, key=lambda p: int(p.name[len(prefix) + 2 :])) if runs else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(Args, argv)
    import torch

    torch.set_num_threads(args.threads)
    from agents.hyperparams import load_hyperparams

    try:
        config = load_env_config(args.config)
        hp = load_hyperparams(args.algo, args.hyperparams)
    except ValueError as exc:
        fail(str(exc))
    exp = args.exp_name or args.algo
    runs_dir = Path(args.runs_dir)
    run_dir = runs_dir / args.run_name if args.run_name else None
    if args.resume and run_dir is None:
        run_dir = find_run(runs_dir, f"{ENV_ID}__{exp}__{args.seed}")
    if run_dir is None:
        run_dir = runs_dir / run_name(ENV_ID, exp, args.seed)
    if not args.resume and (run_dir / "checkpoints").exists():
        fail(f"run {str(run_dir)!r} exists; pass --resume to continue it or choose --run-name")
    try:
        result = _train(args, config, hp, run_dir)
    except ValueError as exc:
        fail(str(exc))
    print(json.dumps(result, indent=2))
    return result


def _train(args: Args, config: Any, hp: Any, run_dir: Path) -> dict[str, Any]:
    from stable_baselines3.common.callbacks import CallbackList, EvalCallback
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.vec_env import VecNormalize

    from agents.sb3 import DistrEEMetricsCallback, make_sb3_env
    from agents.training import (
        AtomicCheckpointCallback,
        algo_class,
        latest_checkpoint,
        load_replay_buffer,
        save_model,
    )
    from distree_env.io import atomic_write_text

    cls = algo_class(args.algo)
    n_envs = args.n_envs or hp.n_envs
    timesteps = args.timesteps or hp.n_timesteps
    ckpt_dir = run_dir / "checkpoints"
    found = latest_checkpoint(ckpt_dir) if args.resume else None
    done_steps = found[0] if found else 0
    env = make_sb3_env(config, n_envs, args.seed + done_steps, args.request_episodes)
    eval_env = make_sb3_env(
        config, min(n_envs, args.eval_episodes), args.seed + 10_000, args.request_episodes
    )
    if hp.normalize is not None:
        env = VecNormalize(env, gamma=hp.algo_kwargs.get("gamma", 0.99), **hp.normalize)
        eval_env = VecNormalize(
            eval_env, training=False, norm_reward=False, norm_obs=hp.normalize.get("norm_obs", True)
        )
    if found:
        from agents.policy import load_vecnormalize, sidecar

        model = cls.load(found[1], env=env, device="cpu")
        if isinstance(env, VecNormalize):
            load_vecnormalize(sidecar(found[1]), env)
        load_replay_buffer(model, found[1])
        print(f"resuming {run_dir} from {found[1].name} ({done_steps} steps)")
    else:
        model = cls(
            hp.policy,
            env,
            seed=args.seed,
            device="cpu",
            verbose=args.verbose,
            policy_kwargs=hp.policy_kwargs or None,
            **hp.algo_kwargs,
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "args.json", json.dumps(
        {"args": args.__dict__, "env_config": config.to_dict(), "n_envs": n_envs,
         "timesteps": timesteps}, indent=2, default=str))  # fmt: skip
    formats = ["tensorboard"] + (["stdout"] if args.verbose else [])
    model.set_logger(configure(str(run_dir), formats))
    checkpoint = AtomicCheckpointCallback(max(args.checkpoint_freq // n_envs, 1), ckpt_dir)
    callbacks = [DistrEEMetricsCallback(), checkpoint]
    if args.eval_freq:
        eval_cls = EvalCallback
        if args.algo == "maskable_ppo":
            from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback as eval_cls
        callbacks.append(
            eval_cls(
                eval_env,
                n_eval_episodes=args.eval_episodes,
                eval_freq=max(args.eval_freq // n_envs, 1),
                deterministic=True,
                verbose=args.verbose,
            )
        )
    remaining = max(timesteps - model.num_timesteps, 0)
    if remaining:
        model.learn(
            remaining,
            callback=CallbackList(callbacks),
            progress_bar=args.progress,
            reset_num_timesteps=not found,
            tb_log_name=run_dir.name,
        )
        checkpoint.save_now()
    final = run_dir / "final_model.zip"
    save_model(model, final)
    result: dict[str, Any] = {
        "run_dir": str(run_dir),
        "model": str(final),
        "timesteps": int(model.num_timesteps),
    }
    if args.save_to:
        result.update(ship(args, config, final))
    return result


def ship(args: Args, config: Any, final: Path) -> dict[str, Any]:
    """Evaluate the final model on the held-out trace over ``--eval-seeds`` seeds, copy it to
    ``--save-to`` and record it (with the metrics) in the manifest when it lies under
    checkpoints/ (replacing an earlier entry)."""
    import numpy as np

    from agents.evaluate import METRICS, evaluate
    from agents.loading import load_agent
    from agents.policy import sidecar
    from agents.splits import held_out_trace
    from distree_env.io import atomic_write_bytes
    from distree_env.manifest import checkpoints_dir, command_line, record

    policy = load_agent(str(final), trust=True, algo=args.algo)  # the run's own file
    test_config = config.replace(trace=held_out_trace(config.trace))
    runs = [
        evaluate(policy, test_config, args.eval_requests, seed) for seed in range(args.eval_seeds)
    ]
    metrics: dict[str, Any] = {
        "algo": args.algo,
        "trained_on": config.trace,
        "evaluated_on": test_config.trace,
        "seeds": args.eval_seeds,
        "requests_per_seed": args.eval_requests,
    }
    for key in METRICS:
        values = np.array([r[key] for r in runs])
        metrics[key] = {"mean": float(values.mean()), "std": float(values.std())}
    metrics["exit_fractions"] = np.mean([r["exit_fractions"] for r in runs], axis=0).tolist()
    dest = Path(args.save_to)  # copied only now, so it disagrees with the manifest briefly
    if sidecar(final).is_file():
        atomic_write_bytes(sidecar(dest), sidecar(final).read_bytes())
    atomic_write_bytes(dest, final.read_bytes())
    try:
        dest.resolve().relative_to(checkpoints_dir().resolve())
    except ValueError:
        return {"saved_to": str(dest), "metrics": metrics}
    command = command_line("experiments.train_agent")
    if sidecar(dest).is_file():
        record(sidecar(dest), command, {"normalisation_of": dest.name})
    record(dest, command, metrics)
    return {"saved_to": str(dest), "metrics": metrics, "manifest": True}


if __name__ == "__main__":
    main()
