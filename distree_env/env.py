"""DistrEEEnv: the exit decision of distributed early-exit inference as a Gymnasium environment."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from distree_env._core import METRICS, BankSource, Dynamics, EpisodeBank
from distree_env.config import EnvConfig, build_config

__all__ = ["DistrEEEnv", "check_action"]

_ACTION_HELP = "allowed: 0 (continue) or 1 (exit), as int or a 0-d integer array"


def check_action(action: Any) -> int:
    """Coerce one action to 0 or 1, or raise ValueError saying what is allowed."""
    if isinstance(action, (int, np.integer)):
        value = int(action)
    elif isinstance(action, np.ndarray) and action.shape == () and action.dtype.kind in "iub":
        value = int(action)
    else:
        raise ValueError(f"action={action!r} is outside Discrete(2); {_ACTION_HELP}")
    if value != 0 and value != 1:
        raise ValueError(f"action={action!r} is outside Discrete(2); {_ACTION_HELP}")
    return value


class DistrEEEnv(gym.Env[np.ndarray, np.int64]):
    """DistrEE: when should a distributed multi-exit network stop computing?

    ## Description
    A multi-branch (early-exit) network is split across edge devices whose compute and link
    bandwidth fluctuate (DistrEE, Peng et al., GLOBECOM 2024; the ``pipeline`` topology follows
    MDI-Exit). Each inference request runs stage by stage; after stage k an exit head predicts.
    The agent decides at every exit whether to answer now or to continue. An episode is a stream
    of ``requests_per_episode`` requests drawn from an exit trace (the recorded outputs of a real
    or synthetic network); the cluster's resources evolve from request to request.

    ## Action Space
    ``Discrete(2)``: 0 = continue to the next stage, 1 = exit (answer with this exit's
    prediction). At the last exit the request ends whatever the action. ``action_masks()``
    returns the valid actions (``[False, True]`` at the last exit) for MaskablePPO.

    ## Observation Space
    ``Box(float32)`` with names in ``observation_names``: ``max_prob``, ``margin`` (top-1 minus
    top-2 probability), ``entropy`` (normalised by log C), ``similarity`` (DistrEE's
    feature similarity to the previous exit, 0 at the first), ``progress`` (k / (K-1)),
    ``compute_<d>`` (available compute share of device d), ``bandwidth_<d>`` (available
    bandwidth share of device d's link), ``latency_ratio`` (latency spent on this request /
    deadline, clipped to ``max_latency_ratio``). All in [0, 1] except ``latency_ratio``.

    ## Rewards
    Every step costs ``latency_weight * stage_ms / deadline_ms`` for the stage that produced the
    current exit. Exiting adds ``correct_bonus`` if the prediction is right (else
    ``-wrong_penalty``) and ``-deadline_penalty`` if the request took longer than ``deadline_ms``.
    ``info`` holds ``reward_correct``, ``reward_latency``, ``reward_deadline`` every step.

    ## Starting State
    The first exit of the first request of an episode; requests are random trace samples;
    resource processes start from their stationary distribution (``markov``) or a random offset
    (``trace``).

    ## Episode End
    Terminated after the last exit decision of the last request (never truncated). ``info``
    then holds ``accuracy``, ``compute_saving`` (1 - FLOPs used / FLOPs of always taking the last
    exit), ``latency_mean_ms``, ``latency_p95_ms``, ``qos_rate`` (share of requests within the
    deadline) and ``exit_fractions`` (``[K]``). At the end of every request ``info["request"]``
    is a record: ``index``, ``exit``, ``correct``, ``latency_ms``, ``flops``, ``deadline_met``.

    ## Arguments
    ``gym.make("DistrEE-v0", config=EnvConfig(...) | dict | None, scenario=None, **overrides)``:
    ``scenario`` is ``"stable"``, ``"fluctuating"`` or ``"congested"``; overrides are
    ``EnvConfig`` fields, nested dicts (``reward={"latency_weight": 0.2}``) or dotted keys
    (``**{"reward.latency_weight": 0.2}``). Invalid values raise ValueError.

    For the Oracle: ``request_latencies_ms`` and ``request_correct`` (``[K]``, current request)
    and ``oracle_actions()`` (the action of the reward-maximising exit choice).

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        config: EnvConfig | dict[str, Any] | None = None,
        *,
        scenario: str | None = None,
        render_mode: str | None = None,
        **overrides: Any,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode={render_mode!r} is not allowed: None or one of "
                f"{self.metadata['render_modes']}"
            )
        self.config: EnvConfig = build_config(config, scenario, overrides)
        self.render_mode = render_mode
        self._dyn = Dynamics(self.config)
        self.num_exits, self.num_devices = self._dyn.K, self._dyn.D
        self.observation_names: tuple[str, ...] = self._dyn.observation_names
        self.action_space = spaces.Discrete(2)
        self.observation_space = spaces.Box(self._dyn.obs_low, self._dyn.obs_high, dtype=np.float32)
        self._source = BankSource(self._dyn)
        self._i = -1  # flat position r*K + k; -1 = needs reset
        self._r = self._k = 0

    # ---- gymnasium API ----------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if options:
            raise ValueError(f"options={options!r} is not allowed: this env takes no options")
        if seed is not None:
            self._source.clear()
        self._load(*self._source.take(self.np_random))
        return self._obs[0].copy(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if action.__class__ is not int or (action != 0 and action != 1):
            action = check_action(action)
        i = self._i
        if i < 0:
            raise gym.error.ResetNeeded("call reset() before step() (and after the episode ends)")
        k = self._k
        r_lat = self._rlat[i]
        if action == 0 and k != self._last:
            self._k = k + 1
            self._i = i + 1
            info = {"reward_correct": 0.0, "reward_latency": r_lat, "reward_deadline": 0.0}
            return self._obs[i + 1].copy(), r_lat, False, False, info
        # exit: the request ends here
        r_cor, r_dead, r = self._rcor[i], self._rdead[i], self._r
        latency = self._cum[i]
        self._exits[r] = k
        info = {
            "reward_correct": r_cor,
            "reward_latency": r_lat,
            "reward_deadline": r_dead,
            "request": {
                "index": r,
                "exit": k,
                "correct": self._corr[i],
                "latency_ms": latency,
                "flops": self._flops[k],
                "deadline_met": latency <= self._deadline,
            },
        }
        reward = self._rexit[i]
        if r + 1 == self._R:
            self._i = -1
            info.update(self._episode_metrics())
            return self._obs[i].copy(), reward, True, False, info
        self._r, self._k = r + 1, 0
        self._i = (r + 1) * self._K
        return self._obs[self._i].copy(), reward, False, False, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        if self._i < 0:
            return "DistrEE: episode over (call reset)"
        obs = self._obs[self._i]
        parts = " ".join(f"{n}={v:.3f}" for n, v in zip(self.observation_names, obs, strict=True))
        return f"request {self._r}/{self._R} exit {self._k}/{self._K - 1}: {parts}"

    # ---- extras -----------------------------------------------------------------------------
    def action_masks(self) -> np.ndarray:
        """Valid actions ``[continue, exit]``: only exit at the last exit."""
        return np.array([self._k < self._last, True])

    @property
    def request_latencies_ms(self) -> np.ndarray:
        """``[K]`` latency of the current request if it exits at each exit (ms)."""
        return self._ep_cum[min(self._r, self._R - 1)].copy()

    @property
    def request_correct(self) -> np.ndarray:
        """``[K]`` whether each exit of the current request predicts the label."""
        return self._ep_correct[min(self._r, self._R - 1)].copy()

    def oracle_actions(self) -> int:
        """The action (0/1) now of the exit choice that maximises this request's reward."""
        r = min(self._r, self._R - 1)
        r_lat = self._ep_rlat[r]
        best = self._dyn.oracle_exit(r_lat, self._ep_rexit[r] - r_lat, np.asarray(self._k))
        return int(best == self._k)

    # ---- internals --------------------------------------------------------------------------
    def _load(self, bank: EpisodeBank, j: int) -> None:
        dyn = self._dyn
        k, r = dyn.K, dyn.R
        self._K, self._R, self._last = k, r, k - 1
        self._deadline = dyn.deadline_ms
        tables = bank.tables if bank.tables is not None else dyn.tables
        ar = np.arange(k)
        jk = (bank.table_base[j][:, None] + ar).reshape(-1)  # [R*K] request-table positions
        fk = (bank.sample_base[j][:, None] + ar).reshape(-1)  # [R*K] trace positions
        rec = dyn.gather(tables, jk, fk)  # the vector env's step records, float32
        self._obs = np.ascontiguousarray(rec[:, dyn.obs_slice])
        r_cor, r_lat = rec[:, 0], rec[:, -2]
        r_exit = rec[:, -1] + r_cor  # the same float32 arithmetic as the vector env
        cum = tables.cum_ms.take(jk)
        correct = dyn.correct_flat.take(fk)
        missed = cum > dyn.deadline_ms
        self._rlat = r_lat.tolist()
        self._rexit = r_exit.tolist()
        self._rcor = r_cor.tolist()
        self._rdead = np.where(missed, -self.config.reward.deadline_penalty, 0.0).tolist()
        self._cum = cum.tolist()
        self._corr = correct.tolist()
        self._flops = dyn.cum_flops.tolist()
        self._ep_cum, self._ep_correct = cum.reshape(r, k), correct.reshape(r, k)
        r_lat64 = tables.r_latency.take(jk)
        self._ep_rlat = r_lat64.reshape(r, k)
        self._ep_rexit = (tables.exit_lat.take(jk) + dyn.rc_flat.take(fk)).reshape(r, k)
        self._tables, self._jk, self._fk = tables, jk, fk
        self._exits = [0] * r
        self._r = self._k = self._i = 0

    def _episode_metrics(self) -> dict[str, Any]:
        dyn = self._dyn
        exits = np.asarray(self._exits)[None, :]
        at = exits + np.arange(self._R) * self._K
        values = dyn.episode_metrics(self._tables, self._jk.take(at), self._fk.take(at), exits)[0]
        out: dict[str, Any] = {key: float(values[c]) for c, key in enumerate(METRICS[:5])}
        out["exit_fractions"] = values[len(METRICS) :].copy()
        return out
