"""Train an exit-policy agent (stable-baselines3) on one DistrEE scenario, with TensorBoard and
resume.

    python -m experiments.train_agent --algo ppo --scenario bursty-stream --timesteps 300000
    python -m experiments.train_agent --algo dqn --seed 1 --resume      # continue a killed run
    python -m experiments.train_agent --algo ppo --scenario steady-stream \
        --save-to checkpoints/agents/ppo-steady-stream.zip

Runs are named CleanRL-style ``<env id>__<algo>-<scenario>__<seed>__<unixtime>`` under ``runs/``
(``tensorboard --logdir runs``): SB3's curves, ``distree_train/per_request/*`` and
``distree_train/per_episode/*`` (the training episodes' metrics, means over requests and totals
over an episode, never mixed), ``distree_val/per_request/*`` (``agents.evaluate`` on the val
config every ``--eval-freq`` steps: the same metrics as the benchmark) and, as text, the
hyperparameters, the environment config and a guide to these names (``run/*``). The model with
the best val reward per request is the one shipped (a choice made on val).
``--resume`` continues the newest run of the same experiment and seed from its last checkpoint
(model, replay buffer, normalisation statistics), read without unpickling anything
(``agents.loading.restore_model``); it refuses another ``--algo`` or environment config than the
run's ``args.json`` records.
``--request-episodes true`` (the default) shows the learner every request as an episode
(``rollout/ep_rew_mean`` is then per request); ``false`` shows it the env's episodes, ``auto``
does so except where requests are isolated; see ``agents.sb3.SB3VecEnv``. The v2 stream
scenarios already make every request an episode (and charge it the wait it causes the queue,
``reward.timing="system"``), so the flag changes nothing there; it matters for configs with
longer episodes (``isolated``, v1 settings), where discounting per decision step over many
requests makes every extra stage delay all later rewards and PPO drifts to "always exit 0".
``--drain-weight W`` sets the config's ``reward.drain_weight`` (the v3 ids use 1): each episode's
end also pays W times the change in what the queue will still cost, the part of a decision's
cost that a one-request episode hides (``distree_env.config.RewardConfig``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.hyperparams import MAX_ENVS, MAX_FILE_BYTES, MAX_TIMESTEPS
from agents.splits import AGENT_VAL_SEED, TEST_SEED_BASE
from agents.training import ALGOS
from distree_env.config import SCENARIOS, check_drain_weight
from distree_env.io import (
    error_line,
    read_text_capped,
    require_input_file,
    require_output_dir,
    require_output_file,
)
from experiments.cli import (
    MAX_REQUESTS,
    MAX_SEED,
    MAX_THREADS,
    fail,
    one_line_errors,
    parse_args,
    read_config_overrides,
    require_int,
    run_name,
)


@dataclass(frozen=True)
class Args:
    """Train an exit policy for one DistrEE scenario with stable-baselines3."""

    algo: str = field(default="ppo", metadata={"help": "algorithm", "choices": list(ALGOS)})
    scenario: str = field(
        default="isolated",
        metadata={
            "choices": list(SCENARIOS),
            "help": "the scenario: the config's base, the hyperparameters' id and the run "
            "name (isolated = DistrEE-v0's dynamics; --config's fields override the config "
            "only)",
        },
    )
    timesteps: int = field(default=0, metadata={"help": "environment steps (0 = from hyperparams)"})
    seed: int = field(default=1, metadata={"help": "seed of the learner and its envs"})
    n_envs: int = field(default=0, metadata={"help": "parallel envs (0 = from hyperparams)"})
    config: str | None = field(default=None, metadata={"help": "JSON/YAML of EnvConfig fields"})
    hyperparams: str | None = field(
        default=None, metadata={"help": "rl-zoo3 .yml (default experiments/hyperparams/ALGO.yml)"}
    )
    exp_name: str = field(default="", metadata={"help": "experiment name (empty: ALGO-SCENARIO)"})
    run_name: str = field(default="", metadata={"help": "exact run folder name under --runs-dir"})
    runs_dir: str = field(
        default="runs", metadata={"help": "run folders (TensorBoard logs, checkpoints) go here"}
    )
    resume: bool = field(default=False, metadata={"help": "continue the newest matching run"})
    eval_freq: int = field(default=20_000, metadata={"help": "steps between val evals (0 = off)"})
    val_requests: int = field(default=2048, metadata={"help": "requests per val evaluation"})
    request_episodes: str = field(
        default="true",
        metadata={
            "choices": ["auto", "true", "false"],
            "help": "the learner sees each request as an episode (auto: where requests are "
            "isolated)",
        },
    )
    drain_weight: float | None = field(
        default=None,
        metadata={"help": "reward.drain_weight: the queue's drain cost paid at episode ends "
                  "(default: the config's; 0: none)"},
    )  # fmt: skip
    checkpoint_freq: int = field(default=20_000, metadata={"help": "steps between checkpoints"})
    save_to: str | None = field(
        default=None,
        metadata={"help": "ship the final model (e.g. checkpoints/agents/ppo-steady-stream.zip)"},
    )
    eval_seeds: int = field(
        default=5, metadata={"help": "seeds of the held-out evaluation (with --save-to)"}
    )
    eval_requests: int = field(
        default=4096, metadata={"help": "requests per held-out evaluation seed (with --save-to)"}
    )
    threads: int = field(default=1, metadata={"help": "torch threads"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    verbose: int = field(default=0, metadata={"help": "SB3's verbosity: 0, 1 or 2"})

    def __post_init__(self) -> None:
        require_int("timesteps", self.timesteps, 0, MAX_TIMESTEPS)
        # from TEST_SEED_BASE on, seeds draw the held-out evaluations' streams
        require_int("seed", self.seed, 0, min(MAX_SEED, TEST_SEED_BASE - 1))
        require_int("n_envs", self.n_envs, 0, MAX_ENVS)
        require_int("eval_freq", self.eval_freq, 0, MAX_TIMESTEPS)
        require_int("val_requests", self.val_requests, 1, MAX_REQUESTS)
        require_int("checkpoint_freq", self.checkpoint_freq, 1, MAX_TIMESTEPS)
        require_int("eval_seeds", self.eval_seeds, 1, 1000)
        require_int("eval_requests", self.eval_requests, 1, MAX_REQUESTS)
        require_int("threads", self.threads, 1, MAX_THREADS)
        require_int("verbose", self.verbose, 0, 2)
        if self.drain_weight is not None:
            check_drain_weight(self.drain_weight, "--drain-weight")
        if self.config is not None:
            require_input_file(self.config, "--config")
        if self.hyperparams is not None:
            require_input_file(self.hyperparams, "--hyperparams")
        if self.save_to is not None:
            if not self.save_to.endswith(".zip"):
                raise ValueError(
                    f"--save-to={self.save_to!r} is not allowed: a path ending in .zip"
                )
            require_output_file(self.save_to, "--save-to")
        require_output_dir(self.runs_dir, "--runs-dir")
        for name in ("exp_name", "run_name"):
            value = getattr(self, name)
            if "/" in value or value in (".", ".."):
                raise ValueError(f"--{name.replace('_', '-')}={value!r}: a plain name, no '/'")


def env_id_for(scenario: str, drain_weight: float | None = None) -> str:
    """The registered id whose only settings are ``scenario`` and a drain weight of 1 where
    given (``bursty-stream`` -> ``DistrEE-Bursty-v2``, with ``drain_weight=1`` ->
    ``DistrEE-Bursty-v3``), else ``scenario`` alone (``isolated`` -> ``DistrEE-v0``), else
    ``DistrEE-v2``: names runs and picks the rl-zoo3 hyperparameter entry."""
    from distree_env.registration import ENV_IDS

    plain = {"scenario": scenario}
    wanted = [{**plain, "reward.drain_weight": 1.0}] if drain_weight == 1.0 else []
    for settings in [*wanted, plain]:
        match = next((i for i, kw in ENV_IDS.items() if kw == settings), None)
        if match is not None:
            return match
    return "DistrEE-v2"


def request_episodes(args: Args, config: Any) -> bool:
    """``--request-episodes``: ``auto`` is True exactly where requests are isolated (no queue
    couples them)."""
    if args.request_episodes == "auto":
        return config.arrivals.kind == "isolated"
    return args.request_episodes == "true"


def load_env_config(path: str | None, scenario: str | None = None) -> Any:
    """EnvConfig of ``scenario`` (default: the default config) with the overrides of a JSON or
    YAML file of (possibly nested or dotted) fields."""
    from distree_env.config import EnvConfig

    base = EnvConfig() if scenario is None else EnvConfig.scenario(scenario)
    if path is None:
        return base
    data = read_config_overrides(path)
    try:
        return base.replace(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--config {path!r}: {exc}") from None


def find_run(runs_dir: Path, prefix: str) -> Path | None:
    """The newest run folder named ``<prefix>__<unixtime>``."""
    runs = [p for p in runs_dir.glob(f"{prefix}__*") if p.name[len(prefix) + 2 :].isdigit()]
    return max(runs, key=lambda p: int(p.name[len(prefix) + 2 :])) if runs else None


@one_line_errors
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run from command-line ``argv`` (default: ``sys.argv``); returns the run's summary."""
    args = parse_args(Args, argv)
    import torch

    torch.set_num_threads(args.threads)
    from agents.hyperparams import load_hyperparams
    from agents.rollouts import require_val
    from agents.splits import on_split
    from distree_env.traces import resolve_trace

    config = load_env_config(args.config, args.scenario)
    if args.drain_weight is not None:
        config = config.replace({"reward": {"drain_weight": args.drain_weight}})
    require_val(config, "train_agent")  # agents learn on val; test only measures them
    try:  # before training: a trace without a held-out split fails now, not after the run
        test_config = on_split(config, "test") if args.save_to else None
        if test_config is not None:
            resolve_trace(test_config.trace)
    except ValueError as exc:
        raise ValueError(f"--save-to evaluates on the held-out split, but {exc}") from None
    env_id = env_id_for(args.scenario, args.drain_weight)
    hp = load_hyperparams(args.algo, args.hyperparams, env_id)
    exp = args.exp_name or f"{args.algo}-{args.scenario}"
    runs_dir = Path(args.runs_dir)
    run_dir = runs_dir / args.run_name if args.run_name else None
    if args.resume and run_dir is None:
        prefix = f"{env_id}__{exp}__{args.seed}"
        # a run started before v3 runs were named so carries its scenario's plain id
        run_dir = find_run(runs_dir, prefix) or find_run(
            runs_dir, f"{env_id_for(args.scenario)}__{exp}__{args.seed}"
        )
        if run_dir is None:
            others = sorted(p.name for p in runs_dir.glob(f"*__{exp}__*"))
            fail(
                f"--resume: no run {prefix}__<time> in {str(runs_dir)!r} (runs of {exp}: "
                f"{', '.join(others) or 'none'}); check --seed, --exp-name and --runs-dir, or "
                "drop --resume to start one"
            )
    elif args.resume and not any((run_dir / n).exists() for n in ("args.json", "checkpoints")):
        fail(
            f"--resume: {str(run_dir)!r} holds no run (no args.json, no checkpoints); check "
            "--run-name and --runs-dir, or drop --resume to start one"
        )
    if run_dir is None:
        run_dir = runs_dir / run_name(env_id, exp, args.seed)
    if not args.resume and (run_dir / "checkpoints").exists():
        fail(f"run {str(run_dir)!r} exists; pass --resume to continue it or choose --run-name")
    result = _train(args, config, hp, run_dir)
    if test_config is not None:
        result.update(ship(args, config, test_config, Path(result["model"]), result["val_reward"]))
    print(json.dumps(result, indent=2))
    return result


def _settings(hp: Any) -> dict[str, Any]:
    """The hyperparameters that make a run what it is, as ``args.json`` stores them (the run's
    length and ``n_envs`` may change on a resume)."""
    settings = {"policy": hp.policy, "policy_kwargs": hp.policy_kwargs,
                "normalize": hp.normalize, "algo_kwargs": hp.algo_kwargs}  # fmt: skip
    return json.loads(json.dumps(settings, default=str))


#: The flags that choose a run's environment, as ``--resume`` names them when it refuses one.
ENV_FLAGS = ("scenario", "config", "drain_weight")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value: Any) -> str:
    """A flag's value as the command line writes it (``true``, not ``True``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _same_run(
    args: Args,
    config: Any,
    hp: Any,
    run_dir: Path,
    checkpoint: Path | None,
    per_request: bool,
) -> dict | None:
    """The run's ``args.json`` record, after checking that this call continues the same run:
    the same ``--algo``, ``--seed``, environment config, request episodes and hyperparameters
    (ValueError naming both otherwise)."""
    from agents.loading import infer_algo

    record_path = run_dir / "args.json"
    record = None
    if record_path.is_file():
        try:
            record = json.loads(read_text_capped(record_path, "run record", MAX_FILE_BYTES))
            before_args, before_config = record["args"], record["env_config"]
            before_algo = before_args["algo"]
            if not all(
                isinstance(part, dict)
                for part in (before_args, before_config, record.get("settings", {}))
            ):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise ValueError(
                f"--resume: {str(record_path)!r} is not a readable run record; start a new run"
            ) from None
        for name, before, now in (
            ("algo", before_algo, args.algo),
            ("seed", before_args.get("seed", args.seed), args.seed),
            ("request_episodes", record.get("request_episodes", per_request), per_request),
        ):
            if before != now:
                raise ValueError(
                    f"--resume: run {str(run_dir)!r} was trained with {_flag(name)} "
                    f"{_shown(before)}, this call gives {_flag(name)} {_shown(now)}; use the "
                    "run's own or start a new run"
                )
        now = json.loads(json.dumps(config.to_dict(), default=str))
        if now != before_config:
            changed = sorted(
                k for k in set(now) | set(before_config) if now.get(k) != before_config.get(k)
            )
            flags = [
                f"{_flag(k)} {before_args.get(k)!r} then, {getattr(args, k)!r} now"
                for k in ENV_FLAGS
                if before_args.get(k) != getattr(args, k)
            ]
            raise ValueError(
                f"--resume: run {str(run_dir)!r} was trained on another environment (fields "
                f"{', '.join(changed)}{'; ' if flags else ''}{'; '.join(flags)}); use the run's "
                "own --scenario, --config and --drain-weight or start a new run"
            )
    before = (record or {}).get("settings")
    if before is not None and before != _settings(hp):
        now = _settings(hp)
        changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
        raise ValueError(
            f"--resume: run {str(run_dir)!r} was trained with other hyperparameters ("
            + "; ".join(f"{k}: {before.get(k)} then, {now.get(k)} now" for k in changed)
            + f"); give the run's own --hyperparams ({record['args'].get('hyperparams')!r}) "
            "or start a new run"
        )
    if checkpoint is not None and infer_algo(checkpoint) != args.algo:
        raise ValueError(
            f"--resume: checkpoint {str(checkpoint)!r} holds a {infer_algo(checkpoint)} agent, "
            f"this call asks for --algo {args.algo}"
        )
    return record


def _build_model(args: Args, hp: Any, env: Any) -> Any:
    """A new model from the hyperparameters (their errors become one line naming the file)."""
    from agents.training import algo_class

    try:
        return algo_class(args.algo)(
            hp.policy,
            env,
            seed=args.seed,
            device="cpu",
            verbose=args.verbose,
            policy_kwargs=hp.policy_kwargs or None,
            **hp.algo_kwargs,
        )
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        where = args.hyperparams or f"experiments/hyperparams/{args.algo}.yml"
        raise ValueError(f"--hyperparams {where!r}: {args.algo} refuses them ({exc})") from None


def _train(args: Args, config: Any, hp: Any, run_dir: Path) -> dict[str, Any]:
    """Build or resume the model, train it with the run's callbacks, keep the best on val."""
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.logger import configure

    from agents.training import latest_checkpoint, save_model

    n_envs = args.n_envs or hp.n_envs
    timesteps = args.timesteps or hp.n_timesteps
    ckpt_dir = run_dir / "checkpoints"
    found = latest_checkpoint(ckpt_dir) if args.resume else None
    per_request = request_episodes(args, config)
    record = (
        _same_run(args, config, hp, run_dir, found[1] if found else None, per_request)
        if args.resume
        else None
    )
    done_steps = found[0] if found else 0
    model = _model(args, config, hp, n_envs, done_steps, per_request, found)
    if found:
        print(f"resuming {run_dir} from {found[1].name} ({done_steps} steps)")
    run_dir.mkdir(parents=True, exist_ok=True)
    this_call = {"args": args.__dict__, "env_config": config.to_dict(), "n_envs": n_envs,
                 "timesteps": timesteps, "settings": _settings(hp),
                 "request_episodes": per_request}  # fmt: skip
    _write_args(run_dir, record, this_call, done_steps)
    formats = ["tensorboard"] + (["stdout"] if args.verbose else [])
    model.set_logger(configure(str(run_dir), formats))
    env_id = env_id_for(args.scenario, args.drain_weight)
    hyperparameters = {"algo": args.algo, "env_id": env_id, "n_envs": n_envs,
                       "timesteps": timesteps, "request_episodes": per_request,
                       "drain_weight": config.reward.drain_weight,
                       "policy": hp.policy, "policy_kwargs": hp.policy_kwargs,
                       "normalize": hp.normalize, **hp.algo_kwargs}  # fmt: skip
    callbacks, checkpoint, val = _callbacks(args, config, run_dir, n_envs, hyperparameters)
    if found:
        val.resume_history(done_steps)
    remaining = max(timesteps - model.num_timesteps, 0)
    if remaining and val.dropped_best and args.eval_freq:
        # the best model was removed: the checkpoint resumed from competes again (its
        # evaluation, if the stopped run made one, is replaced), as later ones will
        val.init_callback(model)
        val.evaluate_now()
    if remaining:
        model.learn(
            remaining,
            callback=CallbackList(callbacks),
            progress_bar=args.progress,
            reset_num_timesteps=not found,
            tb_log_name=run_dir.name,
        )
        checkpoint.save_now()
    else:  # a finished run resumed: the val callback never started, so start it here
        val.init_callback(model)
    final = run_dir / "final_model.zip"
    save_model(model, final)
    evaluated = bool(val.history) and val.history[-1][0] == model.num_timesteps
    if args.eval_freq and (not evaluated or not math.isfinite(val.best_reward)):
        # the final model competes for "best on val" too (once per step), and stands for it
        # where the best model on disk was dropped (its statistics were another model's)
        val.evaluate_now()
    best = run_dir / "best_model.zip"
    chosen = best if args.eval_freq and best.is_file() else final
    result: dict[str, Any] = {
        "run_dir": str(run_dir),
        "model": str(chosen),
        "timesteps": int(model.num_timesteps),
        "val_history": val.history,
        # None when no val evaluation ran (--eval-freq 0): JSON has no -Infinity
        "val_reward": val.best_reward if math.isfinite(val.best_reward) else None,
    }
    return result


def _model(
    args: Args,
    config: Any,
    hp: Any,
    n_envs: int,
    done_steps: int,
    per_request: bool,
    found: tuple[int, Path] | None,
) -> Any:
    """The model on a fresh training env: restored from the ``found`` checkpoint (with its
    normalisation statistics and replay buffer), or built from the hyperparameters."""
    from stable_baselines3.common.vec_env import VecNormalize

    from agents.loading import restore_model
    from agents.sb3 import make_sb3_env
    from agents.training import load_replay_buffer

    env = make_sb3_env(config, n_envs, args.seed + done_steps, per_request)
    if hp.normalize is not None:
        env = VecNormalize(env, gamma=hp.algo_kwargs.get("gamma", 0.99), **hp.normalize)
    if not found:
        return _build_model(args, hp, env)
    from agents.policy import load_vecnormalize, sidecar

    overrides = {**hp.algo_kwargs, "verbose": args.verbose}
    try:
        model = restore_model(found[1], args.algo, env=env, overrides=overrides)
    except ValueError as exc:  # a checkpoint damaged on disk (the writes themselves are atomic)
        raise ValueError(
            f"--resume: {exc}; delete that checkpoint to resume from the one before it"
        ) from None
    try:
        if isinstance(env, VecNormalize):
            load_vecnormalize(sidecar(found[1]), env, found[1])
        off_policy = getattr(model, "replay_buffer", None) is not None
        if not load_replay_buffer(model, found[1]) and off_policy:
            raise ValueError(
                f"--resume: {str(found[1])!r} has no replay buffer beside it (its "
                ".replay.npz); resumed without it, the run would learn from an empty buffer. "
                "Restore the file, or start a new run"
            )
    except (MemoryError, OverflowError) as exc:  # a size declared by a damaged file
        raise ValueError(f"--resume: {str(found[1])!r}: {error_line(exc)}") from None
    # the random streams (torch's sampling, exploration) restart from a seed of their own, as
    # the env's do: a resumed run is reproducible, though not the uninterrupted run (whose
    # streams went on; the checkpoint does not hold them)
    model.set_random_seed(args.seed + done_steps)
    return model


def _write_args(
    run_dir: Path, record: dict[str, Any] | None, this_call: dict[str, Any], done_steps: int
) -> None:
    """``args.json``: the first call's record stays; resumptions are appended to it."""
    from distree_env.io import atomic_write_text

    if record is not None:
        record.setdefault("resumed", []).append({**this_call, "from_step": done_steps})
    atomic_write_text(run_dir / "args.json", json.dumps(record or this_call, indent=2, default=str))


def _callbacks(
    args: Args, config: Any, run_dir: Path, n_envs: int, hyperparameters: dict[str, Any]
) -> tuple[list[Any], Any, Any]:
    """The run's callbacks (run text, DistrEE metrics, checkpoints, val evaluation keeping the
    best model), with the checkpoint and val callbacks named for the caller."""
    from agents.sb3 import DistrEEMetricsCallback
    from agents.training import AtomicCheckpointCallback, RunTextCallback, ValEvalCallback

    checkpoint = AtomicCheckpointCallback(
        max(args.checkpoint_freq // n_envs, 1), run_dir / "checkpoints"
    )
    val = ValEvalCallback(
        config, max(args.eval_freq // n_envs, 1) if args.eval_freq else 0, args.val_requests,
        seed=AGENT_VAL_SEED, best_path=run_dir / "best_model.zip",
        history_path=run_dir / "val_history.json",
    )  # fmt: skip
    callbacks = [RunTextCallback(hyperparameters, config.to_dict()), DistrEEMetricsCallback(),
                 checkpoint, val]  # fmt: skip
    return callbacks, checkpoint, val


def ship(
    args: Args, config: Any, test_config: Any, final: Path, val_reward: float | None
) -> dict[str, Any]:
    """Evaluate the chosen model on the held-out split ``test_config`` (test exit, link and
    arrival traces) over ``--eval-seeds`` held-out seeds, copy it to
    ``--save-to`` and record it (with the metrics) in the manifest when it lies under
    checkpoints/ (replacing an earlier entry). Its normalisation statistics travel with it and
    are listed in its entry; a sidecar left by an earlier agent at that path is removed."""
    import numpy as np

    from agents.evaluation import METRICS, evaluate
    from agents.loading import load_agent
    from agents.policy import sidecar
    from agents.splits import held_out_seeds
    from distree_env.io import atomic_write_bytes
    from distree_env.manifest import checkpoints_dir, command_line, record

    policy = load_agent(str(final), trust=True, algo=args.algo)  # the run's own file
    seeds = held_out_seeds(args.eval_seeds)
    runs = [evaluate(policy, test_config, args.eval_requests, seed) for seed in seeds]
    metrics: dict[str, Any] = {
        "algo": args.algo,
        "scenario": args.scenario,
        "model_chosen_on": "val",
        "val_reward_per_request": None if val_reward is None else float(val_reward),
        "trained_on": config.trace,
        "evaluated_on": test_config.trace,
        "seeds": args.eval_seeds,
        "first_seed": seeds[0],
        "requests_per_seed": args.eval_requests,
    }
    for key in METRICS:
        values = np.array([r[key] for r in runs])
        metrics[key] = {"mean": float(values.mean()), "std": float(values.std())}
    metrics["exit_fractions"] = np.mean([r["exit_fractions"] for r in runs], axis=0).tolist()
    dest = Path(args.save_to)  # copied only now, so it disagrees with the manifest briefly
    if sidecar(final).is_file():
        atomic_write_bytes(sidecar(dest), sidecar(final).read_bytes())
    else:
        sidecar(dest).unlink(missing_ok=True)  # an earlier agent's statistics must not apply
    atomic_write_bytes(dest, final.read_bytes())
    try:
        dest.resolve().relative_to(checkpoints_dir().resolve())
    except ValueError:
        return {"saved_to": str(dest), "metrics": metrics}
    sidecars = [sidecar(dest)] if sidecar(dest).is_file() else []
    record(dest, command_line("experiments.train_agent"), metrics, sidecars=sidecars)
    return {"saved_to": str(dest), "metrics": metrics, "manifest": True}


if __name__ == "__main__":
    main()
