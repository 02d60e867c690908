"""stable-baselines3 glue: a ``VecEnv`` over the batched DistrEE env, and a metrics callback.

Why: SB3's own vectorisation runs one Python env per slot; ``DistrEEVecEnv`` steps all slots with
array operations, so the adapter hands SB3 whole batches and only touches Python per finished
episode. The callback puts DistrEE's episode metrics next to SB3's curves in TensorBoard.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecMonitor
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from agents.evaluation import step_values
from distree_env.config import EnvConfig
from distree_env.vector_env import DistrEEVecEnv

__all__ = [
    "DistrEEMetricsCallback",
    "SB3VecEnv",
    "make_sb3_env",
]


#: The info key of an answered request's latency (ms) in SB3's per-sub-env infos.
REQUEST_LATENCY = "distree_request_latency_ms"
#: The episode metric that is a percentile over requests, logged from the requests themselves.
P95_LATENCY = "episode_latency_p95_ms"


class SB3VecEnv(VecEnv):
    """SB3 ``VecEnv`` view of a :class:`DistrEEVecEnv` (SB3 semantics: auto-reset, list infos).

    At an episode end ``infos[i]`` holds ``terminal_observation``, ``TimeLimit.truncated`` and
    ``distree``: the env's episode metrics (accuracy, compute_saving, ...) for that episode.
    ``env_method("action_masks")`` serves MaskablePPO.

    ``request_episodes=True`` shows the learner every request as an episode of its own (``done``
    when a request ends). With isolated requests (no queue) this is the same problem, but it
    removes the discounting bias of a long episode and lets ``gamma = 1`` be used with short,
    low-variance returns; ``monitor`` statistics are then per request. On a v1-style stream
    (rewards paid on the exit step) it hides from the learner what an answer does to the
    requests waiting behind it; v2 configs (one request per episode, ``system`` timing) charge
    the request the wait of everyone queued while it is served (and, with
    ``reward.drain_weight``, the queue it leaves behind).
    """

    def __init__(self, venv: DistrEEVecEnv, request_episodes: bool = False) -> None:
        mode = venv.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"SB3VecEnv: the DistrEEVecEnv's autoreset_mode is {mode}; SB3 needs "
                "DistrEEVecEnv(..., autoreset_mode=AutoresetMode.SAME_STEP)"
            )
        self.venv = venv
        self.request_episodes = request_episodes
        self.render_mode = None
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        """Reset every sub-env with the seed SB3 set (``VecEnv.seed``), if any."""
        seed = self._seeds[0]
        obs, _ = self.venv.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        """Hold the actions for :meth:`step_wait` (the batched step is synchronous)."""
        self._actions = np.asarray(actions).reshape(self.num_envs)

    def step_wait(self) -> VecEnvStepReturn:
        """Step every sub-env; SB3's auto-reset semantics and list of infos."""
        if self.request_episodes:
            request_done = (self._actions == 1) | ~self.venv.action_masks()[:, 0]
        obs, rewards, terminated, truncated, infos = self.venv.step(self._actions)
        episode_done = terminated | truncated
        dones = request_done if self.request_episodes else episode_done
        out: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        answered = step_values(infos, "request_done").astype(bool)
        if answered.any():  # for percentiles over requests (DistrEEMetricsCallback)
            latency = step_values(infos, "request_latency_ms")
            for i in np.flatnonzero(answered).tolist():
                out[i][REQUEST_LATENCY] = float(latency[i])
        # A request end is a true termination (nothing to bootstrap): no terminal observation.
        if episode_done.any():
            final_obs, final_info = infos["final_obs"], infos["final_info"]
            keys = [key for key in final_info if not key.startswith("_")]
            for i in np.flatnonzero(episode_done).tolist():
                out[i].update(
                    terminal_observation=final_obs[i],
                    distree={key: final_info[key][i] for key in keys},
                )
                out[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, rewards.astype(np.float32), dones, out

    def close(self) -> None:
        """Close the batched env."""
        self.venv.close()

    def _count(self, indices: VecEnvIndices) -> int:
        return len(list(self._get_indices(indices)))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The batched env's attribute, once per selected sub-env (they share it)."""
        value = (
            getattr(self, attr_name)
            if attr_name == "render_mode"
            else getattr(self.venv, attr_name)
        )
        return [value] * self._count(indices)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Refused: the sub-envs share one batched env, so one cannot be changed alone."""
        raise AttributeError(f"SB3VecEnv: the batched env's attributes are read-only ({attr_name})")

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        """Call the batched env's method once; per-sub-env rows of an array result."""
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        rows = list(self._get_indices(indices))
        if isinstance(result, np.ndarray) and result.shape[:1] == (self.num_envs,):
            return [result[i] for i in rows]
        return [result] * len(rows)

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        """No sub-env is wrapped (SB3 asks before adding its Monitor)."""
        return [False] * self._count(indices)

    def has_attr(self, attr_name: str) -> bool:
        """Whether the batched env has ``attr_name``."""
        return hasattr(self.venv, attr_name)


def make_sb3_env(
    config: EnvConfig | dict | None,
    n_envs: int,
    seed: int,
    request_episodes: bool = False,
) -> VecMonitor:
    """A monitored SB3 vector env of ``n_envs`` DistrEE envs, seeded for reproducible runs
    (``request_episodes``: see :class:`SB3VecEnv`)."""
    venv = DistrEEVecEnv(n_envs, config, autoreset_mode=AutoresetMode.SAME_STEP)
    env = SB3VecEnv(venv, request_episodes)
    env.seed(seed)
    return VecMonitor(env)


#: Episode metrics that are totals over an episode; every other ``episode_*`` metric is a mean
#: (or share) over the episode's requests.
EPISODE_TOTALS = (
    "episode_return",
    "episode_reward_correct",
    "episode_reward_latency",
    "episode_reward_deadline",
    "episode_reward_drop",
    "episode_reward_queue",
    "episode_requests",
)


def metric_tag(key: str) -> str | None:
    """The TensorBoard tag of an episode metric of the env: ``distree_train/per_episode/<name>``
    for totals over an episode, ``distree_train/per_request/<name>`` for means over requests
    (``episode_`` dropped from the name); None for what is not a metric."""
    if not key.startswith("episode_") or key == "episode_done":
        return None
    scope = "per_episode" if key in EPISODE_TOTALS else "per_request"
    return f"distree_train/{scope}/{key.removeprefix('episode_')}"


class DistrEEMetricsCallback(BaseCallback):
    """Log the env's episode metrics of the training episodes that ended (means over the last
    ``window`` episodes), named so that totals and per-request figures cannot be mixed up:
    ``distree_train/per_request/<metric>`` (accuracy, qos_rate, reward_per_request, ...,
    ``exit_<k>_share``) and ``distree_train/per_episode/<metric>`` (return, reward parts,
    requests); see :func:`metric_tag`. The p95 latency is the percentile over the last
    ``window_requests`` answered requests: a mean of each episode's own p95 would be the mean
    latency when every request is an episode (v2, v3).
    """

    def __init__(self, window: int = 100, window_requests: int = 1000, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.window = window
        self.buffers: dict[str, deque] = {}
        self.latencies: deque = deque(maxlen=window_requests)

    def _add(self, key: str, value: float) -> None:
        buf = self.buffers.setdefault(key, deque(maxlen=self.window))
        buf.append(float(value))

    def _on_step(self) -> bool:
        infos: Sequence[dict[str, Any]] = self.locals.get("infos", ())
        self.latencies.extend(info[REQUEST_LATENCY] for info in infos if REQUEST_LATENCY in info)
        finished = [info["distree"] for info in infos if "distree" in info]
        for metrics in finished:
            for key, value in metrics.items():
                tag = metric_tag(key)
                if tag is None or key == P95_LATENCY:
                    continue
                if key == "episode_exit_fractions":
                    for k, frac in enumerate(np.asarray(value).tolist()):
                        self._add(f"distree_train/per_request/exit_{k}_share", frac)
                elif np.ndim(value) == 0 and np.isfinite(value):
                    self._add(tag, value)
        if finished:
            for key, buf in self.buffers.items():
                self.logger.record(key, float(np.mean(buf)))
            if self.latencies:
                p95 = float(np.percentile(self.latencies, 95))
                self.logger.record(metric_tag(P95_LATENCY), p95)
        return True
