"""DistrEEEnv: the exit decision of distributed early-exit inference as a Gymnasium environment."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from distree_env.config import EnvConfig, build_config, keyword_overrides
from distree_env.dynamics import (
    EXIT_FEATURES,
    Dynamics,
    observation_names,
)
from distree_env.render import RENDER_MODES, Renderer, RenderState

__all__ = [
    "DistrEEEnv",
    "check_action",
    "check_reset_args",
    "check_seed",
    "observation_table",
]

_ACTION_HELP = "allowed: 0 (continue) or 1 (exit), as int, bool or a 0-d integer array"
#: Seeded resets after episode ends (of a stream that goes on) before the env warns that each
#: one restarts the stream: an evaluation loop that seeds every episode, not a checker's few.
RESEED_WARNING_AFTER = 10
#: Meaning and range of each observation (``<d>`` = device index).
OBSERVATION_MEANINGS: dict[str, tuple[str, str]] = {
    "max_prob": ("largest class probability at the current exit", "[0, 1]"),
    "margin": ("top-1 minus top-2 class probability", "[0, 1]"),
    "entropy": ("entropy of the exit's prediction / log(classes)", "[0, 1]"),
    "feature_diff": (
        "DistrEE's feature difference to the previous exit (1 at exit 0; small = exits agree)",
        "[0, 1]",
    ),
    "progress": ("current exit k / (K - 1)", "[0, 1]"),
    "compute_<d>": ("measured compute share of device d", "[0.01, 1]"),
    "bandwidth_<d>": ("measured bandwidth share of device d's link", "[0.01, 1]"),
    "elapsed_ratio": (
        "time since this request ARRIVED / deadline (waiting included)",
        "[0, max_elapsed_ratio], clipped",
    ),
    "queue_len": (
        "requests waiting for device 0 / queue capacity (0 when isolated; with pipelining, "
        "those waiting between devices show in `next_wait_ratio`)",
        "[0, 1], clipped (`queue.overflow='admit'` can queue more)",
    ),
    "oldest_wait_ratio": (
        "age of the oldest waiting request / deadline (0 when none)",
        "[0, max_elapsed_ratio], clipped",
    ),
    "next_wait_ratio": (
        "only with `cluster.pipelining`: wait for the next device to finish the requests ahead"
        " / deadline (0 at the last exit)",
        "[0, max_elapsed_ratio], clipped",
    ),
}


def observation_table(names: tuple[str, ...] | None = None) -> str:
    """A Markdown table (name, meaning, range) of the observation layout ``names`` (default:
    the generic layout with ``compute_<d>``/``bandwidth_<d>`` rows), for the env card and README.

    :param names: ``env.observation_names`` of a concrete env, or None.
    """
    if names is None:
        names = (
            *EXIT_FEATURES,
            "compute_<d>",
            "bandwidth_<d>",
            *observation_names(0, pipelining=True)[len(EXIT_FEATURES) :],
        )
    lines = ["| name | meaning | range |", "| --- | --- | --- |"]
    for name in names:
        key = name
        for prefix in ("compute_", "bandwidth_"):
            if name.startswith(prefix):
                key = prefix + "<d>"
        meaning, bounds = OBSERVATION_MEANINGS[key]
        lines.append(f"| `{name}` | {meaning} | {bounds} |")
    return "\n".join(lines)


def check_action(action: Any) -> int:
    """Coerce one action to 0 or 1, or raise ValueError saying what is allowed."""
    if isinstance(action, (int, np.integer, np.bool_)):  # bool is an int: True = 1 = exit
        value = int(action)
    elif isinstance(action, np.ndarray) and action.shape == () and action.dtype.kind in "iub":
        value = int(action)
    else:
        raise ValueError(f"action={action!r:.100} is outside Discrete(2); {_ACTION_HELP}")
    if value != 0 and value != 1:
        raise ValueError(f"action={action!r:.100} is outside Discrete(2); {_ACTION_HELP}")
    return value


def check_seed(seed: Any) -> int | None:
    """None or an integer in [0, 2**63); anything else is a ValueError naming it."""
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed={seed!r:.100} is not allowed: None or an integer in [0, 2**63)")
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed={seed!r:.100} is not allowed: None or an integer in [0, 2**63)")
    return int(seed)


def check_reset_args(seed: Any, options: Any) -> int | None:
    """The checked ``seed`` of a ``reset`` call; ``options`` must be empty (none are taken)."""
    if options:
        raise ValueError(f"options={options!r:.100} is not allowed: this env takes no options")
    return check_seed(seed)


class DistrEEEnv(gym.Env[np.ndarray, np.int64]):
    """DistrEE: when should a distributed multi-exit network stop computing?

    ## Description
    A multi-branch (early-exit) network is split across edge devices whose compute and link
    bandwidth fluctuate (DistrEE, Peng et al., GLOBECOM 2024; the ``pipeline`` topology follows
    MDI-Exit). Inference requests arrive as a stream, wait in a bounded queue while the devices
    serve one request at a time, and run stage by stage; after stage k an exit head predicts and
    the agent decides: answer now (the devices turn to the next request) or continue. A request's
    deadline counts from its arrival, so waiting counts, and an early exit shortens the wait of
    the requests behind it. Resource levels evolve in wall-clock time, so later stages can meet
    other levels; the agent sees levels measured every ``measurement_period_ms``. Requests come
    from an exit trace (the recorded outputs of a real or synthetic network). With
    ``cluster.pipelining`` (``DistrEE-Pipelined-v2``) the pipeline's devices work on different
    requests at once: device 0 takes the next waiting request as soon as it finished stage 0 of
    the previous one, and stage k waits for device k to finish the requests ahead. Decisions
    then come request by request (all of one request's, then the next's), each observed at its
    own time: exact for a FIFO pipeline, where no request can delay one ahead of it. Scenarios:
    ``distree_env.SCENARIOS`` (sources in ``SCENARIO_SOURCES``).

    ## Action Space
    ``Discrete(2)``: 0 = continue to the next stage, 1 = exit (answer with this exit's
    prediction). At the last exit the request ends whatever the action. ``action_masks()``
    returns the valid actions (``[False, True]`` at the last exit) for MaskablePPO.

    ## Observation Space
    ``Box(float32)``, columns named by ``observation_names`` in this order (``<d>`` runs over
    devices; ``observation_table()`` renders it; the ranges are the values', the Box's low is
    0 in every column):

    <<OBSERVATION_TABLE>>

    ## Rewards
    Per request: ``correct_bonus`` if its answer is right (else ``-wrong_penalty``), minus
    ``latency_weight * latency / deadline`` (latency from arrival), minus ``deadline_penalty`` if
    late. When the latency and deadline costs are paid (``reward.timing``):
    ``"system"`` (v2 and v3 but the Pipelined ids, which use ``"stage"``: with pipelining
    several requests are in service at once): every decision pays ``latency_weight /
    deadline`` times the latency accrued since the previous decision by every request in the
    system, the one in service and those waiting, and ``deadline_penalty`` for each of them
    whose deadline passed meanwhile; continuing a request is charged the wait and the misses it
    causes in the queue, and a stream's costs still sum to its requests' own. Correctness is
    paid on the exit step.
    ``"request"`` (v1): everything on the exit step, continue steps earn 0.
    ``"stage"`` (v0): every decision pays the latency since the request's previous decision.
    A request dropped at a full queue costs ``wrong_penalty + deadline_penalty`` on the step
    during which it arrived. ``reward.drain_weight`` (v3: 1) adds at each episode end that
    weight times the change in the queue's drain cost over the episode (``reward_queue``; the
    cost of ``n`` waiting requests is the latency reward they would accrue served one after
    another at the mean last-exit service time; with pipelining ``n`` also counts the requests
    device 0 has started): what the queue a request leaves behind will
    cost the requests after it, which one-request episodes otherwise hide. A potential
    difference, it sums over a stream to the cost at the start minus the cost at the end. The
    parts are in ``info``. ``agents.evaluate`` scores every policy
    by the per-request reward of its answered and dropped requests, whatever the timing.

    ## Starting State
    ``reset(seed=s)`` starts a fresh stream at time 0 (empty queue; resource paths drawn from
    ``s``, replayed from random offsets; Markov processes at their stationary distribution); the
    first observation is the first request's exit 0.

    ## Episode End
    After ``requests_per_episode`` answered requests (v2: 1): ``episode_end="terminate-continue"``
    (v2) terminates, since with ``system`` timing the episode's return already holds the
    request's answer and the wait and missed deadlines it caused in the queue while it ran (not
    the longer queue it leaves behind), and ``reset()`` without a seed continues the stream
    (same clock, queue and resources). So a library's per-step discount (SB3's default
    gamma 0.99) spans at most one request's few decisions and cannot make answering fast look
    better than answering well.
    ``"truncate"`` (v1) truncates and the stream goes on (the observation returned is the next
    decision's, so value bootstrapping is exact); ``"terminate"`` (v0) terminates and
    ``reset()`` starts a fresh stream (with a request stream, the requests still waiting or in
    service are discarded, neither answered nor dropped, with the drops before them).

    ## Info
    Every step and ``reset`` return the same keys (numpy scalars; flags as fresh 0-d bool
    arrays, which Gymnasium's sync and async vector envs batch into bool arrays):
    ``reward_correct``,
    ``reward_latency``, ``reward_deadline``, ``reward_drop``, ``reward_queue`` (this step's
    reward parts; they sum to the reward), ``request_done`` (a request was answered this step),
    ``request_exit`` (-1 if none), ``request_correct``, ``request_latency_ms`` (from arrival)
    and ``request_wait_ms`` (from arrival to the start of stage 0; with pipelining the waits
    between devices are in the latency, not here; 0 if none), ``request_drops_before`` (the
    arrivals refused between the request admitted before the answered one and its own arrival:
    every drop belongs to the next request admitted, so summing it over a set of answered
    requests counts the drops among their arrivals, as ``agents.evaluate`` does; 0 if none),
    ``dropped`` (requests refused
    this step: the arrivals up to the end of the stage the decision starts, with pipelining up
    to the latest time a request has reached; so the step that answers a request also counts
    those arriving during the next request's stage 0, and the first step of a stream those
    during its first stage 0), ``queue_len`` (waiting for device 0 now), ``episode_done`` (this
    step ends an episode) and the episode metrics ``episode_*``
    (``distree_env.dynamics.EPISODE_METRICS``; 0 except when ``episode_done``): accuracy over
    answered requests, compute saving against last-exit, mean and p95 latency, QoS rate
    (answered in time over answered plus dropped), drop rate, overflow rate (admissions beyond
    the capacity in the episode's steps over its answered plus dropped requests: it can exceed
    1, as requests admitted now may be answered in a later episode), mean wait, utilisation,
    reward sums, return, reward per request, exit fractions. An episode's drops are those of its
    steps: with one request per episode, the arrivals refused from the end of its stage 0 to
    the end of the next request's, one stage later than the latency it pays; over a stream
    every drop is counted once. (``agents.evaluate`` counts ``request_drops_before`` instead:
    with pipelining the two differ, as a step's drops reach as far as the latest request.)

    ## Arguments
    ``gym.make("DistrEE-v3", render_mode=None, **overrides)`` or
    ``DistrEEEnv(config=EnvConfig(...) | dict | None, scenario=None, render_mode=None,
    **overrides)`` (a config or a scenario, not both; a registered id passes its scenario):
    overrides are ``EnvConfig`` fields, nested dicts (``reward={"latency_weight": 0.2}``) or
    dotted keys (``**{"reward.latency_weight": 0.2}``).
    A keyword that is no field raises TypeError; a wrong value raises ValueError naming it.
    For a hindsight Oracle: ``request_latencies_ms``, ``request_correct`` (``[K]``, the request
    in service, true future resource levels) and ``oracle_actions()``.

    ## Version History
    * Every id, later change (with ``cluster.stall_probability > 0`` only, zero in every
      registered id): the stalls' generator is spawned apart from the resource pool's (seeded
      ``[seed, stall_seed]``, at ``stall_seed=0`` it replayed the pool's draws), so every
      stall realisation differs from before.
    * Every id, later addition (the dynamics unchanged): the info's ``request_drops_before``,
      with which ``agents.evaluate`` counts the drops among the counted requests' arrivals (it
      counted the drops of the steps that answered them, which with pipelining reach as far as
      the latest request and overstated a saturated device 0's drop rate several-fold, the
      more the longer the stream).
    * v3: v2 with ``reward.drain_weight = 1``: each episode's end also pays the change in the
      queue's drain cost (``reward_queue``); the dynamics and ``EnvConfig()``'s defaults are
      v2's. Why: under bursty load SB3's and CleanRL's default PPO, seeing one request per
      episode, learned to continue too often and ended 0.03-0.04 reward per request below the
      project's agent trained with that term (``experiments.bench_learnability``).
    * v2, later additions (the earlier ids unchanged): ``DistrEE-Pipelined-v2``, the pipeline
      topology with ``cluster.pipelining`` (devices working on different requests at once),
      whose observation ends with ``next_wait_ratio`` (the wait for the next device);
      ``DistrEE-AzureCode-v2``, measured arrivals of a production inference service
      (``arrivals.csv="azure-llm-code"``). ``trace`` arrivals are now time-scaled to the
      configured rate (``rate_per_s`` or ``utilisation``; both None replays them as recorded).
    * v2: every request is an episode (``requests_per_episode=1``, ``terminate-continue``) and
      ``system`` reward timing charges each decision the latency accrued, and the deadlines
      passed, by every request in the system (``stage`` timing on ``DistrEE-Pipelined-v2``,
      where several requests are in service at once); the dynamics are v1's. Why: with v1's
      128-request episodes, libraries' default per-step discount favoured early exits (more
      answers per step) and SB3's and CleanRL's default PPO settled on always exiting at exit 0.
    * v1: request streams (Poisson, bursty MMPP, periodic, trace arrivals) with a bounded queue
      and deadlines from arrival; resources evolve in wall-clock time and are observed by
      periodic measurement; the parallel topology also pays for the input sent to every device
      and the continue decision sent back; a link-bound Wi-Fi scenario and replayed 3G/HSDPA
      link traces; per-request rewards and truncated stream episodes; observation adds
      ``queue_len`` and ``oldest_wait_ratio``, and ``elapsed_ratio`` replaces ``latency_ratio``.
    * v0: initial version (isolated requests, resources drawn per request); the v0 ids keep
      these dynamics (scenario ``isolated``) with the current observation layout and
      ``feature_diff`` in place of ``similarity``.
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 4}

    def __init__(
        self,
        config: EnvConfig | dict[str, Any] | None = None,
        *,
        scenario: str | None = None,
        render_mode: str | None = None,
        **overrides: Any,
    ) -> None:
        """:param config: an EnvConfig, a dict of fields, or None for the defaults.
        :param scenario: a name from ``distree_env.SCENARIOS`` (instead of ``config``).
        :param render_mode: None, ``"ansi"``, ``"rgb_array"`` or ``"human"``.
        :param overrides: config fields (dotted keys or nested dicts), applied last."""
        if render_mode is not None and render_mode not in RENDER_MODES:
            raise ValueError(
                f"render_mode={render_mode!r:.100} is not allowed: None or one of {RENDER_MODES}"
            )
        self.config: EnvConfig = build_config(
            config, scenario, keyword_overrides("DistrEEEnv", overrides)
        )
        self.render_mode = render_mode
        self._setup()

    def _setup(self) -> None:
        dyn = self._dyn = Dynamics(self.config, 1)
        self.num_exits, self.num_devices = dyn.K, dyn.D
        self.observation_names: tuple[str, ...] = dyn.tables.observation_names
        self.action_space = spaces.Discrete(2)
        high = dyn.tables.obs_high
        self.observation_space = spaces.Box(np.zeros_like(high), high.copy(), dtype=np.float32)
        self._renderer = (
            Renderer(self.render_mode, self.metadata["render_fps"])
            if self.render_mode in ("rgb_array", "human")
            else None
        )
        self._ready = False  # a step needs reset() first
        self._started = False  # a stream exists (reset() without seed may continue it)
        self._obs = np.zeros(len(self.observation_names), dtype=np.float32)
        self._last: tuple[int, bool, bool] | None = None
        self._episode_over = False
        self._terminate = self.config.episode_end != "truncate"
        self._fresh_stream = self.config.episode_end == "terminate"
        self._reseeded_episodes = 0  # seeded resets right after an episode of a going stream

    # ---- gymnasium API ----------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a fresh stream (with a seed, or when none exists) or go on with this one."""
        seed = check_reset_args(seed, options)
        super().reset(seed=seed)
        dyn = self._dyn
        if seed is not None and self._episode_over and not self._fresh_stream:
            self._warn_reseed()
        dyn.ensure_pool(seed, self.np_random)
        if seed is not None or not self._started or self._fresh_stream:
            dyn.restart(self.np_random, np.zeros(1, dtype=np.int64))
            self._obs = dyn.observe_one()
        else:  # the stream goes on: the last step's observation is the next decision's
            dyn.begin_episode_one()
        self._started = self._ready = True
        self._last, self._episode_over = None, False
        info = dyn.fresh_info()
        info["queue_len"] = dyn.counts[dyn.waiting_one()]
        if self.render_mode == "human":  # Gymnasium's convention: human mode draws by itself
            self.render()
        return self._obs.copy(), info

    def _warn_reseed(self) -> None:
        """Once per env, at the ``RESEED_WARNING_AFTER``-th seeded reset after an episode end:
        a seeded reset restarts a stream that episodes continue, so an evaluation loop that
        seeds every episode measures only first requests of an idle cluster (no queue), which
        flatters every policy. A few (``check_env``'s determinism checks) are fine."""
        self._reseeded_episodes += 1
        if self._reseeded_episodes == RESEED_WARNING_AFTER:
            gym.logger.warn(
                "reset(seed=...) restarts the request stream with an empty queue; with "
                f"episode_end={self.config.episode_end!r} the stream goes on across episodes, "
                "so seed only the first reset (or measure with agents.evaluate)"
            )

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply one exit decision (0 continue, 1 exit) to the request in service."""
        if type(action) is not int or action not in (0, 1):  # a plain 0/1 needs no check
            action = check_action(action)
        if not self._ready:
            raise gym.error.ResetNeeded("call reset() before step() (and after the episode ends)")
        dyn = self._dyn
        obs, reward, info, ended = dyn.step_one(self._np_random, action == 1)
        if ended:
            info.update(dyn.episode_metrics_one())
        if self._renderer is not None and info["request_done"]:
            self._last = (int(info["request_exit"]), bool(info["request_correct"]),
                          bool(info["request_latency_ms"] <= dyn.deadline))  # fmt: skip
        self._obs = obs.copy()  # the env's own: the caller may write into the one returned
        terminated = ended and self._terminate
        truncated = ended and not terminated
        self._ready = not ended
        self._episode_over = ended
        if self.render_mode == "human":
            self.render()
        return obs, reward, terminated, truncated, info

    def render(self) -> str | np.ndarray | None:
        """A frame of the cluster (``rgb_array``, ``human``) or a line of text (``ansi``)."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode=...")
            return None
        if self.render_mode == "ansi":
            if not self._started:
                return "DistrEE: call reset() first"
            parts = " ".join(
                f"{n}={v:.3f}" for n, v in zip(self.observation_names, self._obs, strict=True)
            )
            dyn = self._dyn
            return (
                f"t={dyn.t[0]:.1f} ms request {int(dyn.ep_answered[0])}/{dyn.R} "
                f"exit {int(dyn.k[0])}/{self.num_exits - 1}: {parts}"
            )
        assert self._renderer is not None
        dyn = self._dyn
        state = RenderState.from_observation(
            self.observation_names,
            self._obs,
            topology=dyn.tables.trace.topology,
            num_exits=self.num_exits,
            request_index=dyn.shown_request(0),
            requests_per_episode=dyn.R,
            queue_capacity=0 if dyn.isolated else dyn.capacity,
            last_request=self._last,
            episode_over=self._episode_over,
        )
        return self._renderer.render(state)

    def close(self) -> None:
        """Close the render window, if any."""
        if self._renderer is not None:
            self._renderer.close()
        super().close()

    # ---- extras -----------------------------------------------------------------------------
    def action_masks(self) -> np.ndarray:
        """Valid actions ``[continue, exit]``: only exit at the last exit."""
        return np.array([int(self._dyn.k[0]) < self.num_exits - 1, True])

    @property
    def request_latencies_ms(self) -> np.ndarray:
        """``[K]`` latency (ms, from arrival) of the request in service if it exits at each exit,
        at the true future resource levels (NaN before the current exit)."""
        return self._dyn.outlook()[0][0]

    @property
    def request_correct(self) -> np.ndarray:
        """``[K]`` whether each exit of the request in service predicts the label."""
        return self._dyn.outlook()[1][0]

    def oracle_actions(self) -> int:
        """The action now of the exit choice that maximises this request's own reward (hindsight:
        its correctness and latency at every later exit; blind to its effect on later requests)."""
        return int(self._dyn.oracle_actions()[0])

    # ---- pickling: tables and pools are rebuilt from the config and the pool seed ------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_renderer", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._renderer = (
            Renderer(self.render_mode, self.metadata["render_fps"])
            if self.render_mode in ("rgb_array", "human")
            else None
        )


DistrEEEnv.__doc__ = (DistrEEEnv.__doc__ or "").replace(
    "<<OBSERVATION_TABLE>>", observation_table().replace("\n", "\n    ")
)
