"""DistrEEVecEnv: many DistrEE request streams stepped by one set of numpy array operations."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from distree_env.config import EnvConfig, build_config, keyword_overrides
from distree_env.dynamics import STEP_INFO, Dynamics, empty_episode_metrics, step_info_at_reset
from distree_env.env import check_reset_args
from distree_env.render import RENDER_MODES, Renderer, RenderState, draw_frame

__all__ = ["MAX_NUM_ENVS", "DistrEEVecEnv"]

#: Most sub-environments of one vector env.
MAX_NUM_ENVS = 1 << 20


class DistrEEVecEnv(VectorEnv):
    """A batch of ``num_envs`` DistrEE environments (see :class:`distree_env.env.DistrEEEnv`).

    ## Description
    The same dynamics as the single env (one implementation, ``distree_env.dynamics``), stepped
    for all sub-environments at once with array operations; no Python loop over environments.
    With ``num_envs=1`` and the same seed it replays the single env exactly (without
    ``independent_streams``, whose generators are the sub-envs' own).

    ## Action Space
    ``MultiDiscrete([2] * num_envs)``: per sub-env 0 = continue, 1 = exit.
    ``action_masks()`` returns ``[num_envs, 2]`` booleans.

    ## Observation Space
    ``Box(float32, (num_envs, obs_dim))``, columns named by ``observation_names``.

    ## Rewards
    As the single env, ``float64 [num_envs]``.

    ## Episode End and autoreset
    ``autoreset_mode`` (``metadata["autoreset_mode"]``): ``NEXT_STEP`` (default, Gymnasium's;
    every vector wrapper works): the step after a sub-env's episode ends resets it (its action
    is ignored, reward 0, the reset observation and info); ``SAME_STEP``: the finished sub-env
    is reset within the step, its terminal observation is in ``infos["final_obs"]`` (a float32
    array ``[num_envs, obs_dim]``, rows valid where ``infos["_final_obs"]``) and its step info in
    ``infos["final_info"]``; ``DISABLED``: no sub-env resets by itself; stepping one whose
    episode ended raises ``ResetNeeded`` until ``reset(options={"reset_mask": mask})`` (Gymnasium's
    partial reset, in every mode) resets it. Resetting a sub-env of a ``truncate`` scenario
    continues its stream. ``max_episode_steps`` truncates sub-env episodes after that many
    steps, as ``gym.make``'s ``TimeLimit`` does in the sync mode (also on a terminating step).

    ## Info
    The single env's keys with the same meaning, as arrays over sub-envs with Gymnasium's
    ``_key`` masks (all True: every key is present every step).

    ## Arguments
    ``DistrEEVecEnv(num_envs, config=None, scenario=None, render_mode=None,
    max_episode_steps=None, autoreset_mode=AutoresetMode.NEXT_STEP, episode_metrics=True,
    **overrides)`` or
    ``gym.make_vec("DistrEE-v3", num_envs=64, vectorization_mode="vector_entry_point")`` (a
    config or a scenario, not both, as for the single env).
    For the Oracle: ``request_latencies_ms``, ``request_correct`` (``[num_envs, K]``) and
    ``oracle_actions()`` (``[num_envs]``). ``call``, ``get_attr`` and ``set_attr`` act on the
    shared env and return one value per sub-env.

    ## Version History
    * v1: request streams, queues, resources in time (see the single env's card); NEXT_STEP
      default with SAME_STEP as an option; info keys equal to the single env's. Later, with
      no change to any observation or reward: partial resets (``reset_mask``), ``DISABLED``
      autoreset, bool actions, ``human`` drawing in ``step`` and ``reset``; and with
      ``max_episode_steps`` a step that terminates at the limit is also truncated, as
      ``TimeLimit`` does; ``independent_streams`` (a generator per sub-env for its arrivals
      and images, off by default: the default draws are unchanged; later also for its
      resource offset, its stalls and its fresh streams under ``episode_end="terminate"``).
    * v0: initial version.
    """

    def __init__(
        self,
        num_envs: int = 1,
        config: EnvConfig | dict[str, Any] | None = None,
        *,
        scenario: str | None = None,
        render_mode: str | None = None,
        max_episode_steps: int | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        disable_env_checker: bool | None = None,
        episode_metrics: bool = True,
        independent_streams: bool = False,
        **overrides: Any,
    ) -> None:
        """:param num_envs: sub-environments.
        :param config: see :class:`distree_env.env.DistrEEEnv`; :param scenario: likewise.
        :param render_mode: None, ``"ansi"``, ``"rgb_array"`` or ``"human"`` (``render()``
            returns one frame per sub-env; ``human`` shows sub-env 0).
        :param max_episode_steps: truncate sub-env episodes after this many steps (None: never).
        :param autoreset_mode: ``NEXT_STEP`` (default), ``SAME_STEP`` or ``DISABLED``.
        :param disable_env_checker: accepted for ``gym.make_vec`` parity; nothing to disable.
        :param episode_metrics: False leaves the ``episode_*`` values at zero (the keys stay;
            ``episode_done`` still marks the ends): for rollouts that compute their own figures
            (``agents.evaluate``), where computing them at every request's end (v2, v3) was a
            fifth of the step.
        :param independent_streams: True gives every sub-env a generator of its own for its
            resource offset, arrival times and images, seeded by ``reset``'s seed, its index
            and (``episode_end="terminate"``) how many fresh streams it started before, so that
            a sub-env's streams do not depend on the policy (with one generator for all, blocks
            are drawn for whichever sub-envs run low, which depends on the decisions): two
            policies reset with one seed then meet the same streams (hand-over stalls,
            ``cluster.stall_probability``, from a generator per sub-env too). The MMPP generator
            then runs once per sub-env at each refill: rollouts of many sub-envs under bursts
            are several times slower. Off by default, where one generator drives every sub-env
            (training); ``agents.evaluate`` turns it on.
        :param overrides: config fields, applied last."""
        del disable_env_checker  # the sync mode's make() accepts it; a batched env has no checker
        if isinstance(num_envs, (bool, np.bool_)) or not isinstance(num_envs, (int, np.integer)):
            raise ValueError(f"num_envs={num_envs!r:.100} is not allowed: a positive integer")
        if not 1 <= int(num_envs) <= MAX_NUM_ENVS:
            raise ValueError(
                f"num_envs={num_envs!r} is not allowed: an integer in [1, {MAX_NUM_ENVS}] "
                "(MAX_NUM_ENVS)"
            )
        if render_mode is not None and render_mode not in RENDER_MODES:
            raise ValueError(
                f"render_mode={render_mode!r:.100} is not allowed: None or one of {RENDER_MODES}"
            )
        if max_episode_steps is not None and (
            isinstance(max_episode_steps, (bool, np.bool_))
            or not isinstance(max_episode_steps, (int, np.integer))
            or not 1 <= int(max_episode_steps) <= 2**62
        ):
            raise ValueError(
                f"max_episode_steps={max_episode_steps!r:.100} is not allowed: None or a "
                "positive integer"
            )
        try:
            mode = AutoresetMode(autoreset_mode)
        except ValueError:
            mode = None
        if mode is None:
            raise ValueError(
                f"autoreset_mode={autoreset_mode!r:.100} is not allowed: an AutoresetMode "
                "(NEXT_STEP, SAME_STEP or DISABLED) or its value ('NextStep', 'SameStep', "
                "'Disabled')"
            )
        self.config: EnvConfig = build_config(
            config, scenario, keyword_overrides("DistrEEVecEnv", overrides)
        )
        self.render_mode = render_mode
        self.episode_metrics = bool(episode_metrics)
        self.independent_streams = bool(independent_streams)
        self.num_envs = int(num_envs)
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        self.metadata = {"autoreset_mode": mode, "render_modes": list(RENDER_MODES),
                         "render_fps": 4}  # fmt: skip
        self.autoreset_mode = mode  # read as an attribute by torchrl and gymnasium's SyncVectorEnv
        self._setup()

    def _setup(self) -> None:
        b = self.num_envs
        dyn = self._dyn = Dynamics(self.config, b)
        self.num_exits, self.num_devices = dyn.K, dyn.D
        self.observation_names: tuple[str, ...] = dyn.tables.observation_names
        self.single_action_space = spaces.Discrete(2)
        self.action_space = batch_space(self.single_action_space, b)
        high = dyn.tables.obs_high
        self.single_observation_space = spaces.Box(
            np.zeros_like(high), high.copy(), dtype=np.float32
        )
        self.observation_space = batch_space(self.single_observation_space, b)
        self._started = False
        self._autoreset = np.zeros(b, dtype=bool)
        self._elapsed = np.zeros(b, dtype=np.int64)
        self._all = np.arange(b)
        true = np.ones(b, dtype=bool)
        true.flags.writeable = False
        #: The ``_key`` mask of every info key (read-only, shared: the info keys never change).
        self._masks = {f"_{key}": true for key in step_info_at_reset(1, dyn.K)}
        #: A reset's value of every step-info key but ``queue_len`` (see _info_after_reset).
        self._neutral_step_info = {
            key: value[0]
            for key, value in step_info_at_reset(1, dyn.K).items()
            if key in STEP_INFO and key != "queue_len"
        }
        self._obs = np.zeros((b, len(self.observation_names)), dtype=np.float32)
        self._renderer: Renderer | None = None

    # ---- gymnasium API ----------------------------------------------------------------------
    def reset(
        self,
        *,
        seed: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start fresh streams (with a seed, or when none exist) or end every sub-env's episode
        as the single env's ``reset`` does.

        :param seed: one integer for the batch (one generator drives every sub-env, as in
            Gymnasium's ``CartPoleVectorEnv``, or with ``independent_streams`` seeds the
            sub-envs' own; a list of per-sub-env seeds is refused).
        :param options: only ``{"reset_mask": mask}``, Gymnasium's partial reset: a bool array
            ``[num_envs]`` with at least one True; only those sub-envs are reset (as ``reset()``
            without a seed resets them), the others keep their state and observation, and the
            info's ``_key`` masks are the mask. Takes ``seed=None``."""
        if isinstance(seed, (list, tuple, np.ndarray)):
            raise ValueError(
                f"seed={seed!r:.100} is not allowed: None or one integer in [0, 2**63) for the "
                "batch (one generator drives every sub-env; the sync and async modes take lists)"
            )
        if options is not None and not isinstance(options, dict):
            raise ValueError(
                f"options={options!r:.100} is not allowed: None or a dict, "
                '{"reset_mask": mask} its only key'
            )
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if options:
            raise ValueError(
                f"options={options!r:.100} is not allowed: the only option is 'reset_mask'"
            )
        seed = check_reset_args(seed, options)
        if mask is not None:
            return self._reset_masked(self._check_reset_mask(mask, seed))
        super().reset(seed=seed)
        dyn = self._dyn
        dyn.ensure_pool(seed, self.np_random)
        if seed is not None or not self._started:
            if self.independent_streams:
                dyn.own_generators(seed if seed is not None else dyn.pool_seed)
            dyn.restart(self.np_random, self._all)
        else:
            self._reset_envs(self._all)
        self._started = True
        self._autoreset[:] = False
        self._elapsed[:] = 0
        self._obs = dyn.observe()
        info = step_info_at_reset(self.num_envs, dyn.K)
        info["queue_len"] = dyn.waiting_now()
        if self.render_mode == "human":
            self.render()
        return self._obs.copy(), self._with_masks(info)

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One exit decision per sub-env (``[num_envs]`` of 0 continue / 1 exit)."""
        if not self._started:
            raise gym.error.ResetNeeded("call reset() before step()")
        a = self._check_actions(actions)
        dyn, b = self._dyn, self.num_envs
        resetting = self._autoreset.any()
        if resetting and self.autoreset_mode == AutoresetMode.DISABLED:
            raise gym.error.ResetNeeded(
                f"sub-envs {np.flatnonzero(self._autoreset).tolist()} ended their episode: "
                'with AutoresetMode.DISABLED reset them, reset(options={"reset_mask": ...})'
            )
        if resetting:  # NEXT_STEP: sub-envs whose episode ended last step reset now
            back = np.flatnonzero(self._autoreset)
            self._reset_envs(back)
            rewards, info, done = dyn.step(self.np_random, a, ~self._autoreset)
        else:
            rewards, info, done = dyn.step(self.np_random, a)
        self._elapsed += 1
        no = np.zeros(b, dtype=bool)
        terminate = self.config.episode_end != "truncate"
        terminated, truncated = (done, no) if terminate else (no, done.copy())
        if self.max_episode_steps is not None:  # as TimeLimit: also on a terminating step
            truncated |= self._elapsed >= self.max_episode_steps
        if resetting:
            self._elapsed[back] = 0
            terminated[back] = truncated[back] = False
        ended = terminated | truncated
        info.update(dyn.batch_episode_metrics(done, self.episode_metrics))
        obs = dyn.observe()
        if self.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP and ended.any():
            # As SyncVectorEnv: the step's info goes to final_info (its arrays are this step's
            # own), the info of the resets takes its place where an episode ended.
            idx = np.flatnonzero(ended)
            final_obs = obs.copy()
            self._reset_envs(idx)
            if self.config.episode_end == "terminate":  # else the stream goes on: same obs
                obs[idx] = dyn.observe(idx)
            infos = self._with_masks(self._info_after_reset(info, idx))
            ended_mask = ended.copy()
            ended_mask.flags.writeable = False  # one mask shared by every key
            infos["final_info"] = {**info, **{f"_{key}": ended_mask for key in info}}
            infos["_final_info"] = ended.copy()
            infos["final_obs"] = final_obs
            infos["_final_obs"] = ended.copy()
        else:
            infos = self._with_masks(info)
            if self.metadata["autoreset_mode"] != AutoresetMode.SAME_STEP:
                self._autoreset = ended.copy()
        self._obs = obs
        if self.render_mode == "human":
            self.render()
        return obs.copy(), rewards, terminated, truncated, infos

    def render(self) -> tuple[Any, ...] | None:
        """One frame (``rgb_array``) or text (``ansi``) per sub-env; ``human`` shows sub-env 0."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode=...")
            return None
        dyn = self._dyn
        if self.render_mode == "ansi":
            return tuple(
                " ".join(f"{n}={v:.3f}" for n, v in zip(self.observation_names, row, strict=True))
                for row in self._obs
            )
        states = [
            RenderState.from_observation(
                self.observation_names,
                self._obs[i],
                topology=dyn.tables.trace.topology,
                num_exits=self.num_exits,
                request_index=dyn.shown_request(i),
                requests_per_episode=dyn.R,
                queue_capacity=0 if dyn.isolated else dyn.capacity,
            )
            for i in range(self.num_envs if self.render_mode == "rgb_array" else 1)
        ]
        if self.render_mode == "human":
            if self._renderer is None:
                self._renderer = Renderer("human", self.metadata["render_fps"])
            self._renderer.render(states[0])
            return None
        return tuple(draw_frame(state) for state in states)

    # ---- vector env extras ------------------------------------------------------------------
    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call (or read) ``name`` on the env; one result per sub-env (rows of batched arrays)."""
        value = getattr(self, name)
        result = value(*args, **kwargs) if callable(value) else value
        return self._per_env(result)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """The attribute ``name``, one value per sub-env."""
        return self._per_env(getattr(self, name))

    def set_attr(self, name: str, values: Any) -> None:
        """Set ``name`` (one value, or a list with one equal value per sub-env: the sub-envs share
        one configuration)."""
        if isinstance(values, (list, tuple)):
            if len(values) != self.num_envs:
                raise ValueError(
                    f"set_attr({name!r}): {len(values)} values for {self.num_envs} sub-envs"
                )
            first = values[0]
            if any(v is not first and v != first for v in values[1:]):
                raise ValueError(
                    f"set_attr({name!r}): the sub-envs share one configuration; give one value"
                )
            values = first
        setattr(self, name, values)

    def action_masks(self) -> np.ndarray:
        """``[num_envs, 2]`` valid actions ``[continue, exit]``."""
        masks = np.ones((self.num_envs, 2), dtype=bool)
        masks[:, 0] = self._dyn.k < self.num_exits - 1
        return masks

    @property
    def request_latencies_ms(self) -> np.ndarray:
        """``[num_envs, K]`` latency (ms, from arrival) of each request in service if it exits
        at each exit (true future levels; NaN before the current exit)."""
        return self._dyn.outlook()[0]

    @property
    def request_correct(self) -> np.ndarray:
        """``[num_envs, K]`` whether each exit of each request in service is right."""
        return self._dyn.outlook()[1]

    def queue_drain_cost(self) -> np.ndarray:
        """``[num_envs]`` the cost of each stream's queue now, whose change over an episode
        ``reward.drain_weight`` pays (``Dynamics.queue_drain_cost``)."""
        return self._dyn.queue_drain_cost()

    def oracle_actions(self) -> np.ndarray:
        """``[num_envs]`` actions (0/1) of each request's own hindsight-best exit."""
        return self._dyn.oracle_actions()

    def close_extras(self, **kwargs: Any) -> None:
        """Close the ``human`` window, if one is open."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_renderer"] = None  # a window does not travel; tables and pool are rebuilt
        return state

    # ---- internals --------------------------------------------------------------------------
    def _per_env(self, result: Any) -> tuple[Any, ...]:
        if isinstance(result, np.ndarray) and result.ndim >= 1 and len(result) == self.num_envs:
            return tuple(result)
        return tuple(result for _ in range(self.num_envs))

    def _reset_envs(self, idx: np.ndarray) -> None:
        """Reset sub-envs ``idx`` as the single env's ``reset()`` without a seed does."""
        if self.config.episode_end == "terminate":
            self._dyn.restart(self.np_random, idx)
        else:
            self._dyn.begin_episode(idx)
        self._elapsed[idx] = 0

    def _check_reset_mask(self, mask: Any, seed: int | None) -> np.ndarray:
        where = "options['reset_mask']"
        if not isinstance(mask, np.ndarray) or mask.shape != (self.num_envs,) or mask.dtype != bool:
            raise ValueError(
                f"{where}={mask!r:.100} is not allowed: a numpy bool array of shape "
                f"({self.num_envs},) (num_envs)"
            )
        if not mask.any():
            raise ValueError(f"{where}={mask!r:.100} is not allowed: at least one True")
        if seed is not None:
            raise ValueError(
                f"seed={seed} with {where} is not allowed: the sub-envs share one generator, "
                "so a seed restarts every stream; pass seed=None, or reset all with the seed"
            )
        if not self._started:
            raise gym.error.ResetNeeded(f"call reset() once before a reset with {where}")
        mask = mask.copy()
        mask.flags.writeable = False  # one mask shared by every info key
        return mask

    def _reset_masked(self, mask: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset the sub-envs of ``mask``; the others' state, observation and pending
        autoreset stay as they are."""
        idx = np.flatnonzero(mask)
        dyn = self._dyn
        self._reset_envs(idx)
        self._autoreset[idx] = False
        self._obs[idx] = dyn.observe(idx)
        info = step_info_at_reset(self.num_envs, dyn.K)
        info["queue_len"] = dyn.waiting_now()
        out: dict[str, Any] = dict(info)
        out.update({f"_{key}": mask for key in info})
        if self.render_mode == "human":
            self.render()
        return self._obs.copy(), out

    def _info_after_reset(self, info: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, Any]:
        """SAME_STEP: the step's ``info`` with the reset's neutral values in sub-envs ``idx``
        (fresh arrays; ``queue_len`` keeps the queue as it is). The episode metrics are zero
        everywhere then: they are nonzero only where an episode ended, and every sub-env whose
        episode ended has just been reset."""
        out = {key: info[key].copy() for key in self._neutral_step_info}
        for key, value in self._neutral_step_info.items():
            out[key][idx] = value
        out["queue_len"] = info["queue_len"].copy()
        out.update(empty_episode_metrics(self.num_envs, self.num_exits))
        return out

    def _with_masks(self, info: dict[str, np.ndarray]) -> dict[str, Any]:
        """``info`` with Gymnasium's ``_key`` masks (every key is set in every sub-env)."""
        out: dict[str, Any] = dict(info)
        out.update(self._masks)
        return out

    def _check_actions(self, actions: Any) -> np.ndarray:
        a = actions if isinstance(actions, np.ndarray) else np.asarray(actions)
        if a.shape != (self.num_envs,) or a.dtype.kind not in "iub":
            raise ValueError(
                f"actions with shape {a.shape} and dtype {a.dtype} are outside "
                f"MultiDiscrete([2] * {self.num_envs}); allowed: {self.num_envs} integers "
                "in {0, 1}"
            )
        if ((a < 0) | (a > 1)).any():
            raise ValueError(
                f"actions {a!r:.200} are outside MultiDiscrete([2] * {self.num_envs}); allowed: "
                "0 (continue) or 1 (exit)"
            )
        return a
