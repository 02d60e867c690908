"""Transitions of a behaviour policy on a (val) environment: the data baselines are fitted to.

Why a module of its own: threshold grids, the stage-time table of ``DeadlineAware`` and the
model of the ``Planner`` all come from the same kind of data, a batch of
``(obs, action, reward, next obs)`` collected with the batched environment; collecting it in one
place keeps the "val only" check in one place too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.evaluation import make_eval_env, prepare_policy
from agents.splits import check_not_test, trace_split
from distree_env.config import EnvConfig, build_config

__all__ = ["Transitions", "collect", "require_val"]


def require_val(config: EnvConfig, purpose: str) -> None:
    """Raise ValueError when ``config``'s trace is a test split (by name, before reading it, or
    by its metadata): every choice is made on val."""
    check_not_test(config, purpose)
    if trace_split(config.trace) == "test":
        raise ValueError(f"{purpose}: trace {config.trace!r} is marked split='test' in metadata")


@dataclass(frozen=True)
class Transitions:
    """``N`` steps of a behaviour policy. ``exit_index`` is the exit of ``obs``; ``action`` is
    the effective one (1 where the request ended, the last exit included); ``next_obs`` is the
    observation that followed (the next request's first one after an exit, the next episode's
    first one after an episode end)."""

    names: tuple[str, ...]
    num_exits: int
    obs: np.ndarray
    exit_index: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    next_exit_index: np.ndarray

    def column(self, name: str, which: str = "obs") -> np.ndarray:
        """Feature ``name`` of ``obs`` or ``next_obs``."""
        return getattr(self, which)[:, self.names.index(name)]

    def __len__(self) -> int:
        return len(self.action)


def collect(
    policy: Any,
    config: EnvConfig | dict[str, Any] | None,
    n_steps: int = 65_536,
    seed: int = 0,
    num_envs: int = 64,
    purpose: str = "collect",
) -> Transitions:
    """At least ``n_steps`` transitions of ``policy`` on ``config`` (refused on a test trace).

    :param policy: the behaviour policy (anything :func:`agents.evaluation.evaluate` accepts).
    :param config: the environment; its trace must not be a test split.
    :param n_steps: number of transitions (rounded up to a multiple of ``num_envs``).
    :param seed: environment (and stochastic policy) seed.
    :param num_envs: sub-environments stepped together.
    :param purpose: named in the error raised for a test trace.
    """
    config = build_config(config)
    require_val(config, purpose)
    venv = make_eval_env(config, num_envs)
    policy = prepare_policy(policy, venv, seed)
    names = tuple(venv.observation_names)
    last = venv.num_exits - 1
    progress = names.index("progress")
    obs, _ = venv.reset(seed=seed)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "action", "reward", "next")}
    start = np.ones(num_envs, dtype=bool)
    for _ in range(-(-n_steps // num_envs)):
        actions, _ = policy.predict(obs, episode_start=start, deterministic=True)
        actions = np.asarray(actions, dtype=np.int64).reshape(num_envs)
        k = np.rint(obs[:, progress] * last).astype(np.int64)
        nxt, reward, terminated, truncated, _ = venv.step(actions)
        parts["obs"].append(obs)
        parts["action"].append(np.where(k >= last, 1, actions))
        parts["reward"].append(np.asarray(reward, dtype=np.float64))
        parts["next"].append(nxt)
        start = terminated | truncated
        obs = nxt
    o, n = np.concatenate(parts["obs"]), np.concatenate(parts["next"])
    return Transitions(
        names,
        venv.num_exits,
        o,
        np.rint(o[:, progress] * last).astype(np.int64),
        np.concatenate(parts["action"]),
        np.concatenate(parts["reward"]),
        n,
        np.rint(n[:, progress] * last).astype(np.int64),
    )
