"""One evaluation path for every exit policy: rules, the Oracle and learned SB3 agents.

Why one path: a comparison is only fair if every policy sees the same requests, the same
resource fluctuations and the same metric code. ``evaluate`` runs the batched environment with a
fixed seed and a fixed number of episodes per sub-environment (never "the first episodes to
finish", which would favour policies that answer quickly), and pools all requests.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from distree_env.config import EnvConfig, build_config
from distree_env.vector_env import DistrEEVecEnv

__all__ = ["METRICS", "evaluate"]

#: Scalar metrics returned by :func:`evaluate` (plus ``exit_fractions``, a list over exits).
METRICS = (
    "mean_reward",
    "accuracy",
    "compute_saving",
    "latency_mean_ms",
    "latency_p95_ms",
    "qos_rate",
)


def _prepare(policy: Any, venv: DistrEEVecEnv, seed: int) -> Any:
    """Wrap a bare SB3 model, bind rules to the env layout and seed stochastic rules."""
    from agents.policy import as_policy  # noqa: PLC0415 (keeps torch out of rule-only use)

    policy = as_policy(policy)
    if hasattr(policy, "bind"):
        policy.bind(venv)
    if hasattr(policy, "seed"):
        policy.seed(seed)
    return policy


def evaluate(
    policy: Any,
    config: EnvConfig | dict[str, Any] | None = None,
    n_requests: int = 2048,
    seed: int = 0,
    num_envs: int = 16,
) -> dict[str, Any]:
    """Run ``policy`` on at least ``n_requests`` requests and return pooled metrics.

    ``policy`` is anything with SB3's ``predict`` (a rule, ``Oracle``, an SB3 model or
    ``agents.load_agent``'s result). The same seed gives the same numbers, in any process.
    Returns ``mean_reward`` (reward per request), ``accuracy``, ``compute_saving``,
    ``latency_mean_ms``, ``latency_p95_ms``, ``qos_rate``, ``exit_fractions`` and ``n_requests``.
    """
    for name, value, low in (("n_requests", n_requests, 1), ("num_envs", num_envs, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"evaluate: {name}={value!r}; expected an integer >= {low}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"evaluate: seed={seed!r}; expected an integer >= 0")
    config = build_config(config)
    episodes = math.ceil(n_requests / config.requests_per_episode)
    num_envs = min(int(num_envs), episodes)
    per_env = math.ceil(episodes / num_envs)
    venv = DistrEEVecEnv(num_envs, config)
    policy = _prepare(policy, venv, int(seed))
    masked = bool(getattr(policy, "uses_action_masks", False))

    obs, _ = venv.reset(seed=int(seed))
    last = venv.num_exits - 1
    k = np.zeros(num_envs, dtype=np.int64)
    done_count = np.zeros(num_envs, dtype=np.int64)
    returns = np.zeros(num_envs)
    total_reward = 0.0
    exits: list[np.ndarray] = []
    latency: list[np.ndarray] = []
    correct: list[np.ndarray] = []
    saving: list[np.ndarray] = []
    episode_start = np.ones(num_envs, dtype=bool)
    while (done_count < per_env).any():
        kwargs = {"action_masks": venv.action_masks()} if masked else {}
        actions, _ = policy.predict(obs, episode_start=episode_start, deterministic=True, **kwargs)
        actions = np.asarray(actions, dtype=np.int64).reshape(num_envs)
        active = done_count < per_env
        ended = active & ((actions == 1) | (k == last))
        if ended.any():
            i = np.flatnonzero(ended)
            exits.append(k[i])
            latency.append(venv.request_latencies_ms[i, k[i]])
            correct.append(venv.request_correct[i, k[i]])
        obs, rewards, terminated, truncated, infos = venv.step(actions)
        returns += rewards
        episode_start = terminated | truncated
        k = np.where((actions == 1) | (k == last), 0, k + 1)
        if episode_start.any():
            counted = episode_start & active
            total_reward += float(returns[counted].sum())
            saving.append(infos["final_info"]["compute_saving"][counted])
            done_count += counted
            returns[episode_start] = 0.0
    exits_a, lat_a = np.concatenate(exits), np.concatenate(latency)
    correct_a = np.concatenate(correct)
    n = len(exits_a)
    return {
        "mean_reward": total_reward / n,
        "accuracy": float(correct_a.mean()),
        "compute_saving": float(np.concatenate(saving).mean()),
        "latency_mean_ms": float(lat_a.mean()),
        "latency_p95_ms": float(np.percentile(lat_a, 95)),
        "qos_rate": float((lat_a <= config.deadline_ms).mean()),
        "exit_fractions": (np.bincount(exits_a, minlength=last + 1) / n).tolist(),
        "n_requests": n,
    }
