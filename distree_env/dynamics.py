"""The one implementation of the environment's dynamics: an edge cluster serving a request stream.

Why one module: the single env (one stream) and the vector env (many) must never drift apart, so
both step a :class:`Dynamics` over a batch of ``B`` streams with array operations; the single env
is ``B = 1``.

The model, per stream. Requests arrive (``cluster.arrivals``) and wait in a bounded FIFO queue
(``cluster.queue``) while the devices serve one request at a time, stage by stage. A stage starts
at wall-clock time ``t`` and lasts ``LatencyModel.stage_ms`` at the resource levels of ``t``
(``cluster.resources``), so a request's later stages can meet other levels than its earlier ones.
After each stage the policy decides: exit (the request is answered now; the devices take the next
waiting request, or idle until the next arrival) or continue. Arrivals during a stage join the
queue, or are dropped when it is full. The observation shows the exit's confidence features, the
resource levels measured at the last measurement instant, the time this request has spent since
its arrival, the queue length and the age of the oldest waiting request.

Pipelining (``cluster.pipelining``, pipeline topology): device k runs stage k of one request
while device k-1 runs stage k-1 of the next. Device 0 serves the queue in arrival order whatever
happens downstream, so a request's stage 0 is run when it is admitted; stage k starts when
stage k-1 has ended and device k has finished the requests ahead (``free``). The decisions are
taken request by request, each request on its own clock ``t`` (so ``t`` can step back when the
next request starts): exact for a FIFO pipeline, since no request can delay one ahead of it.
Arrivals are admitted up to the latest time reached (``horizon``); what the policy sees of the
queue is what it was at the decision's own time.

Randomness: the resource pool (a sample path of every device's and link's level on the grid,
with the stage durations it implies) comes from the pool seed alone (the ``reset`` seed, or a
draw of the env's generator); then, from the env's generator, per fresh stream: the offset of
its path in the pool, the arrival process's start, and blocks of (arrival times, trace rows) as
the stream consumes them. ``cluster.resources.ResourceTimeline`` replays a stream's levels.

Speed: every per-stream table is a flat array read with ``take``, the stage durations are
precomputed per grid step, and a step is a few dozen array operations whatever ``B`` is.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, TypedDict

import numpy as np

from distree_env.cluster.arrivals import ArrivalProcess, ArrivalState
from distree_env.cluster.latency import LatencyModel, coldness
from distree_env.cluster.queue import QUEUE_HARD_CAP, WaitingQueue
from distree_env.cluster.resources import POOL_STEPS, ResourcePaths
from distree_env.config import EnvConfig
from distree_env.traces import ExitTrace, resolve_trace

__all__ = [
    "EPISODE_METRICS",
    "EpisodeMetrics",
    "EXIT_FEATURES",
    "NEXT_WAIT",
    "FLAG_KEYS",
    "STEP_INFO",
    "Dynamics",
    "Pool",
    "Tables",
    "describe",
    "empty_episode_metrics",
    "exit_features",
    "observation_names",
    "pool_steps",
    "step_info_at_reset",
    "tables_for",
]

#: Exit confidence features, in observation order.
EXIT_FEATURES = ("max_prob", "margin", "entropy", "feature_diff", "progress")
#: The observation of the wait for the next device (only with ``cluster.pipelining``).
NEXT_WAIT = "next_wait_ratio"
#: Per-step info keys (present every step and at reset) and their dtypes.
STEP_INFO: dict[str, type] = {
    "reward_correct": np.float64,
    "reward_latency": np.float64,
    "reward_deadline": np.float64,
    "reward_drop": np.float64,
    "reward_queue": np.float64,
    "request_done": np.bool_,
    "request_exit": np.int64,
    "request_correct": np.bool_,
    "request_latency_ms": np.float64,
    "request_wait_ms": np.float64,
    "request_drops_before": np.int64,
    "dropped": np.int64,
    "queue_len": np.int64,
}


class EpisodeMetrics(TypedDict):
    """The info keys that describe a finished episode: ``[B]`` arrays (``[B, K]`` exit
    fractions) from :meth:`Dynamics.episode_metrics`, scalars in the single env. In an
    env's info they are 0 except on the step that ends an episode (``episode_done`` True)."""

    episode_done: np.ndarray  # bool: this step ends an episode
    episode_requests: np.ndarray  # answered requests in the episode
    episode_accuracy: np.ndarray  # of the answered requests
    episode_compute_saving: np.ndarray  # 1 - FLOPs spent / FLOPs of answering at the last exit
    episode_latency_mean_ms: np.ndarray  # from arrival, answered requests
    episode_latency_p95_ms: np.ndarray
    episode_qos_rate: np.ndarray  # answered in time / (answered + dropped)
    episode_drop_rate: np.ndarray  # dropped / (answered + dropped)
    # admitted beyond the queue's capacity in the episode's steps / (answered + dropped): can
    # exceed 1 (a request admitted now may be answered in a later episode)
    episode_overflow_rate: np.ndarray
    episode_wait_mean_ms: np.ndarray  # in the queue, answered requests
    # share of the episode's time (from the previous answer to its last) that a request was in
    # service; with pipelining the overlapping requests' service times add up, clipped at 1
    episode_utilisation: np.ndarray
    episode_reward_correct: np.ndarray  # the episode's reward parts (sums)
    episode_reward_latency: np.ndarray
    episode_reward_deadline: np.ndarray
    episode_reward_drop: np.ndarray
    episode_reward_queue: np.ndarray
    episode_return: np.ndarray
    episode_reward_per_request: np.ndarray  # return / (answered + dropped)
    episode_exit_fractions: np.ndarray  # [.., K]: share of answered requests at each exit


#: The scalar episode metrics, in :class:`EpisodeMetrics`' order (the table columns of
#: :meth:`Dynamics.batch_episode_metrics`).
EPISODE_METRICS = tuple(
    name
    for name in EpisodeMetrics.__annotations__
    if name not in ("episode_done", "episode_exit_fractions")
)
#: Arrival times and trace rows are drawn in blocks of this many per stream (a power of two).
ARRIVAL_BLOCK = 32
#: The spawn key, under a seed's ``numpy.random.SeedSequence``, of the stalls' generator
#: (followed by ``cluster.stall_seed``, and with independent streams by the stream and its
#: restart). Why a key of its own: the resource pool is drawn from the seed itself, and
#: ``default_rng([seed, 0])`` is ``default_rng(seed)``, so stalls seeded by
#: ``[seed, stall_seed]`` replayed the pool's draws at ``stall_seed=0``. Independent streams
#: use the keys ``(stream, restart)``, below ``MAX_NUM_ENVS``; this one is above.
STALL_SPAWN_KEY = 2**32 - 1
#: The spawn key, under an evaluation's seed, of a stochastic policy's own generator
#: (``RandomExit.seed``): ``default_rng(seed)`` is the generator that draws the resource pool
#: (and Gymnasium's ``np_random``), so a policy seeded with it replayed those draws.
POLICY_SPAWN_KEY = 2**32 - 2
#: Samples used to estimate the mean last-exit service time (fixed seed: deterministic).
SERVICE_SAMPLES = 4096
_REWARD_PARTS = (
    "reward_correct", "reward_latency", "reward_deadline", "reward_drop", "reward_queue",
)  # fmt: skip


def observation_names(num_devices: int, pipelining: bool = False) -> tuple[str, ...]:
    """The observation layout for ``num_devices`` devices (one link each); with
    ``cluster.pipelining`` one more column, the wait for the next device."""
    return (
        *EXIT_FEATURES,
        *(f"compute_{d}" for d in range(num_devices)),
        *(f"bandwidth_{d}" for d in range(num_devices)),
        "elapsed_ratio",
        "queue_len",
        "oldest_wait_ratio",
        *((NEXT_WAIT,) if pipelining else ()),
    )


def pool_steps(num_envs: int) -> int:
    """Grid steps of the resource pool shared by ``num_envs`` streams: 2**15 up to 64 streams,
    then growing with their number (so that streams rarely replay the same stretch at once)."""
    return POOL_STEPS * (1 << max(0, (int(num_envs) - 1).bit_length() - 6))


_FEATURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def exit_features(trace: ExitTrace) -> tuple[np.ndarray, np.ndarray]:
    """Per (sample, exit): features ``[n*K, 5]`` float32 (row ``s*K + k``), correctness ``[n*K]``.

    Computed once per trace (cached, read-only), so a step never touches the probability tensor.
    """
    cached = _FEATURES.get(trace)
    if cached is not None:
        return cached
    probs = trace.probs.astype(np.float64)
    n, k, c = probs.shape
    top2 = np.partition(probs, c - 2, axis=-1)[..., -2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(probs > 0, probs * np.log(probs), 0.0)
    entropy = -plogp.sum(-1) / np.log(c)
    progress = np.broadcast_to(np.arange(k) / (k - 1) if k > 1 else np.ones(1), (n, k))
    feats = np.stack(
        [top2[..., 1], top2[..., 1] - top2[..., 0], entropy, trace.feature_diff, progress], axis=-1
    )
    feats = np.clip(feats, 0.0, 1.0).astype(np.float32).reshape(n * k, len(EXIT_FEATURES))
    correct = (probs.argmax(-1) == trace.labels[:, None]).reshape(-1)
    feats.flags.writeable = False
    correct.flags.writeable = False
    _FEATURES[trace] = (feats, correct)
    return feats, correct


@dataclass(frozen=True, eq=False)
class Pool:
    """A resource path drawn from one seed: measured levels ``[P, 2D]`` float32 (compute, then
    bandwidth) and the duration of every stage started at each grid step ``[P * K]`` float32."""

    levels: np.ndarray
    stage_ms: np.ndarray
    mask: int  # pool length - 1 (the length is a power of two)


@dataclass(frozen=True, eq=False)
class Tables:
    """Everything that depends only on the config (and its trace): shared read-only between
    environments in a process, built lazily once (:func:`tables_for`)."""

    config: EnvConfig
    trace: ExitTrace
    feats: np.ndarray
    correct: np.ndarray
    cum_flops: np.ndarray
    latency: LatencyModel
    paths: ResourcePaths
    arrivals: ArrivalProcess
    mean_service_ms: float
    observation_names: tuple[str, ...]
    obs_high: np.ndarray

    @property
    def num_exits(self) -> int:
        """Exits of the trace's network (K)."""
        return self.trace.num_exits

    @cached_property
    def feature_rows(self) -> list[list[float]]:
        """``feats`` as Python lists (the single-stream path builds observations from them)."""
        return self.feats.tolist()

    @property
    def num_devices(self) -> int:
        """Devices of the trace's cluster (D), one link each."""
        return self.trace.num_devices

    @lru_cache(maxsize=4)  # noqa: B019 - a handful of pools per shared table, on purpose
    def pool(self, seed: int, steps: int) -> Pool:
        """The resource pool drawn from ``seed`` (cached: a re-seeded env reuses it)."""
        levels, key = self.paths.draw_pool(np.random.default_rng(seed), steps)
        d = self.num_devices
        if key is None:
            stage = self.latency.all_stages_ms(levels[:, :d], levels[:, d:]).astype(np.float32)
        else:  # few distinct level combinations: one stage-time row per combination
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
            rows = levels[first]
            stage = self.latency.all_stages_ms(rows[:, :d], rows[:, d:]).astype(np.float32)
            stage = stage[inverse]
        pool = Pool(levels.astype(np.float32), stage.reshape(-1), levels.shape[0] - 1)
        pool.levels.flags.writeable = False
        pool.stage_ms.flags.writeable = False
        return pool


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tables_for(config: EnvConfig) -> Tables:
    """The shared :class:`Tables` of ``config`` (built on first use)."""
    trace = resolve_trace(config.trace)
    per_trace = _TABLES.setdefault(trace, {})
    tables = per_trace.get(config)
    if tables is None:
        tables = per_trace[config] = _build_tables(config, trace)
    return tables


def _build_tables(config: EnvConfig, trace: ExitTrace) -> Tables:
    feats, correct = exit_features(trace)
    latency = LatencyModel.from_config(config, trace)
    d = trace.num_devices
    paths = ResourcePaths.from_config(config.cluster, d)
    rng = np.random.default_rng(0)
    compute = paths.compute.stationary_sample(rng, SERVICE_SAMPLES)
    bandwidth = paths.bandwidth.stationary_sample(rng, SERVICE_SAMPLES)
    stages = latency.all_stages_ms(compute, bandwidth)
    if config.cluster.pipelining:
        if trace.topology != "pipeline":
            raise ValueError(
                f"cluster.pipelining=True is not allowed with trace {config.trace!r}: its "
                f"topology is {trace.topology!r}; pipelining needs a 'pipeline' trace"
            )
        # a pipeline answers at the pace of its slowest device, not of the whole request
        mean_service = float(stages.mean(axis=0).max())
    else:
        mean_service = float(stages.sum(axis=-1).mean())
    arr = config.arrivals
    if arr.rate_per_s is not None:
        rate_per_ms = arr.rate_per_s / 1e3
    elif arr.utilisation is not None and arr.kind != "isolated":
        rate_per_ms = arr.utilisation / mean_service
    else:
        rate_per_ms = 0.0
    names = observation_names(d, config.cluster.pipelining)
    high = np.ones(len(names), dtype=np.float32)
    for name in ("elapsed_ratio", "oldest_wait_ratio", NEXT_WAIT):
        if name in names:
            high[names.index(name)] = config.max_elapsed_ratio
    high.flags.writeable = False
    per_stage = trace.stage_flops.sum(axis=1) + trace.exit_flops
    return Tables(
        config,
        trace,
        feats,
        correct,
        np.cumsum(per_stage.astype(np.float64)),
        latency,
        paths,
        ArrivalProcess.from_config(arr, rate_per_ms),
        mean_service,
        names,
        high,
    )


def _read_only(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for value in arrays.values():
        value.flags.writeable = False
    return arrays


#: The info keys that are flags. A single stream gives each as a fresh 0-d bool array. Why not
#: ``np.bool_``: Gymnasium's sync and async vector envs batch it into object arrays; why not
#: ``bool``: torchrl reads a ``dtype`` from every info value.
FLAG_KEYS = ("request_done", "request_correct", "episode_done")
_NO = np.array(False)
_NO.flags.writeable = False  # copied, never handed out


class Dynamics:
    """``B`` request streams on one cluster configuration, stepped together.

    State, arrays over streams: ``t`` (now, ms), ``k`` (current exit), ``arrival`` (arrival
    time of the request in service), ``service_start``, ``sample`` (its trace row), ``request``
    (its index in the stream: the request clock's grid step), ``offset`` (where the stream's
    resource path starts in the pool); the waiting queue; a ring of upcoming arrivals; episode
    accumulators. Call :meth:`seed_pool` and :meth:`restart` before the first :meth:`step`.
    """

    def __init__(self, config: EnvConfig, num_envs: int) -> None:
        self.config = config
        self.tables = tb = tables_for(config)
        self.num_envs = b = int(num_envs)
        self.K, self.D = tb.num_exits, tb.num_devices
        self.R = config.requests_per_episode
        self.deadline = float(config.deadline_ms)
        self.isolated = config.arrivals.kind == "isolated"
        self.pipelined = config.cluster.pipelining
        self.capacity = config.queue.capacity
        #: Ring slots of the queue: in a pipeline, requests device 0 started but whose turn to
        #: decide has not come stay in it, beyond the capacity of waiting requests.
        self.dropping = config.queue.overflow == "drop"
        self.slots = self.capacity if self.dropping and not self.pipelined else QUEUE_HARD_CAP
        rw = config.reward
        self.per_stage = rw.timing == "stage"
        self.system_cost = rw.timing == "system"
        self.request_timing = rw.timing == "request"
        self.latency_cost = rw.latency_weight / self.deadline
        self.drop_cost = rw.drop_cost
        #: ``reward.drain_weight``: the queue term paid at episode ends; what one waiting
        #: request costs per unit of ``n (n + 1) / 2`` (see :meth:`drain_cost`); each stream's
        #: queue cost when its episode started.
        self.drain_weight = rw.drain_weight
        self._drain_scale = self.latency_cost * tb.mean_service_ms
        self.drain_start = np.zeros(b)
        self.pool_steps = pool_steps(b)
        #: One generator per stream for its resource offset, arrival process and images, and
        #: one for its stalls (see :meth:`own_generators`), or None: every stream draws from
        #: the caller's generator, and its stalls from :attr:`stall_rng`.
        self.stream_rngs: list[np.random.Generator] | None = None
        self.stall_rngs: list[np.random.Generator] | None = None
        self.stream_seed = 0
        self.stream_restarts = np.zeros(b, dtype=np.int64)
        self.pool_seed = -1
        self.pool: Pool | None = None
        self.stall_rng = np.random.default_rng(0)  # replaced by seed_pool
        self._rows = np.arange(b)
        self.t = np.zeros(b)
        self.k = np.zeros(b, dtype=np.int64)
        self.arrival = np.zeros(b)
        self.service_start = np.zeros(b)
        self.last_decision = np.zeros(b)
        #: ``system`` timing: latency (ms) already charged to the requests in the system, how
        #: many of them were already charged a missed deadline, and how many waiting requests
        #: (the oldest ones: the queue is in arrival order) are past their deadline.
        self.accrued = np.zeros(b)
        self.late_held = np.zeros(b, dtype=np.int64)
        self.late_queued = np.zeros(b, dtype=np.int64)
        self.sample = np.zeros(b, dtype=np.int64)
        #: Arrivals refused between the request admitted before the one in service and its
        #: arrival (reported when it is answered: ``request_drops_before``).
        self.drops_before = np.zeros(b, dtype=np.int64)
        self.request = np.zeros(b, dtype=np.int64)
        self.offset = np.zeros(b, dtype=np.int64)
        self.queue = WaitingQueue(b, self.slots)
        if self.pipelined:
            #: Pipelining: when each queued request starts (and ends) stage 0 on device 0, its
            #: coldness (flat, beside the queue's ring); when each device is free ``[B, K]``
            #: (device 0: after the last request admitted); how many queued requests had
            #: started by the last admission; the latest time any request reached (arrivals
            #: up to it are admitted).
            self.q_start = np.zeros(b * self.slots)
            self.q_end0 = np.zeros(b * self.slots)
            self.q_cold = np.zeros(b * self.slots)
            self.free = np.zeros((b, self.K))
            self.started = np.zeros(b, dtype=np.int64)
            self.horizon = np.zeros(b)
        # upcoming arrivals: ring of 2 blocks per stream, flat; a_next/a_end count draws
        self.a_time = np.zeros(b * 2 * ARRIVAL_BLOCK)
        self.a_sample = np.zeros(b * 2 * ARRIVAL_BLOCK, dtype=np.int64)
        self.a_next = np.zeros(b, dtype=np.int64)
        self.a_end = np.zeros(b, dtype=np.int64)
        self._ring_base = self._rows * (2 * ARRIVAL_BLOCK)
        cl = config.cluster
        self.request_clock = cl.clock == "request"
        self.handover, self.stall_p, self.stall_mean = (
            cl.handover_ms,
            cl.stall_probability,
            cl.stall_mean_ms,
        )
        self._inv_tick = 1.0 / cl.tick_ms
        lat = tb.latency
        #: Cold starts (``cluster.cold_start_ms``): whether there are any, the extra ms of each
        #: stage, the column of its exit device's compute share in a pool row, and the coldness
        #: in [0, 1) of each stream's request in service (fixed by the idle time before it).
        self.cold = bool(lat.cold_ms.any())
        self.cold_ms, self._cold_col = lat.cold_ms, lat.exit_device
        self.cold_tau_ms = lat.cold_tau_ms
        self.coldness = np.zeros(b)
        self._inv_period = 1.0 / cl.measurement_period_ms if cl.measurement_period_ms else 0.0
        self._period_ticks = cl.measurement_period_ms / cl.tick_ms
        self._inv_deadline = 1.0 / self.deadline
        self._inv_capacity = 1.0 / self.capacity
        self.arr_state = tb.arrivals.start(np.random.default_rng(0), b)
        # episode accumulators
        self.ep_answered = np.zeros(b, dtype=np.int64)
        self.ep_correct = np.zeros(b, dtype=np.int64)
        self.ep_flops = np.zeros(b)
        self.ep_met = np.zeros(b, dtype=np.int64)
        self.ep_dropped = np.zeros(b, dtype=np.int64)
        # dropped while a fresh stream served its first stage (in restart): paid at its next step
        self.carried_drops = np.zeros(b, dtype=np.int64)
        self.ep_overflow = np.zeros(b, dtype=np.int64)
        self.ep_wait = np.zeros(b)
        self.ep_busy = np.zeros(b)
        self.ep_start = np.zeros(b)  # the episode's window opens at the previous answer
        self.answered_at = np.zeros(b)  # when each stream last answered (0: stream start)
        self.ep_exits = np.zeros((b, self.K), dtype=np.int64)
        self.ep_latency = np.zeros((b, self.R))
        self.ep_rewards = np.zeros((b, len(_REWARD_PARTS)))
        #: One stream's info with every key at its neutral value (immutable numpy scalars,
        #: shared): what :meth:`fresh_info` copies.
        self.neutral_info: dict[str, Any] = {
            key: value[0] for key, value in _read_only(step_info_at_reset(1, self.K)).items()
        }
        #: ``np.int64(n)`` for every possible queue length ``n`` (built once, not per step).
        self.counts = tuple(np.int64(n) for n in range(self.slots + 1))

    # ---- lifecycle ----------------------------------------------------------------------------
    def seed_pool(self, seed: int) -> None:
        """Use the resource pool drawn from ``seed``, and restart the stalls' own random stream
        (seeded by ``seed`` and ``cluster.stall_seed``, apart from the pool's)."""
        self.pool_seed = int(seed)
        self.pool = self.tables.pool(self.pool_seed, self.pool_steps)
        stalls = np.random.SeedSequence(
            self.pool_seed, spawn_key=(STALL_SPAWN_KEY, self.config.cluster.stall_seed)
        )
        self.stall_rng = np.random.default_rng(stalls)

    def own_generators(self, seed: int) -> None:
        """From the next :meth:`restart` on, give every stream a generator of its own for its
        resource offset, arrival process and images, and one for its stalls, per stream and
        fresh stream (spawn keys ``(stream, n)`` and ``(STALL_SPAWN_KEY, stall_seed, stream,
        n)`` under ``seed`` for its ``n``-th restart). Why: with one generator for all, blocks
        are drawn for whichever streams run low, and stalls for whichever streams hand over,
        and when that happens depends on the policy, so two policies run with one seed meet
        the same arrivals only until the first refill; with generators of its own, a stream's
        draws depend on the seed alone, and a fresh stream's (``episode_end="terminate"``) on
        the seed and how many it follows, not on when the others restarted. It costs a Python
        loop over the streams at each refill (``agents.evaluate`` turns it on; training, where
        no two policies are compared, does not)."""
        self.stream_seed = int(seed)
        self.stream_restarts = np.zeros(self.num_envs, dtype=np.int64)
        placeholder = [np.random.default_rng(0)] * self.num_envs  # replaced by restart
        self.stream_rngs, self.stall_rngs = list(placeholder), list(placeholder)

    def _own_restart(self, envs: np.ndarray) -> None:
        """:meth:`restart`'s draws for ``envs`` from generators of their own (see
        :meth:`own_generators`)."""
        assert self.stream_rngs is not None and self.stall_rngs is not None
        assert self.pool is not None
        stall_seed = self.config.cluster.stall_seed
        for env in envs.tolist():
            n = int(self.stream_restarts[env])
            stream, stalls = (
                np.random.SeedSequence(self.stream_seed, spawn_key=key)
                for key in ((env, n), (STALL_SPAWN_KEY, stall_seed, env, n))
            )
            rng = np.random.default_rng(stream)
            self.stream_rngs[env] = rng
            self.stall_rngs[env] = np.random.default_rng(stalls)
            self.stream_restarts[env] += 1
            self.offset[env] = rng.integers(0, self.pool.levels.shape[0])
            for name, value in self.tables.arrivals.start(rng, 1).__dict__.items():
                getattr(self.arr_state, name)[env] = value[0]

    def ensure_pool(self, seed: int | None, rng: np.random.Generator) -> None:
        """Use the pool drawn from ``seed``; without one, keep the pool or draw one from ``rng``."""
        if seed is not None or self.pool is None:
            self.seed_pool(seed if seed is not None else int(rng.integers(2**63)))

    def restart(self, rng: np.random.Generator, envs: np.ndarray) -> None:
        """Start fresh streams in ``envs``: time 0, empty queue, a new resource offset and
        arrival process, the first request served up to its first exit."""
        assert self.pool is not None, "seed_pool() first"
        if self.stream_rngs is not None:
            self._own_restart(envs)
        else:
            self.offset[envs] = rng.integers(0, self.pool.levels.shape[0], size=envs.size)
            sub = self.tables.arrivals.start(rng, envs.size)
            for name, value in sub.__dict__.items():
                getattr(self.arr_state, name)[envs] = value
        self.t[envs] = 0.0
        self.accrued[envs] = 0.0
        self.late_held[envs] = 0
        self.late_queued[envs] = 0
        self.request[envs] = -1
        self.answered_at[envs] = 0.0
        self.carried_drops[envs] = 0
        self.queue.clear(envs)
        self.a_next[envs] = 0
        self.a_end[envs] = 0
        self._refill(rng, envs)
        self.begin_episode(envs)
        chosen = np.zeros(self.num_envs, dtype=bool)
        chosen[envs] = True
        if self.pipelined:
            self.free[envs] = 0.0
            self.started[envs] = 0
            self._start_next(rng, chosen)  # stage 0 is done: device 0 started it on admission
            self.horizon[envs] = self.t[envs]
            self._arrivals_pipelined(rng, self.carried_drops)
        else:
            self._start_next(rng, chosen)
            pos = self._positions(envs, measured=False)
            stage = self.pool.stage_ms.take(pos * self.K)  # stage 0
            if self.cold:
                stage = stage + self._cold_ms(pos, 0, self.coldness[envs])
            self.t[envs] += stage
            self._arrivals(rng, self.carried_drops)
        self.drain_start[envs] = self.queue_drain_cost()[envs]

    def _accumulators(self) -> tuple[np.ndarray, ...]:
        return (
            self.ep_answered, self.ep_correct, self.ep_flops, self.ep_met, self.ep_dropped,
            self.ep_overflow, self.ep_wait, self.ep_busy, self.ep_exits, self.ep_rewards,
        )  # fmt: skip

    def begin_episode(self, envs: np.ndarray) -> None:
        """Zero the episode accumulators of ``envs`` (the stream itself goes on); the episode's
        wall time counts from the stream's last answer (the previous episode's end)."""
        for acc in self._accumulators():
            acc[envs] = 0
        self.ep_start[envs] = self.answered_at[envs]

    def begin_episode_one(self) -> None:
        """:meth:`begin_episode` of the single stream (v2 calls it after every request)."""
        for acc in self._accumulators():
            acc[0] = 0
        self.ep_start[0] = self.answered_at.item()

    # ---- the step -----------------------------------------------------------------------------
    def step(
        self, rng: np.random.Generator, exit_now: np.ndarray, active: np.ndarray | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """One decision in every stream (``exit_now`` ``[B]``: nonzero = exit), or only where
        ``active`` (a bool mask; the others stay as they are). Returns ``(rewards [B], step
        info [B], episode_done [B])``.

        Written as whole-batch masked array operations (no gathers of the exiting subset):
        at a thousand streams that is several times faster than indexing subsets."""
        kk = self.K
        k_old = self.k
        ex = (exit_now != 0) | (k_old == kk - 1)
        if active is not None:
            ex &= active
        info = self._answer(ex)
        if self.system_cost:
            info["reward_latency"] = self._accrue(ex, active)
            info["reward_deadline"] = self._deadlines_passed(ex, active)
        elif self.per_stage:
            lat = (self.last_decision - self.t) * self.latency_cost
            if active is None:
                self.last_decision = self.t.copy()
            else:
                lat *= active
                self.last_decision = np.where(active, self.t, self.last_decision)
            info["reward_latency"] = lat
        cont = ~ex if active is None else ~ex & active
        self.k = k_old + cont
        if ex.any():
            self._start_next(rng, ex)
        if self.pipelined:
            return self._finish_step_pipelined(rng, info, cont, active)
        pos = self._positions(None, measured=False)
        stage = self.pool.stage_ms.take(pos * kk + self.k)
        if self.cold:
            stage = stage + self._cold_ms(pos, self.k, self.coldness)
        if active is not None:
            stage *= active
        self.t += stage
        dropped = self._carried(active)
        self._arrivals(rng, dropped)
        return self._pay(info, dropped, self.queue.size.copy())

    def _carried(self, active: np.ndarray | None) -> np.ndarray:
        """The drops counter of this step ``[B]``: those carried from a restart, paid now where
        the stream steps (``active``; a stream resetting this step keeps them for its first)."""
        carried = self.carried_drops
        if active is None:
            self.carried_drops = np.zeros(self.num_envs, dtype=np.int64)
            return carried
        self.carried_drops = np.where(active, 0, carried)
        return np.where(active, carried, 0)

    def _pay(
        self, info: dict[str, np.ndarray], dropped: np.ndarray, waiting: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """The end of :meth:`step`: drops, the queue, rewards and the episode accumulators."""
        drop = dropped * -self.drop_cost
        info["dropped"], info["reward_drop"] = dropped, drop
        info["queue_len"] = waiting
        done = self.ep_answered >= self.R
        rewards = info["reward_correct"] + info["reward_latency"] + info["reward_deadline"] + drop
        acc = self.ep_rewards
        acc[:, 0] += info["reward_correct"]
        acc[:, 1] += info["reward_latency"]
        acc[:, 2] += info["reward_deadline"]
        acc[:, 3] += drop
        if self.drain_weight:
            cost = self.queue_drain_cost()
            queue_part = np.where(done, self.drain_weight * (self.drain_start - cost), 0.0)
            self.drain_start = np.where(done, cost, self.drain_start)
            rewards = rewards + queue_part
            acc[:, 4] += queue_part
        else:
            queue_part = np.zeros(self.num_envs)
        info["reward_queue"] = queue_part
        return rewards, info, done

    def drain_cost(self, n: Any) -> Any:
        """The latency reward (as a positive cost) ``n`` queued requests (an int or an array)
        would accrue if served one after another at the mean last-exit service time: the i-th
        waits through i services, ``n (n + 1) / 2`` in all. ``reward.drain_weight`` pays its
        change over an episode."""
        return self._drain_scale * (n * (n + 1) / 2)

    def queue_drain_cost(self) -> np.ndarray:
        """``[B]`` :meth:`drain_cost` of every stream's queue now (with pipelining the queue
        also holds the requests device 0 started)."""
        return self.drain_cost(self.queue.size)

    def _accrue(self, ex: np.ndarray, active: np.ndarray | None) -> np.ndarray:
        """``system`` timing: the latency cost accrued since the previous decision by every
        request in the system (the one in service and those waiting), ``[B]``; the requests
        answered now (``ex``) leave the system."""
        t, arrival = self.t, self.arrival
        held = (self.queue.size + 1) * t - (self.queue.time_sum + arrival)
        cost = (self.accrued - held) * self.latency_cost
        left = held - (t - arrival) * ex
        if active is None:
            self.accrued = left
            return cost
        self.accrued = np.where(active, left, self.accrued)
        return cost * active

    def _deadlines_passed(self, ex: np.ndarray, active: np.ndarray | None) -> np.ndarray:
        """``system`` timing: ``-deadline_penalty`` for every request in the system whose
        deadline passed since the previous decision, ``[B]``; the requests answered now
        (``ex``) leave the system."""
        t, queue, deadline = self.t, self.queue, self.deadline
        late_q = self.late_queued
        while True:  # the waiting requests that passed their deadline: a prefix of the queue
            more = late_q < queue.size
            oldest = queue.time.take(queue.base + (queue.head + late_q) % queue.slots)
            passed = more & ((t - oldest) > deadline)
            if not passed.any():
                break
            late_q = late_q + passed
        serving = (t - self.arrival) > deadline
        late_now = late_q + serving
        passed_now = (late_now - self.late_held) * -self.config.reward.deadline_penalty
        left = late_now - (serving & ex)
        if active is None:
            self.late_queued, self.late_held = late_q, left
            return passed_now
        self.late_queued = np.where(active, late_q, self.late_queued)
        self.late_held = np.where(active, left, self.late_held)
        return passed_now * active

    def _answer(self, ex: np.ndarray) -> dict[str, np.ndarray]:
        """Requests where ``ex`` exit at their current exit now: the step info's request and
        reward parts, and the episode accumulators."""
        rw, k = self.config.reward, self.k
        t = self.t
        latency = (t - self.arrival) * ex
        correct = self.tables.correct.take(self.sample * self.K + k) & ex
        late = (latency > self.deadline) & ex
        wait = (self.service_start - self.arrival) * ex
        info = {
            "reward_correct": (correct * (rw.correct_bonus + rw.wrong_penalty) - rw.wrong_penalty)
            * ex,
            "reward_latency": latency * -self.latency_cost,
            "reward_deadline": late * -rw.deadline_penalty,
            "reward_drop": None,
            "reward_queue": None,
            "request_done": ex,
            "request_exit": np.where(ex, k, -1),
            "request_correct": correct,
            "request_latency_ms": latency,
            "request_wait_ms": wait,
            "request_drops_before": self.drops_before * ex,
            "dropped": None,
            "queue_len": None,
        }
        e = np.flatnonzero(ex)
        if e.size:
            slot = np.minimum(self.ep_answered.take(e), self.R - 1)
            self.ep_latency.reshape(-1)[e * self.R + slot] = latency.take(e)
            self.ep_exits.reshape(-1)[e * self.K + k.take(e)] += 1
        self.ep_answered += ex
        self.ep_correct += correct
        self.ep_met += ex & ~late
        self.ep_flops += self.tables.cum_flops.take(k) * ex
        self.ep_wait += wait
        self.ep_busy += (t - self.service_start) * ex
        # max: with pipelining a later request exiting early can answer before the one ahead
        np.copyto(self.answered_at, np.maximum(self.answered_at, t), where=ex)
        return info

    def _start_next(self, rng: np.random.Generator, ex: np.ndarray) -> None:
        """Streams where ``ex`` (devices free at ``t``) take the next request: the oldest
        waiting one, or the next arrival (idling until it comes); ``isolated``: a request
        arriving now. Pipelining: the oldest queued request (admitting the next arrival first
        where none is queued), whose stage 0 device 0 ran on admission: ``t`` is its end."""
        if self.pipelined:
            self._start_next_pipelined(rng, ex)
            return
        t = self.t
        if self.isolated:
            arrival, sample = t, self._take(rng, ex)[1]
        else:
            waiting = self.queue.size > 0
            queued_at, queued, queued_drops = self.queue.pop(ex & waiting)
            self.late_queued -= ex & waiting & (self.late_queued > 0)  # the head was the oldest
            arrives_at, arriving = self._take(rng, ex & ~waiting)
            arriving_drops = self.queue.admit_direct(ex & ~waiting)
            arrival = np.where(waiting, queued_at, arrives_at)
            sample = np.where(waiting, queued, arriving)
            self.drops_before = np.where(
                ex, np.where(waiting, queued_drops, arriving_drops), self.drops_before
            )
        start = np.maximum(t, arrival)
        if self.handover or self.stall_p:
            busy = np.zeros(self.num_envs, dtype=bool) if self.isolated else waiting & ex
            start = start + self._handover_ms(busy)
        self.arrival = np.where(ex, arrival, self.arrival)
        self.sample = np.where(ex, sample, self.sample)
        if self.cold:
            self.coldness = np.where(ex, coldness(start - t, self.cold_tau_ms), self.coldness)
        self.service_start = np.where(ex, start, self.service_start)
        self.last_decision = np.where(ex, arrival, self.last_decision)
        self.t = np.where(ex, start, t)
        self.k = np.where(ex, 0, self.k)
        self.request += ex

    def _cold_ms(self, pos: np.ndarray, k: Any, cold: np.ndarray) -> np.ndarray:
        """Cold-start time of stage ``k`` (an index or one per request) of requests of coldness
        ``cold`` at pool rows ``pos``: stretched by the exit device's compute share, as the exit
        head and the device stages are."""
        assert self.pool is not None
        share = self.pool.levels.take(pos * (2 * self.D) + self._cold_col[k])
        return cold * self.cold_ms[k] / share

    def _handover_ms(self, busy: np.ndarray, envs: np.ndarray | None = None) -> np.ndarray:
        """Hand-over times ``[n]`` of streams ``envs`` (all, or stream 0 of one): ``handover_ms``,
        plus, where ``busy`` (the next request was waiting, as the calibration measures it), an
        exponential stall of mean ``stall_mean_ms`` with probability ``stall_probability``,
        drawn from the stalls' own stream, or each stream's own (no draw when that
        probability is 0)."""
        n = busy.size
        if not self.stall_p:
            return np.full(n, self.handover)
        if self.stall_rngs is not None:
            out = np.full(n, self.handover)
            for i in np.flatnonzero(busy).tolist():
                rng = self.stall_rngs[i if envs is None else int(envs[i])]
                if rng.random() < self.stall_p:
                    out[i] += rng.standard_exponential() * self.stall_mean
            return out
        stalled = (self.stall_rng.random(n) < self.stall_p) & busy
        pause = self.stall_rng.standard_exponential(n) * self.stall_mean
        return self.handover + np.where(stalled, pause, 0.0)

    def _positions(self, envs: np.ndarray | None, measured: bool) -> np.ndarray:
        """Pool rows of the present (or of the last measurement) of streams ``envs`` (all)."""
        assert self.pool is not None
        if envs is None:
            return self.tables.paths.positions(
                self.offset, self.t, self.request, self.pool.mask, measured
            )
        return self.tables.paths.positions(
            self.offset[envs], self.t[envs], self.request[envs], self.pool.mask, measured
        )

    # ---- arrivals ----------------------------------------------------------------------------
    def _take(self, rng: np.random.Generator, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The next (arrival time, trace row) of every stream ``[B]``, consumed where ``mask``."""
        width = 2 * ARRIVAL_BLOCK
        flat = self._ring_base + (self.a_next & (width - 1))
        out = self.a_time.take(flat), self.a_sample.take(flat)
        self.a_next += mask
        self._refill_low(rng)
        return out

    def _refill(self, rng: np.random.Generator, envs: np.ndarray) -> None:
        """Draw the next block of (arrival time, trace row) for streams ``envs`` (each has room
        for a block in its ring)."""
        n, width = ARRIVAL_BLOCK, 2 * ARRIVAL_BLOCK
        if self.stream_rngs is not None:
            times, samples = self._draw_own(envs, n)
        else:
            times = self._draw_arrivals(rng, envs, n)
            samples = rng.integers(0, self.tables.trace.n, size=(envs.size, n))
        flat = (envs * width)[:, None] + (self.a_end[envs][:, None] + np.arange(n)) % width
        self.a_time[flat] = times
        self.a_sample[flat] = samples
        self.a_end[envs] += n

    def _draw_arrivals(self, rng: np.random.Generator, envs: np.ndarray, n: int) -> np.ndarray:
        """The next ``n`` arrival times ``[len(envs), n]`` of streams ``envs``, drawn from
        ``rng`` (zeros for isolated requests); advances their arrival state."""
        if self.isolated:
            return np.zeros((envs.size, n))
        state = self.arr_state
        sub = ArrivalState(*(getattr(state, f)[envs] for f in state.__dict__))
        times = self.tables.arrivals.generate(rng, sub, n)
        for name, value in sub.__dict__.items():
            getattr(state, name)[envs] = value
        return times

    def _draw_own(self, envs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_refill`'s arrival times and trace rows, each stream from its own generator."""
        assert self.stream_rngs is not None
        times = np.empty((envs.size, n))
        samples = np.empty((envs.size, n), dtype=np.int64)
        for i, env in enumerate(envs.tolist()):
            rng = self.stream_rngs[env]
            times[i] = self._draw_arrivals(rng, np.array([env]), n)[0]
            samples[i] = rng.integers(0, self.tables.trace.n, size=n)
        return times, samples

    def _arrivals(self, rng: np.random.Generator, dropped: np.ndarray) -> None:
        """Admit (or drop, counted into ``dropped``) every arrival up to now in every stream."""
        if self.isolated:
            return
        queue, counting = self.queue, self.slots > self.capacity
        for active, time, sample in self._arriving(rng, self.t):
            size = queue.size.take(active)
            room = size < self.slots
            if room.all():
                queue.push(active, time, sample)
            else:
                queue.push(active[room], time[room], sample[room])
                full = active[~room]
                queue.refuse(full)
                dropped[full] += 1
                self.ep_dropped[full] += 1
            if counting:  # overflow="admit": count admissions beyond the capacity
                self.ep_overflow[active[room & (size >= self.capacity)]] += 1

    def _arriving(
        self, rng: np.random.Generator, until: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The arrivals up to ``until`` ``[B]`` in rounds, each consumed as it is yielded: the
        streams with one more (indices), its time and its trace row. Every stream has at least
        ``ARRIVAL_BLOCK // 2`` unread arrivals on entry (refills keep it so), so the ring is
        checked for refills only after the loop or when a stream has taken that many arrivals in
        this call (the draws are the same as checking every time)."""
        mask = 2 * ARRIVAL_BLOCK - 1
        nxt = self.a_time.take(self._ring_base + (self.a_next & mask))
        active = np.flatnonzero(nxt <= until)
        taken = 0
        while active.size:
            flat = self._ring_base.take(active) + (self.a_next.take(active) & mask)
            time, sample = self.a_time.take(flat), self.a_sample.take(flat)
            self.a_next[active] += 1
            taken += 1
            if taken == ARRIVAL_BLOCK // 2:
                self._refill_low(rng)
                taken = 0
            yield active, time, sample
            nxt = self.a_time.take(self._ring_base.take(active) + (self.a_next.take(active) & mask))
            active = active[nxt <= until.take(active)]
        self._refill_low(rng)

    def _refill_low(self, rng: np.random.Generator) -> None:
        """Refill the rings of streams with fewer than ``ARRIVAL_BLOCK // 2`` unread arrivals
        (together with every stream that has room for a block)."""
        left = self.a_end - self.a_next
        if left.min() < ARRIVAL_BLOCK // 2:
            self._refill(rng, np.flatnonzero(left <= ARRIVAL_BLOCK))

    # ---- pipelining (cluster.pipelining) ----------------------------------------------------
    def _admit(self, m: np.ndarray, time: np.ndarray, sample: np.ndarray) -> None:
        """Queue one arrival (``time``, ``sample``) in each stream of ``m`` (each has room) and
        run its stage 0 on device 0: from when it arrives, or when device 0 finished the request
        admitted before it. Why at once: device 0 serves the queue in arrival order whatever the
        decisions of the requests ahead, so its start is known on arrival."""
        assert self.pool is not None
        f0 = self.free[m, 0]
        start = np.maximum(f0, time)
        if self.handover or self.stall_p:
            start = start + self._handover_ms(time < f0, m)
        pos = self.tables.paths.positions(
            self.offset[m], start, self.request[m], self.pool.mask, measured=False
        )
        stage = self.pool.stage_ms.take(pos * self.K)
        q = self.queue
        flat = m * self.slots + (q.head[m] + q.size[m]) % self.slots
        if self.cold:
            cold = coldness(start - f0, self.cold_tau_ms)
            stage = stage + self._cold_ms(pos, 0, cold)
            self.q_cold[flat] = cold
        end = start + stage
        self.q_start[flat] = start
        self.q_end0[flat] = end
        q.push(m, time, sample)
        self.free[m, 0] = end

    def _start_next_pipelined(self, rng: np.random.Generator, ex: np.ndarray) -> None:
        """:meth:`_start_next` with pipelining."""
        q = self.queue
        empty = ex & (q.size == 0)
        if empty.any():  # nobody waits: the next arrival, admitted now (it is the next in time)
            time, sample = self._take(rng, empty)
            m = np.flatnonzero(empty)
            self._admit(m, time[m], sample[m])
        head = q.base + q.head
        start, end = self.q_start.take(head), self.q_end0.take(head)
        arrival, sample, drops_before = q.pop(ex)
        self.drops_before = np.where(ex, drops_before, self.drops_before)
        self.started = np.where(ex, np.maximum(self.started - 1, 0), self.started)
        self.arrival = np.where(ex, arrival, self.arrival)
        self.sample = np.where(ex, sample, self.sample)
        if self.cold:
            self.coldness = np.where(ex, self.q_cold.take(head), self.coldness)
        self.service_start = np.where(ex, start, self.service_start)
        self.last_decision = np.where(ex, arrival, self.last_decision)
        self.t = np.where(ex, end, self.t)
        self.k = np.where(ex, 0, self.k)
        self.request += ex

    def _finish_step_pipelined(
        self,
        rng: np.random.Generator,
        info: dict[str, np.ndarray],
        cont: np.ndarray,
        active: np.ndarray | None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """The rest of :meth:`step` with pipelining: the requests that continue (``cont``) run
        stage k on device k once it is free of the requests ahead; arrivals up to the latest
        time reached are admitted."""
        assert self.pool is not None
        k = self.k
        begin = np.maximum(self.t, self.free[self._rows, k])
        pos = self.tables.paths.positions(
            self.offset, begin, self.request, self.pool.mask, measured=False
        )
        stage = self.pool.stage_ms.take(pos * self.K + k)
        if self.cold:
            stage = stage + self._cold_ms(pos, k, self.coldness)
        self.t = np.where(cont, begin + stage, self.t)
        self.free[self._rows[cont], k[cont]] = self.t[cont]
        self.horizon = np.maximum(self.horizon, self.t)
        dropped = self._carried(active)
        self._arrivals_pipelined(rng, dropped)
        return self._pay(info, dropped, self._waiting_at(None)[0])

    def _arrivals_pipelined(self, rng: np.random.Generator, dropped: np.ndarray) -> None:
        """:meth:`_arrivals` with pipelining: every arrival up to ``horizon`` in time order; it
        is refused when ``capacity`` requests wait for device 0 at its arrival (or the ring is
        full: ``QUEUE_HARD_CAP`` requests in the system)."""
        q = self.queue
        for active, time, sample in self._arriving(rng, self.horizon):
            self._count_started(active, time)
            size = q.size.take(active)
            waiting = size - self.started.take(active)
            room = size < self.slots
            if self.dropping:
                room &= waiting < self.capacity
            else:  # overflow="admit": count admissions beyond the capacity
                self.ep_overflow[active[room & (waiting >= self.capacity)]] += 1
            if room.any():
                self._admit(active[room], time[room], sample[room])
            full = active[~room]
            q.refuse(full)
            dropped[full] += 1
            self.ep_dropped[full] += 1

    def _count_started(self, m: np.ndarray, time: np.ndarray) -> None:
        """Move ``started`` of streams ``m`` past the queued requests device 0 started by
        ``time`` (starts grow along the queue, so they are a prefix)."""
        q = self.queue
        done, size = self.started.take(m), q.size.take(m)
        base, head = q.base.take(m), q.head.take(m)
        while True:  # a walk: called per arrival, it moves by an entry or two
            go = (done < size) & (self.q_start.take(base + (head + done) % self.slots) <= time)
            if not go.any():
                break
            done = done + go
        self.started[m] = done

    def _queue_prefix(
        self,
        values: np.ndarray,
        base: np.ndarray,
        head: np.ndarray,
        lo: np.ndarray,
        size: np.ndarray,
        bound: np.ndarray,
    ) -> np.ndarray:
        """Per stream, the queue position in [``lo``, ``size``] of the first entry whose
        ``values`` (by ring slot) exceed ``bound``. The values grow along the queue (device 0's
        starts, arrival times), so a binary search finds it in log2(slots) whole-batch rounds,
        where a walk from the head took one round per entry (a thousand under overload)."""
        lo, hi = lo.copy(), size.copy()
        while True:
            open_ = lo < hi
            if not open_.any():
                return lo
            mid = (lo + hi) >> 1
            below = values.take(base + (head + mid) % self.slots) <= bound
            lo = np.where(open_ & below, mid + 1, lo)
            hi = np.where(open_ & ~below, mid, hi)

    def _waiting_at(self, envs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """With pipelining, at each stream's ``t`` (streams ``envs``, all if None): how many
        queued requests had arrived and not started on device 0, and the arrival time of the
        oldest of them (meaningless where none). The queue may hold later arrivals, admitted
        when another request reached a later time."""
        q = self.queue
        rows = self._rows if envs is None else envs
        t, size = self.t.take(rows), q.size.take(rows)
        base, head = q.base.take(rows), q.head.take(rows)
        zero = np.zeros(rows.size, dtype=np.int64)
        first = self._queue_prefix(self.q_start, base, head, zero, size, t)  # started by t
        last = self._queue_prefix(q.time, base, head, first, size, t)  # then arrived by t
        return last - first, q.time.take(base + (head + first) % self.slots)

    def waiting_one(self) -> int:
        """Requests waiting now in the single stream (the info's ``queue_len``)."""
        if self.pipelined:
            return int(self._waiting_at(None)[0][0])
        return self.queue.size.item()

    def waiting_now(self) -> np.ndarray:
        """Requests waiting now in every stream ``[B]`` (the info's ``queue_len``)."""
        if self.pipelined:
            return self._waiting_at(None)[0]
        return self.queue.size.copy()

    def _step_one_batched(
        self, rng: np.random.Generator, exit_now: bool
    ) -> tuple[np.ndarray, float, dict[str, Any], bool]:
        """:meth:`step_one` through the batched path (pipelining has no scalar path: it is
        the same code as the vector env's, hence identical)."""
        rewards, batch_info, done = self.step(rng, np.array([exit_now]))
        info = self.fresh_info()
        for key, value in batch_info.items():
            info[key] = value[0, ...].copy() if key in FLAG_KEYS else value[0]
        return self.observe()[0], float(rewards[0]), info, bool(done[0])

    # ---- the single-stream fast path -------------------------------------------------------
    def fresh_info(self) -> dict[str, Any]:
        """One stream's info at its neutral values for a step or reset to fill in: a copy of
        :attr:`neutral_info` with fresh flags and exit fractions (``check_env``: no array is
        shared between two calls' infos)."""
        info = self.neutral_info.copy()
        info["episode_exit_fractions"] = np.zeros(self.K)
        info["request_done"] = _NO.copy()
        info["request_correct"] = _NO.copy()
        info["episode_done"] = _NO.copy()
        return info

    def step_one(
        self, rng: np.random.Generator, exit_now: bool
    ) -> tuple[np.ndarray, float, dict[str, Any], bool]:
        """:meth:`step` and :meth:`observe` for ``B == 1`` in Python scalars (the single env's
        path).

        Why a second path: numpy's per-call overhead makes a one-stream batched step about ten
        times slower than a scalar one (``experiments.bench_env``). It performs the same
        floating-point operations in the same order as :meth:`step`, on the same state arrays,
        so both give bit-identical episodes (``tests/test_vector_env.py`` checks single ==
        vector(1) over every registered id, ``tests/test_fuzz.py`` over random configs).
        The info starts as :meth:`fresh_info` and only the values this step changes are
        replaced.
        Returns ``(observation, reward, info, episode_done)``."""
        if self.pipelined:
            return self._step_one_batched(rng, exit_now)
        k, t = self.k.item(), self.t.item()
        info = self.fresh_info()
        ex = exit_now or k == self.K - 1
        if ex:
            r_correct, r_latency, r_deadline = self._answer_one(k, t, info)
        else:
            r_correct = r_deadline = 0.0
            r_latency = -0.0
        if self.system_cost:
            arrival, queue = self.arrival.item(), self.queue
            held = (queue.size.item() + 1) * t - (queue.time_sum.item() + arrival)
            r_latency = (self.accrued.item() - held) * self.latency_cost
            self.accrued[0] = held - (t - arrival) * ex
            info["reward_latency"] = np.float64(r_latency)
            r_deadline = self._deadlines_passed_one(t, arrival, ex)
            info["reward_deadline"] = np.float64(r_deadline)
        elif self.per_stage:
            r_latency = (self.last_decision.item() - t) * self.latency_cost
            self.last_decision[0] = t
            info["reward_latency"] = np.float64(r_latency)
        if ex:
            self._start_one(rng, t)
            t, k = self.t.item(), 0
        else:
            k += 1
            self.k[0] = k
        pool = self.pool
        index = self.request.item() if self.request_clock else int(t * self._inv_tick)
        row = (self.offset.item() + index) & pool.mask
        stage = pool.stage_ms.item(row * self.K + k)
        if self.cold:
            share = pool.levels.item(row * 2 * self.D + self._cold_col.item(k))
            stage += self.coldness.item() * self.cold_ms.item(k) / share
        t += stage
        self.t[0] = t
        dropped = 0 if self.isolated else self._arrivals_one(rng, t) + self._carried_one()
        drop = dropped * -self.drop_cost
        size = self.queue.size.item()
        info["queue_len"] = self.counts[size]
        acc = self.ep_rewards
        if ex or not self.request_timing:  # adding zeros changes nothing: skip it
            acc[0, 0] += r_correct
            acc[0, 1] += r_latency
            acc[0, 2] += r_deadline
        if dropped:
            acc[0, 3] += drop
            info["dropped"], info["reward_drop"] = np.int64(dropped), np.float64(drop)
        reward = r_correct + r_latency + r_deadline + drop
        ended = self.ep_answered.item() >= self.R
        if self.drain_weight and ended:
            cost = self.drain_cost(size)
            queue_part = self.drain_weight * (self.drain_start.item() - cost)
            self.drain_start[0] = cost
            reward = reward + queue_part
            acc[0, 4] += queue_part
            info["reward_queue"] = np.float64(queue_part)
        obs = self._observation_one(t, k, size)
        return obs, reward, info, ended

    def _deadlines_passed_one(self, t: float, arrival: float, ex: bool) -> float:
        """:meth:`_deadlines_passed` for the single stream (request in service arrived at
        ``arrival``; ``ex``: it is answered now)."""
        queue, deadline = self.queue, self.deadline
        late_q, size, head = self.late_queued.item(), queue.size.item(), queue.head.item()
        while late_q < size and (t - queue.time.item((head + late_q) % queue.slots)) > deadline:
            late_q += 1
        serving = (t - arrival) > deadline
        late_now = late_q + serving
        passed = (late_now - self.late_held.item()) * -self.config.reward.deadline_penalty
        self.late_queued[0] = late_q
        self.late_held[0] = late_now - (serving and ex)
        return passed

    def _answer_one(self, k: int, t: float, info: dict[str, Any]) -> tuple[float, float, float]:
        """:meth:`_answer` for the single stream: the request exits at exit ``k`` at time ``t``.
        Fills the request's info and returns its reward parts (correct, latency, deadline)."""
        rw, arrival, start = self.config.reward, self.arrival.item(), self.service_start.item()
        latency, wait = t - arrival, start - arrival
        correct = self.tables.correct.item(self.sample.item() * self.K + k)
        late = latency > self.deadline
        r_correct = (correct * (rw.correct_bonus + rw.wrong_penalty) - rw.wrong_penalty) * 1
        r_latency = latency * -self.latency_cost
        r_deadline = late * -rw.deadline_penalty
        answered = self.ep_answered.item()
        self.ep_latency[0, min(answered, self.R - 1)] = latency
        self.ep_exits[0, k] += 1
        self.ep_answered[0] = answered + 1
        self.ep_correct[0] += correct
        self.ep_met[0] += not late
        self.ep_flops[0] += self.tables.cum_flops.item(k)
        self.ep_wait[0] += wait
        self.ep_busy[0] += t - start
        self.answered_at[0] = t
        info["reward_correct"] = np.float64(r_correct)
        info["reward_latency"] = np.float64(r_latency)
        info["reward_deadline"] = np.float64(r_deadline)
        info["request_done"][()] = True  # the flags of fresh_info: set in place
        info["request_exit"] = np.int64(k)
        info["request_correct"][()] = correct
        info["request_latency_ms"] = np.float64(latency)
        info["request_wait_ms"] = np.float64(wait)
        drops_before = self.drops_before.item()
        if drops_before:  # fresh_info holds 0
            info["request_drops_before"] = np.int64(drops_before)
        return r_correct, r_latency, r_deadline

    def _start_one(self, rng: np.random.Generator, t: float) -> None:
        """:meth:`_start_next` for the single stream."""
        queue = self.queue
        busy = not self.isolated and queue.size.item() > 0
        if busy:
            head = queue.head.item()
            arrival, sample = queue.time.item(head), queue.sample.item(head)
            queue.head[0] = (head + 1) % queue.slots
            queue.size[0] -= 1
            queue.time_sum[0] = queue.time_sum.item() - arrival if queue.size.item() else 0.0
            if self.late_queued.item() > 0:  # the head was the oldest
                self.late_queued[0] -= 1
            drops_before = queue.drops_before.item(head)
        else:
            slot = self.a_next.item() & (2 * ARRIVAL_BLOCK - 1)
            arrival = t if self.isolated else self.a_time.item(slot)
            sample = self.a_sample.item(slot)
            self._consume_one(rng)
            drops_before = queue.refused.item()
            if drops_before:
                queue.refused[0] = 0
        start = max(t, arrival)
        if self.handover or self.stall_p:
            start = start + self._handover_ms(np.array([busy])).item()
        if self.cold:
            self.coldness[0] = coldness(start - t, self.cold_tau_ms)
        self.arrival[0] = arrival
        self.sample[0] = sample
        self.drops_before[0] = drops_before
        self.service_start[0] = start
        self.last_decision[0] = arrival
        self.t[0] = start
        self.k[0] = 0
        self.request[0] += 1

    def _consume_one(self, rng: np.random.Generator) -> int:
        """Mark the single stream's next arrival read (refilling its ring when low); returns
        the ring position of the arrival after it."""
        after = self.a_next.item() + 1
        self.a_next[0] = after
        if self.a_end.item() - after < ARRIVAL_BLOCK // 2:
            self._refill(rng, self._rows)
        return after & (2 * ARRIVAL_BLOCK - 1)

    def _carried_one(self) -> int:
        """:meth:`_carried` of the single stream."""
        carried = self.carried_drops.item()
        if carried:
            self.carried_drops[0] = 0
        return carried

    def _arrivals_one(self, rng: np.random.Generator, t: float) -> int:
        """:meth:`_arrivals` for the single (non-isolated) stream; returns the number dropped."""
        slot = self.a_next.item() & (2 * ARRIVAL_BLOCK - 1)
        if self.a_time.item(slot) > t:  # the common case: nobody arrived during the stage
            return 0
        queue, dropped = self.queue, 0
        while True:
            time = self.a_time.item(slot)
            if time > t:
                return dropped
            sample = self.a_sample.item(slot)
            slot = self._consume_one(rng)
            size = queue.size.item()
            if size < self.slots:
                flat = (queue.head.item() + size) % self.slots
                queue.time[flat] = time
                queue.sample[flat] = sample
                refused = queue.refused.item()
                queue.drops_before[flat] = refused
                if refused:
                    queue.refused[0] = 0
                queue.size[0] = size + 1
                queue.time_sum[0] += time
                if size >= self.capacity:
                    self.ep_overflow[0] += 1
            else:
                queue.refused[0] += 1
                dropped += 1
                self.ep_dropped[0] += 1

    def observe_one(self) -> np.ndarray:
        """:meth:`observe` of the single stream, ``[obs_dim]`` float32 (a fresh array)."""
        if self.pipelined:
            return self.observe()[0]
        return self._observation_one(self.t.item(), self.k.item(), self.queue.size.item())

    def _observation_one(self, t: float, k: int, size: int) -> np.ndarray:
        """The single stream's observation at time ``t``, exit ``k``, ``size`` waiting."""
        if self.request_clock:
            index = self.request.item()
        elif self._inv_period:
            index = int(math.floor(t * self._inv_period) * self._period_ticks)
        else:
            index = int(t * self._inv_tick)
        inv, cap = self._inv_deadline, self.config.max_elapsed_ratio
        queue, pool = self.queue, self.pool
        row = self.tables.feature_rows[self.sample.item() * self.K + k]
        levels = pool.levels[(self.offset.item() + index) & pool.mask].tolist()
        tail = [
            min((t - self.arrival.item()) * inv, cap),
            min(size * self._inv_capacity, 1.0),
            min((t - queue.time.item(queue.head.item())) * inv, cap) if size > 0 else 0.0,
        ]
        return np.array(row + levels + tail, dtype=np.float32)

    # ---- observation and metrics ----------------------------------------------------------------
    def observe(self, envs: np.ndarray | None = None) -> np.ndarray:
        """Observations ``[len(envs), obs_dim]`` float32 (all streams if ``envs`` is None)."""
        if envs is None:
            t, sample, k, arrival = self.t, self.sample, self.k, self.arrival
        else:
            t, sample, k = self.t[envs], self.sample[envs], self.k[envs]
            arrival = self.arrival[envs]
        d2, kk = 2 * self.D, self.K
        head = len(EXIT_FEATURES)
        tail = head + d2  # elapsed_ratio, queue_len, oldest_wait_ratio (, next_wait_ratio)
        out = np.empty((t.size, len(self.tables.observation_names)), dtype=np.float32)
        out[:, :head] = self.tables.feats.take(sample * kk + k, axis=0)
        out[:, head:tail] = self.pool.levels.take(self._positions(envs, measured=True), axis=0)
        inv, cap = self._inv_deadline, self.config.max_elapsed_ratio
        out[:, tail] = np.minimum((t - arrival) * inv, cap)
        if self.pipelined:
            size, oldest = self._waiting_at(envs)
        else:
            size = self.queue.size if envs is None else self.queue.size[envs]
            oldest = self.queue.oldest(envs)
        out[:, tail + 1] = np.minimum(size * self._inv_capacity, 1.0)
        out[:, tail + 2] = np.where(size > 0, np.minimum((t - oldest) * inv, cap), 0.0)
        if self.pipelined:
            out[:, tail + 3] = np.minimum(self._next_wait_ms(envs, t, k) * inv, cap)
        return out

    def _next_wait_ms(self, envs: np.ndarray | None, t: np.ndarray, k: np.ndarray) -> np.ndarray:
        """With pipelining: how long the request in service of streams ``envs`` (all if None),
        at time ``t`` and exit ``k``, would wait for device ``k + 1`` to finish the requests
        ahead of it if it continued (0 at the last exit): when that device finishes the work
        already handed to it, as simulated (a real scheduler would estimate it from the
        device's progress)."""
        rows = self._rows if envs is None else envs
        nxt = np.minimum(k + 1, self.K - 1)
        return np.where(k < self.K - 1, np.maximum(self.free[rows, nxt] - t, 0.0), 0.0)

    def episode_metrics(self, envs: np.ndarray) -> EpisodeMetrics:
        """Metrics of the just-finished episodes of ``envs`` (each answered ``R`` requests):
        ``[len(envs)]`` each, exit fractions ``[len(envs), K]``."""
        r = float(self.R)
        dropped = self.ep_dropped[envs]
        total = r + dropped
        lat = self.ep_latency[envs]
        if self.R > 1:  # one request (v2) needs no sort, and its mean is itself
            lat.sort(axis=1)
        pos = 0.95 * (self.R - 1)  # numpy's default (linear) percentile
        lo = int(pos)
        hi, frac = min(lo + 1, self.R - 1), pos - lo
        full = r * self.tables.cum_flops[-1]
        wall = np.maximum(self.answered_at[envs] - self.ep_start[envs], 1e-9)
        rewards = self.ep_rewards[envs]
        ret = rewards.sum(axis=1)
        return {
            "episode_done": np.ones(envs.size, dtype=bool),
            "episode_requests": np.full(envs.size, r),
            "episode_accuracy": self.ep_correct[envs] / r,
            "episode_compute_saving": 1.0 - self.ep_flops[envs] / full if full > 0 else 0.0 * ret,
            "episode_latency_mean_ms": lat.mean(axis=1) if self.R > 1 else lat[:, 0],
            "episode_latency_p95_ms": lat[:, lo] * (1.0 - frac) + lat[:, hi] * frac,
            "episode_qos_rate": self.ep_met[envs] / total,
            "episode_drop_rate": dropped / total,
            "episode_overflow_rate": self.ep_overflow[envs] / total,
            "episode_wait_mean_ms": self.ep_wait[envs] / r,
            "episode_utilisation": np.minimum(self.ep_busy[envs] / wall, 1.0),
            "episode_reward_correct": rewards[:, 0],
            "episode_reward_latency": rewards[:, 1],
            "episode_reward_deadline": rewards[:, 2],
            "episode_reward_drop": rewards[:, 3],
            "episode_reward_queue": rewards[:, 4],
            "episode_return": ret,
            "episode_reward_per_request": ret / total,
            "episode_exit_fractions": self.ep_exits[envs] / r,
        }

    def episode_metrics_one(self) -> dict[str, Any]:
        """:meth:`episode_metrics` of the single stream as numpy scalars (``episode_done`` a
        fresh 0-d array, see ``FLAG_KEYS``), computed with Python
        floats when the episode is one request (v2: after every request, where numpy's
        per-call overhead would double the cost of a step); bit-identical to the batched
        values, which are used otherwise."""
        if self.R != 1:
            rows = self.episode_metrics(np.zeros(1, dtype=np.int64))
            return {
                k: v[0, ...].copy() if v.ndim > 1 or k in FLAG_KEYS else v[0]
                for k, v in rows.items()
            }
        f64 = np.float64
        dropped = self.ep_dropped.item()
        total = 1.0 + dropped
        latency = self.ep_latency.item(0)
        full = self.tables.cum_flops.item(-1)
        wall = max(self.answered_at.item() - self.ep_start.item(), 1e-9)
        parts = self.ep_rewards[0].tolist()
        ret = parts[0] + parts[1] + parts[2] + parts[3] + parts[4]
        saving = 1.0 - self.ep_flops.item() / full if full > 0 else 0.0 * ret
        return {
            "episode_done": np.array(True),
            "episode_requests": f64(1.0),
            "episode_accuracy": f64(self.ep_correct.item() / 1.0),
            "episode_compute_saving": f64(saving),
            "episode_latency_mean_ms": f64(latency),
            "episode_latency_p95_ms": f64(latency * 1.0 + latency * 0.0),
            "episode_qos_rate": f64(self.ep_met.item() / total),
            "episode_drop_rate": f64(dropped / total),
            "episode_overflow_rate": f64(self.ep_overflow.item() / total),
            "episode_wait_mean_ms": f64(self.ep_wait.item() / 1.0),
            "episode_utilisation": f64(min(self.ep_busy.item() / wall, 1.0)),
            "episode_reward_correct": f64(parts[0]),
            "episode_reward_latency": f64(parts[1]),
            "episode_reward_deadline": f64(parts[2]),
            "episode_reward_drop": f64(parts[3]),
            "episode_reward_queue": f64(parts[4]),
            "episode_return": f64(ret),
            "episode_reward_per_request": f64(ret / total),
            "episode_exit_fractions": self.ep_exits[0] / 1.0,
        }

    def batch_episode_metrics(
        self, done: np.ndarray, with_values: bool = True
    ) -> dict[str, np.ndarray]:
        """Episode metrics ``[B]`` (and ``[B, K]``) for every stream: values where ``done``,
        zeros elsewhere (everywhere without ``with_values``; ``episode_done`` is set anyway).
        The scalar metrics are rows of one fresh array (one allocation and one scatter per step
        instead of one per metric)."""
        table, out = _episode_info(self.num_envs, self.K)
        if done.any():
            idx = np.flatnonzero(done)
            out["episode_done"][idx] = True
            if not with_values:
                return out
            values = self.episode_metrics(idx)
            out["episode_exit_fractions"][idx] = values["episode_exit_fractions"]
            table[:, idx] = [values[key] for key in EPISODE_METRICS]
        return out

    def shown_request(self, i: int) -> int:
        """Stream ``i``'s request as a picture numbers it: its place in the episode, or in the
        stream when every request is an episode (``requests_per_episode == 1``)."""
        if self.R > 1:
            return min(int(self.ep_answered[i]), self.R - 1)
        return int(self.request[i])

    # ---- hindsight ----------------------------------------------------------------------------
    def outlook(self) -> tuple[np.ndarray, np.ndarray]:
        """For the request in service of every stream: latency from arrival (ms) if it exits at
        each exit ``[B, K]`` (the true future resource levels; NaN before the current exit) and
        whether each exit is right ``[B, K]``. What a hindsight Oracle of this request knows."""
        b, kk = self.num_envs, self.K
        lat = np.full((b, kk), np.nan)
        t = self.t.copy()
        lat[self._rows, self.k] = t - self.arrival
        paths, pool = self.tables.paths, self.pool
        for j in range(1, kk):
            live = np.flatnonzero(self.k < j)
            if not live.size:
                continue
            begin = np.maximum(t[live], self.free[live, j]) if self.pipelined else t[live]
            pos = paths.positions(
                self.offset[live], begin, self.request[live], pool.mask, measured=False
            )
            stage = pool.stage_ms.take(pos * kk + j)
            if self.cold:
                stage = stage + self._cold_ms(pos, j, self.coldness[live])
            t[live] = begin + stage
            lat[live, j] = t[live] - self.arrival[live]
        return lat, self.tables.correct.take(self.sample[:, None] * kk + np.arange(kk))

    def oracle_actions(self) -> np.ndarray:
        """``[B]`` action now (0/1) of the exit that maximises each request's own reward in
        hindsight (ties go to the earlier exit)."""
        lat, correct = self.outlook()
        value = self.config.reward.request_reward(correct, lat, self.deadline)
        value = np.where(np.isnan(lat), -np.inf, value)  # exits already passed
        return (value.argmax(axis=1) == self.k).astype(np.int64)

    # ---- pickling: the shared tables and the pool are rebuilt, not stored ---------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["tables"] = state["pool"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.tables = tables_for(self.config)
        if self.pool_seed >= 0:  # the pool only: the stalls' stream goes on where it was
            self.pool = self.tables.pool(self.pool_seed, self.pool_steps)


def _empty_step_info(b: int) -> dict[str, np.ndarray]:
    info: dict[str, np.ndarray] = {key: np.zeros(b, dtype=dt) for key, dt in STEP_INFO.items()}
    info["request_exit"][:] = -1
    return info


def empty_episode_metrics(b: int, num_exits: int) -> dict[str, np.ndarray]:
    """Episode-metric arrays for ``b`` streams that did not end an episode (zeros; no NaN, so
    Gymnasium's determinism checks can compare infos)."""
    return _episode_info(b, num_exits)[1]


def _episode_info(b: int, num_exits: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Zero episode metrics for ``b`` streams, and the ``[len(EPISODE_METRICS), b]`` table whose
    rows the scalar metrics are (one allocation, and one scatter fills every metric)."""
    table = np.zeros((len(EPISODE_METRICS), b))
    out: dict[str, np.ndarray] = {"episode_done": np.zeros(b, dtype=bool)}
    out.update(zip(EPISODE_METRICS, table, strict=True))
    out["episode_exit_fractions"] = np.zeros((b, num_exits))
    return table, out


def step_info_at_reset(b: int, num_exits: int) -> dict[str, np.ndarray]:
    """The info of a reset: every step key with its neutral value, episode metrics zero."""
    info = _empty_step_info(b)
    info.update(empty_episode_metrics(b, num_exits))
    return info


def describe(config: EnvConfig) -> dict[str, Any]:
    """Derived figures of a config: mean last-exit service time and the arrival rate used."""
    tb = tables_for(config)
    return {
        "mean_service_ms": tb.mean_service_ms,
        "rate_per_s": tb.arrivals.rate_per_ms * 1e3,
        "full_speed_stage_ms": tb.latency.full_speed_ms().tolist(),
    }
