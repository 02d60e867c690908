"""DistrEEVecEnv: many DistrEE environments stepped by one set of numpy array operations."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from distree_env._core import BANK_MAX, BANK_MIN, METRICS, Dynamics, RequestTables
from distree_env.config import EnvConfig, build_config

__all__ = ["DistrEEVecEnv"]


class DistrEEVecEnv(VectorEnv):
    """A batch of ``num_envs`` DistrEE environments (see :class:`distree_env.env.DistrEEEnv`).

    ## Description
    Same dynamics as ``DistrEE-v0`` (one shared implementation, ``distree_env._core``), stepped
    for all sub-environments at once with array operations; no Python loop over environments.

    ## Action Space
    ``MultiDiscrete([2] * num_envs)``: per sub-env 0 = continue, 1 = exit.
    ``action_masks()`` returns ``[num_envs, 2]`` booleans.

    ## Observation Space
    ``Box(float32, (num_envs, obs_dim))``, columns named by ``observation_names`` (the layout of
    the single env).

    ## Rewards
    As the single env; ``float32 [num_envs]`` (the single env computes the same float32 values
    and returns them as Python floats). Reward components are not put in ``infos`` per
    step (speed); at an episode end ``infos["final_info"]`` holds their episode totals
    (``reward_correct``, ``reward_latency``, ``reward_deadline``; they sum to the return).

    ## Starting State
    As the single env, independently per sub-env, all from this env's ``np_random``.

    ## Episode End
    ``terminated[i]`` after sub-env i's last request; never truncated. Autoreset mode is
    ``AutoresetMode.SAME_STEP`` (what SB3 expects): the observation returned for a finished
    sub-env is already the first one of its next episode; its terminal observation is
    ``infos["final_obs"][i]`` (a float32 array ``[num_envs, obs_dim]`` rather than Gymnasium's
    object array, for speed; only rows where ``infos["_final_obs"]`` is True are meaningful)
    and its episode metrics (``accuracy``, ``compute_saving``,
    ``latency_mean_ms``, ``latency_p95_ms``, ``qos_rate``, ``exit_fractions``) are in
    ``infos["final_info"]`` (arrays over sub-envs, with ``_key`` masks, Gymnasium's convention),
    together with the episode sums of the reward parts ``reward_correct``, ``reward_latency``
    and ``reward_deadline`` (they add up to the episode return).

    ## Arguments
    ``DistrEEVecEnv(num_envs, config=None, scenario=None, **overrides)`` or
    ``gym.make_vec("DistrEE-v0", num_envs=64, vectorization_mode="vector_entry_point")``.
    With ``num_envs=1`` and the same seed it replays the single env exactly.
    For the Oracle: ``request_latencies_ms``, ``request_correct`` (``[num_envs, K]``) and
    ``oracle_actions()`` (``[num_envs]``).

    ## Version History
    * v0: initial version.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int = 1,
        config: EnvConfig | dict[str, Any] | None = None,
        *,
        scenario: str | None = None,
        render_mode: str | None = None,
        **overrides: Any,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)):
            raise ValueError(f"num_envs={num_envs!r} is not allowed: a positive integer")
        if not 1 <= int(num_envs) <= 1_000_000:
            raise ValueError(f"num_envs={num_envs!r} is not allowed: an integer in [1, 1000000]")
        if render_mode is not None:
            raise ValueError(f"render_mode={render_mode!r} is not allowed: only None")
        self.config: EnvConfig = build_config(config, scenario, overrides)
        self.render_mode = None
        self.num_envs = b = int(num_envs)
        self._dyn = dyn = Dynamics(self.config)
        self.num_exits, self.num_devices = dyn.K, dyn.D
        self.observation_names: tuple[str, ...] = dyn.observation_names
        self.single_action_space = spaces.Discrete(2)
        self.action_space = batch_space(self.single_action_space, b)
        self.single_observation_space = spaces.Box(dyn.obs_low, dyn.obs_high, dtype=np.float32)
        self.observation_space = batch_space(self.single_observation_space, b)

        # Episode ring: `slots` banks of `bank` episodes, handed out in order. An episode lasts
        # at most R*K steps, during which at most num_envs*K episodes start, so a ring of
        # (K + 2) * num_envs episodes is never refilled under a running episode (checked).
        # One sub-env uses BANK_MIN like the single env, so both replay the same episodes.
        # Memory: about (K + 2) * num_envs * R requests of 24 bytes, plus K * 68 bytes per
        # request when resources are continuous (iid / trace processes).
        self._bank = max(min(b, BANK_MAX), BANK_MIN)
        self._slots = -(-(dyn.K + 2) * max(b, self._bank) // self._bank)
        n_req = self._bank * self._slots * dyn.R
        self._ring_sbase = np.zeros(n_req, dtype=np.int64)  # trace row * K per request
        self._ring_tbase = np.zeros(n_req, dtype=np.int64)  # request-table row * K
        self._ring_exit = np.zeros(n_req, dtype=np.int64)  # exit taken by each request
        if dyn.tables is not None:
            self._tables = dyn.tables
            self._own_tables = False
        else:  # continuous resources: one table row per ring request
            self._tables = RequestTables(
                np.zeros(n_req * dyn.K),
                np.zeros(n_req * dyn.K),
                np.zeros(n_req * dyn.K),
                np.zeros((n_req * dyn.K, 2 * dyn.D + 3), dtype=np.float32),
            )
            self._own_tables = True
        self._slot, self._next = -1, 0
        self._req = np.zeros(b, dtype=np.int64)  # current request (ring index)
        self._start = np.zeros(b, dtype=np.int64)  # the episode's first request
        self._end = np.full(b, -1, dtype=np.int64)  # one past the episode's last request
        self._k = np.zeros(b, dtype=np.int64)
        self._jk = np.zeros(b, dtype=np.int64)  # request-table position of (request, k)
        self._fk = np.zeros(b, dtype=np.int64)  # trace position of (request, k)
        self._started = False

    # ---- gymnasium API ----------------------------------------------------------------------
    def reset(
        self,
        *,
        seed: int | list[int] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if options:
            raise ValueError(f"options={options!r} is not allowed: this env takes no options")
        if isinstance(seed, (list, tuple)):
            seed = [int(s) for s in seed]
            self._np_random = np.random.default_rng(seed)
            self._np_random_seed = seed[0] if seed else None
        else:
            super().reset(seed=seed)
        if seed is not None or not self._started:
            self._slot, self._next = -1, 0
        self._end[:] = -1  # release every episode
        self._load(np.arange(self.num_envs), self._req)
        self._k[:] = 0
        self._locate()
        self._started = True
        self._rec = self._dyn.gather(self._tables, self._jk, self._fk)
        return self._rec[:, self._dyn.obs_slice].copy(), {}

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._started:
            raise RuntimeError("call reset() before step()")
        a = self._check_actions(actions)
        k, rec, dyn = self._k, self._rec, self._dyn
        ex = np.logical_or(k == self.num_exits - 1, a)
        rewards = dyn.record_rewards(rec, ex)
        self._ring_exit[self._req] = k
        req = self._req + ex
        k_next = np.where(ex, 0, k + 1)
        done = req == self._end
        infos: dict[str, Any] = {}
        if done.any():
            idx = np.flatnonzero(done)
            infos = self._finish(idx, rec)
            self._load(idx, req)
        self._req, self._k = req, k_next
        self._locate()
        self._rec = dyn.gather(self._tables, self._jk, self._fk)
        return (
            self._rec[:, dyn.obs_slice].copy(),
            rewards,
            done,
            np.zeros(self.num_envs, dtype=bool),
            infos,
        )

    # ---- extras -----------------------------------------------------------------------------
    def action_masks(self) -> np.ndarray:
        """``[num_envs, 2]`` valid actions ``[continue, exit]``."""
        masks = np.ones((self.num_envs, 2), dtype=bool)
        masks[:, 0] = self._k < self.num_exits - 1
        return masks

    def _request_positions(self) -> tuple[np.ndarray, np.ndarray]:
        ar = np.arange(self.num_exits)
        jk = self._ring_tbase[self._req][:, None] + ar
        fk = self._ring_sbase[self._req][:, None] + ar
        return jk, fk

    @property
    def request_latencies_ms(self) -> np.ndarray:
        """``[num_envs, K]`` latency of each current request if it exits at each exit (ms)."""
        return self._tables.cum_ms[self._request_positions()[0]]

    @property
    def request_correct(self) -> np.ndarray:
        """``[num_envs, K]`` whether each exit of each current request is right."""
        return self._dyn.correct_flat[self._request_positions()[1]]

    def oracle_actions(self) -> np.ndarray:
        """``[num_envs]`` actions (0/1) of the reward-maximising exit choice per current request."""
        jk, fk = self._request_positions()
        r_lat = self._tables.r_latency[jk]
        exit_part = self._tables.exit_lat[jk] + self._dyn.rc_flat[fk] - r_lat
        best = self._dyn.oracle_exit(r_lat, exit_part, self._k)
        return (best == self._k).astype(np.int64)

    # ---- internals --------------------------------------------------------------------------
    def _check_actions(self, actions: Any) -> np.ndarray:
        a = actions if isinstance(actions, np.ndarray) else np.asarray(actions)
        kind = a.dtype.kind
        if a.shape != (self.num_envs,) or kind not in "iub":
            raise ValueError(
                f"actions with shape {a.shape} and dtype {a.dtype} are outside "
                f"MultiDiscrete([2] * {self.num_envs}); allowed: {self.num_envs} integers "
                "in {0, 1}"
            )
        if kind == "i" and a.dtype.itemsize == 8:
            bad = (a.view(np.uint64) > 1).any()
        else:
            bad = kind != "b" and (a.min() < 0 or a.max() > 1)
        if bad:
            raise ValueError(
                f"actions {a!r:.200} are outside MultiDiscrete([2] * {self.num_envs}); allowed: "
                "0 (continue) or 1 (exit)"
            )
        return a

    def _locate(self) -> None:
        """Table positions of every sub-env's current (request, exit)."""
        self._jk = self._ring_tbase.take(self._req) + self._k
        self._fk = self._ring_sbase.take(self._req) + self._k

    def _fill(self, slot: int, releasing: np.ndarray) -> None:
        """Generate a bank of episodes into ring slot ``slot`` (``releasing``: sub-envs whose
        episodes just ended)."""
        dyn, n, r = self._dyn, self._bank, self._dyn.R
        in_use = self._end >= 0
        in_use[releasing] = False
        if np.any((self._end[in_use] - 1) // r // n == slot):
            raise RuntimeError("internal error: episode ring slot refilled while in use")
        bank = dyn.generate(self.np_random, n)
        lo, hi = slot * n * r, (slot + 1) * n * r
        self._ring_sbase[lo:hi] = bank.sample_base.reshape(-1)
        self._ring_tbase[lo:hi] = bank.table_base.reshape(-1)
        if self._own_tables:
            self._ring_tbase[lo:hi] += lo * dyn.K
            own, new, kk = self._tables, bank.tables, dyn.K
            own.r_latency[lo * kk : hi * kk] = new.r_latency
            own.exit_lat[lo * kk : hi * kk] = new.exit_lat
            own.cum_ms[lo * kk : hi * kk] = new.cum_ms
            own.tail[lo * kk : hi * kk] = new.tail

    def _load(self, idx: np.ndarray, req: np.ndarray) -> None:
        """Start the next episodes (ring order) in sub-envs ``idx``; writes their ``req``."""
        m, n = len(idx), self._bank
        if 0 <= self._slot and self._next + m <= n:  # common case: the current bank has room
            first = self._slot * n + self._next
            episodes = np.arange(first, first + m)
            self._next += m
        else:
            episodes = np.empty(m, dtype=np.int64)
            filled = 0
            while filled < m:
                if self._slot < 0 or self._next >= n:
                    self._slot = (self._slot + 1) % self._slots
                    self._fill(self._slot, idx)
                    self._next = 0
                c = min(m - filled, n - self._next)
                first = self._slot * n + self._next
                episodes[filled : filled + c] = np.arange(first, first + c)
                self._next += c
                filled += c
        start = episodes * self._dyn.R
        req[idx] = start
        self._start[idx] = start
        self._end[idx] = start + self._dyn.R

    def _finish(self, idx: np.ndarray, rec: np.ndarray) -> dict[str, Any]:
        """Vector infos for sub-envs ``idx`` that just ended: final obs and episode metrics."""
        dyn, b, r, t = self._dyn, self.num_envs, self._dyn.R, self._tables
        reqs = self._start[idx][:, None] + np.arange(r)
        exits = self._ring_exit.take(reqs)
        jk_at = self._ring_tbase.take(reqs) + exits
        fk_at = self._ring_sbase.take(reqs) + exits
        values = np.zeros((b, len(METRICS) + dyn.K))
        values[idx] = dyn.episode_metrics(t, jk_at, fk_at, exits)
        mask = np.zeros(b, dtype=bool)
        mask[idx] = True
        final_info: dict[str, Any] = {}
        for c, key in enumerate(METRICS):
            final_info[key] = values[:, c]
            final_info[f"_{key}"] = mask
        final_info["exit_fractions"] = values[:, len(METRICS) :]
        final_info["_exit_fractions"] = mask
        return {
            # last step's records (private, never modified): rows of finished sub-envs hold
            # their terminal observations
            "final_obs": rec[:, dyn.obs_slice],
            "_final_obs": mask,
            "final_info": final_info,
            "_final_info": mask,
        }
