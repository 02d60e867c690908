"""Can a user learn a good exit policy with an RL library's defaults? Measured, not assumed.

    python -m experiments.bench_learnability                      # DistrEE-v3, 300k steps each
    python -m experiments.bench_learnability --env-id DistrEE-Bursty-v2 --learners sb3

Two learners, each with its library's default settings and nothing tuned for DistrEE:
- ``sb3``: ``PPO("MlpPolicy", make_vec_env(env_id, n_envs=8))`` (SB3's defaults, gamma 0.99);
- ``cleanrl``: CleanRL's ``ppo.py`` defaults (4 envs from ``gym.make_vec``, 128 steps, 4 epochs,
  4 minibatches, lr 2.5e-4 annealed, entropy 0.01, 64-64 tanh actor and critic).
Each trained policy and the project's tuned agent for the same scenario
(``checkpoints/agents/ppo-<scenario>.zip``) are evaluated with ``agents.evaluate`` on the
held-out split (test exit trace, test link and arrival traces) with the held-out seeds
(``agents.splits.held_out_seeds``, apart from the learners' own); the script prints reward per
request and the gap to the tuned agent (issue 9's target: within 0.01), and writes them to
``--out`` (JSON) after each learner, so that ``--resume`` continues a stopped run from the
learners it finished (a learner stopped mid-training trains again from its start).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.hyperparams import MAX_TIMESTEPS
from experiments.cli import (
    MAX_REQUESTS,
    MAX_SEED,
    MAX_THREADS,
    fail,
    one_line_errors,
    parse_args,
    require_int,
)

#: Issue 9: a default learner should come within this much reward per request of the tuned one.
TARGET_GAP = 0.01
#: The plain learners this script can train.
LEARNERS = ("sb3", "cleanrl")


@dataclass(frozen=True)
class Args:
    """Train PPO with SB3's and CleanRL's defaults on a DistrEE id and compare with the
    project's tuned agent on the held-out split."""

    env_id: str = field(default="DistrEE-v3", metadata={"help": "a registered DistrEE id"})
    timesteps: int = field(default=300_000, metadata={"help": "environment steps per learner"})
    learners: tuple[str, ...] = field(
        default=LEARNERS,
        metadata={"help": "the plain learners to run", "choices": list(LEARNERS)},
    )
    tuned: str = field(
        default="auto",
        metadata={"help": "the tuned agent: 'auto' (ppo-<scenario>), 'none', or a name/path"},
    )
    trust: bool = field(default=False, metadata={"help": "load a tuned agent not in MANIFEST"})
    seed: int = field(default=1, metadata={"help": "the learners' seed"})
    eval_seeds: int = field(default=5, metadata={"help": "held-out seeds of the final evaluation"})
    eval_requests: int = field(default=4096, metadata={"help": "requests per held-out seed"})
    threads: int = field(default=1, metadata={"help": "torch threads"})
    progress: bool = field(default=True, metadata={"help": "progress bars"})
    out: str = field(
        default="",
        metadata={"help": "the results (JSON), written after each learner; empty: "
                          "runs/learnability/<env-id>.json"},
    )  # fmt: skip
    resume: bool = field(
        default=False,
        metadata={"help": "continue a stopped run: take the learners --out holds for the same "
                          "arguments and tuned agent, train the others"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        require_int("timesteps", self.timesteps, 1, MAX_TIMESTEPS)
        require_int("eval_seeds", self.eval_seeds, 1, 1000)
        require_int("eval_requests", self.eval_requests, 1, MAX_REQUESTS)
        require_int("threads", self.threads, 1, MAX_THREADS)
        require_int("seed", self.seed, 0, MAX_SEED)

    @property
    def out_path(self) -> str:
        """Where the results go."""
        return self.out or f"runs/learnability/{self.env_id}.json"

    def measured(self) -> dict[str, Any]:
        """The arguments a learner's figures depend on (what a resumed run must share)."""
        kept = ("env_id", "timesteps", "seed", "eval_seeds", "eval_requests", "tuned", "trust")
        return {name: value for name, value in asdict(self).items() if name in kept}


class TorchActor:
    """A CleanRL actor network behind the common ``predict`` (greedy action)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """Greedy actions for a batch of observations (``state`` passes through)."""
        import torch

        with torch.no_grad():
            logits = self.actor(torch.as_tensor(np.asarray(observation, dtype=np.float32)))
        return logits.argmax(-1).numpy().astype(np.int64), state


def train_sb3(args: Args) -> Any:
    """SB3 PPO with every default, on ``make_vec_env(env_id, n_envs=8)``."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env(args.env_id, n_envs=8, seed=args.seed)
    model = PPO("MlpPolicy", env, seed=args.seed, device="cpu")
    model.learn(args.timesteps, progress_bar=args.progress)
    return model


def train_cleanrl(args: Args) -> TorchActor:
    """CleanRL's ``ppo.py`` (discrete actions) with its default hyperparameters."""
    import gymnasium as gym
    import torch
    from torch import nn
    from tqdm.auto import tqdm

    num_envs, num_steps, epochs, minibatches = 4, 128, 4, 4
    lr, gamma, lam, clip, ent, vf, max_norm = 2.5e-4, 0.99, 0.95, 0.2, 0.01, 0.5, 0.5
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    envs = gym.make_vec(args.env_id, num_envs=num_envs, vectorization_mode="sync")
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    n_act = int(envs.single_action_space.n)

    def layer(i: int, o: int, std: float = np.sqrt(2)) -> nn.Linear:
        lin = nn.Linear(i, o)
        nn.init.orthogonal_(lin.weight, std)
        nn.init.constant_(lin.bias, 0.0)
        return lin

    critic = nn.Sequential(layer(obs_dim, 64), nn.Tanh(), layer(64, 64), nn.Tanh(), layer(64, 1, 1))
    actor = nn.Sequential(
        layer(obs_dim, 64), nn.Tanh(), layer(64, 64), nn.Tanh(), layer(64, n_act, 0.01)
    )
    params = [*actor.parameters(), *critic.parameters()]
    opt = torch.optim.Adam(params, lr=lr, eps=1e-5)
    batch = num_envs * num_steps
    iterations = max(args.timesteps // batch, 1)
    obs_buf = torch.zeros((num_steps, num_envs, obs_dim))
    act_buf = torch.zeros((num_steps, num_envs), dtype=torch.long)
    logp_buf, rew_buf, done_buf, val_buf = (torch.zeros((num_steps, num_envs)) for _ in range(4))
    obs_np, _ = envs.reset(seed=args.seed)
    obs = torch.as_tensor(obs_np, dtype=torch.float32)
    done = torch.zeros(num_envs)
    for it in tqdm(range(iterations), desc="cleanrl ppo", disable=not args.progress):
        opt.param_groups[0]["lr"] = lr * (1.0 - it / iterations)
        for t in range(num_steps):
            obs_buf[t], done_buf[t] = obs, done
            with torch.no_grad():
                dist = torch.distributions.Categorical(logits=actor(obs))
                action = dist.sample()
                logp_buf[t], val_buf[t] = dist.log_prob(action), critic(obs).flatten()
            act_buf[t] = action
            obs_np, reward, term, trunc, _ = envs.step(action.numpy())
            rew_buf[t] = torch.as_tensor(reward, dtype=torch.float32)
            obs = torch.as_tensor(obs_np, dtype=torch.float32)
            done = torch.as_tensor(np.logical_or(term, trunc), dtype=torch.float32)
        with torch.no_grad():
            next_value = critic(obs).flatten()
            adv = torch.zeros_like(rew_buf)
            last = torch.zeros(num_envs)
            for t in reversed(range(num_steps)):
                nonterminal = 1.0 - (done if t == num_steps - 1 else done_buf[t + 1])
                nxt = next_value if t == num_steps - 1 else val_buf[t + 1]
                delta = rew_buf[t] + gamma * nxt * nonterminal - val_buf[t]
                last = delta + gamma * lam * nonterminal * last
                adv[t] = last
            returns = adv + val_buf
        b_obs, b_act = obs_buf.reshape(batch, obs_dim), act_buf.reshape(batch)
        b_logp, b_adv = logp_buf.reshape(batch), adv.reshape(batch)
        b_ret, b_val = returns.reshape(batch), val_buf.reshape(batch)
        for _ in range(epochs):
            for mb in np.array_split(rng.permutation(batch), minibatches):
                dist = torch.distributions.Categorical(logits=actor(b_obs[mb]))
                ratio = (dist.log_prob(b_act[mb]) - b_logp[mb]).exp()
                a = b_adv[mb]
                a = (a - a.mean()) / (a.std() + 1e-8)
                pg = torch.max(-a * ratio, -a * ratio.clamp(1 - clip, 1 + clip)).mean()
                v = critic(b_obs[mb]).flatten()
                v_clip = b_val[mb] + (v - b_val[mb]).clamp(-clip, clip)
                v_loss = 0.5 * torch.max((v - b_ret[mb]) ** 2, (v_clip - b_ret[mb]) ** 2).mean()
                loss = pg - ent * dist.entropy().mean() + vf * v_loss
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(params, max_norm)
                opt.step()
    envs.close()
    return TorchActor(actor)


def held_out_config(env_id: str) -> tuple[Any, str]:
    """The env id's config on the held-out split (test exit trace, test link traces), and its
    scenario name (for the tuned agent)."""
    import gymnasium as gym

    from agents.splits import on_split

    env = gym.make(env_id)
    config = getattr(env.unwrapped, "config", None)
    env.close()
    if config is None:
        raise ValueError("not a DistrEE environment (no config to evaluate it on)")
    scenario = str(gym.spec(env_id).kwargs.get("scenario", ""))
    test = on_split(config, "test")
    return test, scenario


def tuned_sha256(ref: str) -> list[str | None] | None:
    """The sha256 of the tuned agent's archive and statistics, as JSON keeps them (None: no
    such file)."""
    from agents.loading import agent_path
    from agents.policy import files_sha256

    path = agent_path(ref)
    return list(files_sha256(path)) if path.is_file() else None


def earlier_results(path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """The results of a stopped run at ``path`` for the same arguments (``expected``): its
    learners are taken as they are. Refused, naming what differs, when they were measured
    otherwise; nothing when there is no file."""
    from distree_env.io import read_text_capped

    if not path.is_file():
        return {}
    text = read_text_capped(path, "--resume: --out")  # its own message for a file too large
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("arguments"), dict):
            raise TypeError
    except (ValueError, TypeError):
        raise ValueError(
            f"--resume: {str(path)!r} is not a bench_learnability result (JSON with "
            "'arguments'); leave out --resume to start afresh"
        ) from None
    given = data["arguments"]
    differ = [f"{k} {given.get(k)!r} (now {v!r})" for k, v in expected.items() if given.get(k) != v]
    if differ:
        raise ValueError(
            f"--resume: {str(path)!r} was measured with {', '.join(differ)}; resume with its "
            "arguments, or leave out --resume to start afresh"
        )
    for name in LEARNERS:
        if name in data and not _is_learner_result(data[name]):
            print(
                f"--resume: {name}'s figures in {str(path)!r} are damaged (not finite numbers): "
                "measured again if asked for, else left out of the file",
                file=sys.stderr,
            )
    return {name: entry for name, entry in data.items() if _is_learner_result(entry)}


def _is_learner_result(entry: Any) -> bool:
    """Whether ``entry`` is a finished learner's figures (a damaged one is trained again)."""
    return isinstance(entry, dict) and all(
        _finite_number(entry.get(k)) for k in ("mean", "std", "train_minutes")
    )


def _finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


@one_line_errors
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run from command-line ``argv`` (default: ``sys.argv``); returns the figures printed."""
    args = parse_args(Args, argv)
    import torch

    import distree_env  # noqa: F401 (registers the ids)
    from agents import evaluate, load_agent
    from agents.splits import held_out_seeds

    torch.set_num_threads(args.threads)
    try:
        config, scenario = held_out_config(args.env_id)
    except Exception as exc:  # noqa: BLE001 (gym's errors: unknown id, bad kwargs)
        fail(f"--env-id {args.env_id!r}: {exc}")
    seeds = held_out_seeds(args.eval_seeds)

    def score(policy: Any) -> dict[str, float]:
        values = [evaluate(policy, config, args.eval_requests, s)["mean_reward"] for s in seeds]
        return {"mean": float(np.mean(values)), "std": float(np.std(values))}

    from distree_env.io import atomic_write_text, require_output_file, strict_json

    out = require_output_file(args.out_path, "--out")
    tuned_ref = f"ppo-{scenario}" if args.tuned == "auto" else args.tuned
    tuned_files = None if args.tuned == "none" else tuned_sha256(tuned_ref)
    arguments = {**args.measured(), "tuned_sha256": tuned_files}
    result: dict[str, Any] = {"env_id": args.env_id, "timesteps": args.timesteps}
    earlier = earlier_results(out, arguments) if args.resume else {}
    if args.tuned != "none":
        try:
            result["tuned"] = {"agent": tuned_ref, **score(load_agent(tuned_ref, args.trust))}
        except ValueError as exc:
            if args.tuned != "auto":
                fail(f"--tuned {args.tuned!r}: {exc}")
            print(f"note: no tuned agent to compare with ({exc})")
    trainers = {"sb3": train_sb3, "cleanrl": train_cleanrl}
    for learner in args.learners:
        if learner in earlier:
            result[learner] = earlier[learner]
            print(f"resuming: {learner} taken from {out}", file=sys.stderr)
        else:
            start = time.perf_counter()
            policy = trainers[learner](args)
            minutes = (time.perf_counter() - start) / 60
            result[learner] = {**score(policy), "train_minutes": minutes}
            record = {"arguments": arguments, **earlier, **result}  # learners not asked for stay
            atomic_write_text(out, strict_json(record, indent=2) + "\n")
        line = (
            f"{learner} defaults, {args.timesteps} steps: {result[learner]['mean']:.3f} per request"
        )
        if "tuned" in result:
            gap = result["tuned"]["mean"] - result[learner]["mean"]
            verdict = "within" if gap <= TARGET_GAP else "NOT within"
            line += (
                f"; tuned {result['tuned']['agent']} {result['tuned']['mean']:.3f}; gap "
                f"{gap:+.3f} ({verdict} the {TARGET_GAP:g} target)"
            )
        print(line, flush=True)
    record = {"arguments": arguments, **earlier, **result}
    atomic_write_text(out, strict_json(record, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"results -> {out}")
    return result


if __name__ == "__main__":
    main()
