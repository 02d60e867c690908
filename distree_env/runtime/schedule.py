"""The scenario of a live run: the very requests, arrivals and resource levels of the simulator.

Why: the live runtime is compared with the simulator request for request. The environment draws
its randomness in a documented order (``distree_env.dynamics``): resource pools from the pool
seed, then from the episode's generator the pools' offsets, the arrival process's start, and
blocks of (arrival times, trace rows). :func:`live_scenario` draws the same numbers in the same
order, so a live run with seed ``s`` serves the requests that ``env.reset(seed=s)`` would, at the
same arrival times, on the same images, under the same resource paths; only the latencies are
measured instead of modelled. Every process of a run (devices and aggregator, possibly on other
machines) calls it with the same config and seed, so nothing has to be shipped between them.

The exit trace of the run must have one row per image of the image set: :func:`image_trace`
writes the trace of a sample of a split (its rows ``indices``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distree_env.config import EnvConfig
from distree_env.runtime.shaping import LevelPath, Levels, RequestLevels

__all__ = [
    "LIVE_PIPELINING_REFUSED",
    "LiveScenario",
    "check_live_config",
    "image_trace",
    "live_scenario",
    "starts_episode",
]

#: Longest stretch of run time the level paths are laid out for (beyond it the last level holds).
HORIZON_MS = 3_600_000.0


@dataclass(frozen=True)
class LiveScenario:
    """The exogenous side of a run, materialised from the environment's config and seed.

    ``arrivals_ms`` None means ``isolated``: each request starts when the previous one is
    answered. ``queue_capacity`` is the queue's nominal bound (the ``queue_len`` observation is
    relative to it); a request that arrives while ``queue_slots`` requests wait is dropped
    (``slots`` = the capacity when overflow drops, the hard cap when it admits, as in the
    simulator). ``measured(r, t_ms)`` gives the
    ``(compute [D], bandwidth [D])`` levels the policy sees while request ``r`` is served at run
    time ``t_ms`` (the simulator's measurement rule). Continue decisions are messages of
    ``decision_bytes`` (0: not sent over the emulated links, as the simulator then assumes).
    ``requests_per_episode`` answered requests make one of the environment's episodes: a
    recurrent policy's memory starts afresh after each, as in training and evaluation.
    """

    samples: np.ndarray  # [R] rows of the image set
    arrivals_ms: np.ndarray | None  # [R]
    compute: tuple[Levels, ...]  # one per device
    bandwidth: tuple[Levels, ...]  # one per device's link
    measured: Callable[[int, float], tuple[np.ndarray, np.ndarray]]
    link_bytes_per_s: np.ndarray  # [D] peak bandwidth of each link
    link_latency_ms: np.ndarray  # [D] per-message latency of each link
    decision_bytes: float
    deadline_ms: float
    queue_capacity: int
    queue_slots: int
    observation_names: tuple[str, ...]
    obs_high: np.ndarray  # upper bound of each observation (the env's Box)
    requests_per_episode: int = 1

    @property
    def num_requests(self) -> int:
        """Requests the run serves (one per sample drawn)."""
        return int(len(self.samples))

    def observation(self, values: dict[str, float]) -> np.ndarray:
        """The observation vector in ``observation_names`` order, clipped to the env's bounds."""
        missing = [n for n in self.observation_names if n not in values]
        if missing:
            raise ValueError(f"the live runtime cannot compute observation feature(s) {missing}")
        obs = np.array([values[n] for n in self.observation_names], dtype=np.float32)
        return np.clip(obs, 0.0, self.obs_high).astype(np.float32)


def image_trace(trace_name: str, indices: np.ndarray, labels: np.ndarray, path: Path) -> str:
    """Write the rows ``indices`` of trace ``trace_name`` to ``path`` (if not already there) and
    return the path; ValueError if the trace's labels are not the image set's.

    :param trace_name: the trace of the split the images come from (e.g. ``cifar10-test``).
    :param indices: the image set's rows in that split.
    :param labels: the image set's labels (checked against the trace's).
    :param path: where the trace of the image set goes.
    """
    from distree_env.traces import ExitTrace, resolve_trace

    trace = resolve_trace(trace_name)
    rows = np.asarray(indices, dtype=np.int64)
    if rows.ndim != 1 or rows.size == 0 or rows.min() < 0 or rows.max() >= trace.n:
        raise ValueError(
            f"image indices must be rows of trace {trace_name!r} (0..{trace.n - 1}); "
            f"got {rows.size} indices in [{rows.min()}, {rows.max()}]"
        )
    if not np.array_equal(np.asarray(trace.labels)[rows], np.asarray(labels)):
        raise ValueError(
            f"the image set's labels differ from trace {trace_name!r} at its indices: the images "
            "are not that trace's split"
        )
    part = ExitTrace(
        probs=np.asarray(trace.probs)[rows],
        labels=np.asarray(trace.labels)[rows],
        feature_diff=np.asarray(trace.feature_diff)[rows],
        stage_flops=trace.stage_flops,
        exit_flops=trace.exit_flops,
        transfer_bytes=trace.transfer_bytes,
        topology=trace.topology,
        class_names=trace.class_names,
        metadata={**trace.metadata, "rows_of": trace_name, "rows": int(rows.size)},
        input_bytes=trace.input_bytes,
    )
    path = Path(path)
    if path.is_file():
        try:
            same = ExitTrace.load(path)
            if same.same_samples(part):
                return str(path)
        except ValueError:
            pass  # rewrite it
    part.save(path)
    return str(path)


def _compress(times: np.ndarray, levels: np.ndarray) -> LevelPath:
    keep = np.concatenate([[True], levels[1:] != levels[:-1]])
    return LevelPath(times[keep], levels[keep])


#: Why the live runtime refuses ``cluster.pipelining``.
LIVE_PIPELINING_REFUSED = (
    "cluster.pipelining=True is not allowed in the live runtime: it serves one request at a "
    "time; allowed: False (pipelining is simulated only)"
)


def starts_episode(answered: int, requests_per_episode: int) -> bool:
    """Whether the first decision of the next request starts one of the environment's episodes,
    after ``answered`` answered requests: where ``agents.evaluate`` (and training) hand a
    recurrent policy ``episode_start=True``, so its memory starts afresh there live too."""
    return answered % requests_per_episode == 0


def check_live_config(config: EnvConfig) -> None:
    """Refuse a config the live runtime cannot serve (ValueError naming the field)."""
    if config.cluster.pipelining:
        raise ValueError(LIVE_PIPELINING_REFUSED)


def live_scenario(config: EnvConfig, seed: int, num_requests: int) -> LiveScenario:
    """The requests, resource levels, links and observation layout of a run.

    :param config: the environment's config (its trace has one row per image of the image set).
    :param seed: the seed given to the simulator's ``reset``.
    :param num_requests: how many requests (arrivals) the run serves.
    """
    from distree_env.cluster import QUEUE_HARD_CAP, ResourceTimeline
    from distree_env.cluster.latency import link_rates
    from distree_env.dynamics import ARRIVAL_BLOCK, pool_steps, tables_for

    check_live_config(config)
    tb = tables_for(config)
    d_count, paths = tb.num_devices, tb.paths
    timeline = ResourceTimeline(paths, seed, pool_steps(1))
    pool, mask = timeline.pool, timeline.pool.shape[0] - 1
    rng = np.random.default_rng(seed)
    rng.integers(0, pool.shape[0], size=1)  # the path's offset (the timeline drew the same)
    state = tb.arrivals.start(rng, 1)
    isolated = config.arrivals.kind == "isolated"
    times, rows = [], []
    while len(rows) * ARRIVAL_BLOCK < num_requests:
        block = np.zeros((1, ARRIVAL_BLOCK))
        if not isolated:
            block = tb.arrivals.generate(rng, state, ARRIVAL_BLOCK)
        times.append(block[0])
        rows.append(rng.integers(0, tb.trace.n, size=(1, ARRIVAL_BLOCK))[0])
    arrivals = None if isolated else np.concatenate(times)[:num_requests]
    samples = np.concatenate(rows)[:num_requests]

    if paths.clock == "request":
        started = np.arange(num_requests)
        at = pool[paths.positions(timeline.offset, started * 0.0, started, mask, False)]
        compute: tuple[Levels, ...] = tuple(RequestLevels(at[:, d]) for d in range(d_count))
        bandwidth: tuple[Levels, ...] = tuple(
            RequestLevels(at[:, d_count + d]) for d in range(d_count)
        )
    else:
        grid = np.arange(int(HORIZON_MS / paths.tick_ms)) * paths.tick_ms
        at = pool[paths.positions(timeline.offset, grid, grid * 0, mask, False)]
        compute = tuple(_compress(grid, at[:, d]) for d in range(d_count))
        bandwidth = tuple(_compress(grid, at[:, d_count + d]) for d in range(d_count))

    bw, lat = link_rates(config.cluster, d_count, config.trace)
    return LiveScenario(
        samples=samples,
        arrivals_ms=arrivals,
        compute=compute,
        bandwidth=bandwidth,
        measured=lambda r, t_ms: timeline.measured(t_ms, r),
        link_bytes_per_s=np.asarray(bw, np.float64),
        link_latency_ms=np.asarray(lat, np.float64) * 1e3,
        decision_bytes=float(config.cluster.decision_bytes),
        deadline_ms=float(config.deadline_ms),
        queue_capacity=int(config.queue.capacity),
        queue_slots=int(
            config.queue.capacity if config.queue.overflow == "drop" else QUEUE_HARD_CAP
        ),
        observation_names=tuple(tb.observation_names),
        obs_high=np.asarray(tb.obs_high, np.float32),
        requests_per_episode=int(config.requests_per_episode),
    )
