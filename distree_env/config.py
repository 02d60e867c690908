"""Environment configuration: frozen, JSON-friendly dataclasses with every field validated.

Why: people will pass odd values. A bad value must fail at construction with a ValueError that
names the field (dotted path), the value and what is allowed (with the physical reason for a
bound), never later as a NaN reward. All defaults live here, in the dataclass fields; the defaults
are the v1 default scenario ``steady-stream``; named scenarios are override dicts on top of them.

Use ``EnvConfig()``, ``EnvConfig.from_dict({...})`` (nested dicts, unknown keys rejected),
``EnvConfig.scenario("bursty-stream")`` and ``config.replace({"reward.latency_weight": 0.2})``
(dotted keys or nested dicts). numpy scalars and arrays are accepted where the value is fine.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distree_env.cluster.arrivals import ARRIVAL_PROCESSES, ARRIVAL_SPLITS, SHIPPED_ARRIVALS
from distree_env.cluster.profiles import DEVICE_PROFILES, LINK_PROFILES
from distree_env.cluster.queue import OVERFLOW_POLICIES, QUEUE_HARD_CAP
from distree_env.cluster.resources import (
    CLOCKS,
    HSDPA_SPLITS,
    MAX_MARKOV_LEVELS,
    MIN_SHARE,
    RESOURCE_PROCESSES,
)
from distree_env.io import not_allowed

__all__ = [
    "DEFAULT_PIPELINE_TRACE",
    "DEFAULT_TRACE",
    "EPISODE_ENDS",
    "MAX_DRAIN_WEIGHT",
    "MAX_REQUESTS_PER_EPISODE",
    "REWARD_TIMINGS",
    "SCENARIOS",
    "SCENARIO_SOURCES",
    "ArrivalConfig",
    "ClusterConfig",
    "EnvConfig",
    "ProcessConfig",
    "QueueConfig",
    "RewardConfig",
    "build_config",
    "check_drain_weight",
    "keyword_overrides",
]

#: The exit trace used by ``EnvConfig()`` (tune and train on val; test only measures).
DEFAULT_TRACE = "cifar10-val"
#: The trace of the pipeline-topology variants.
DEFAULT_PIPELINE_TRACE = "cifar10-pipeline-val"
#: How an episode ends after ``requests_per_episode`` answered requests: ``terminate`` (v0: the
#: episode is over; ``reset()`` starts a fresh stream), ``truncate`` (v1: a time limit; the
#: stream goes on) or ``terminate-continue`` (v2: the episode is over once its requests are
#: answered, having paid, with ``system`` timing, for the wait and the missed deadlines of the
#: queue while they ran; ``reset()`` without a seed continues the stream).
EPISODE_ENDS = ("terminate", "truncate", "terminate-continue")
#: When the latency cost is paid: ``stage`` (v0: every decision pays the time since the request's
#: previous decision), ``request`` (v1: the exit step pays the request's total) or ``system`` (v2:
#: every decision pays the latency accrued since the previous decision by every request in the
#: system, the one in service and those waiting, and the deadline penalty of each of them whose
#: deadline passed meanwhile; so the delay and the misses a stage causes in the queue are charged
#: to the request that ran it, and the costs of a stream still sum to its requests' own).
REWARD_TIMINGS = ("stage", "request", "system")
#: Largest ``reward.drain_weight`` (1 prices the queue at the mean last-exit service; far above
#: it the queue term would swamp the requests' own rewards).
MAX_DRAIN_WEIGHT = 100.0
#: Cap on ``requests_per_episode`` (per-episode buffers are allocated for it).
MAX_REQUESTS_PER_EPISODE = 100_000
#: Physical ranges, with the reason shown in errors.
_DEADLINE_MS = (1e-3, 1e7, "a deadline between 1 microsecond and about 3 hours")
_FLOPS = (1e3, 1e18, "a device rate between 1 kFLOP/s and 1 EFLOP/s")
_BYTES_PER_S = (1e2, 1e13, "a link rate between 100 B/s and 10 TB/s")
_LATENCY_MS = (0.0, 1e4, "a per-message latency between 0 and 10 s")
_RATE_PER_S = (
    1e-6,
    1e4,
    "one request per ~12 days to 1e4 per second; beyond that the edge "
    "cluster is not the serving system",
)
_COST_CAP = 1e3

_PATH: contextvars.ContextVar[str] = contextvars.ContextVar("distree_config_path", default="")


def _bad(name: str, value: Any, allowed: str) -> ValueError:
    """:func:`not_allowed` with the field's dotted path (``cluster.compute.levels``)."""
    return not_allowed(f"{_PATH.get()}{name}", value, allowed)


def _number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    why: str = "",
) -> float:
    """A finite real number within bounds (bool is not a number here; numpy scalars are)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise _bad(name, value, "expected a finite number")
    if isinstance(value, np.complexfloating):
        raise _bad(name, value, "expected a real number")
    lo = "" if low is None else (f"> {low:g}" if low_open else f">= {low:g}")
    hi = "" if high is None else f"<= {high:g}"
    allowed = "a finite number " + " and ".join(x for x in (lo, hi) if x)
    if why:
        allowed += f" ({why})"
    try:
        v = float(value)
    except OverflowError:
        raise _bad(name, value, allowed) from None
    if not math.isfinite(v):
        raise _bad(name, value, allowed)
    if low is not None and (v <= low if low_open else v < low):
        raise _bad(name, value, allowed)
    if high is not None and v > high:
        raise _bad(name, value, allowed)
    return v


def check_drain_weight(value: Any, name: str) -> None:
    """ValueError naming ``name`` (a config path or a command-line flag) unless ``value`` is a
    number in [0, MAX_DRAIN_WEIGHT]."""
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
    if not number or not 0.0 <= value <= MAX_DRAIN_WEIGHT:  # also NaN
        raise not_allowed(name, value, f"a number in [0, {MAX_DRAIN_WEIGHT:g}] (0: no queue term)")


def _integer(name: str, value: Any, low: int, high: int, cap: str = "") -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise _bad(name, value, f"expected an integer in [{low}, {high}]")
    if not low <= int(value) <= high:
        raise _bad(name, value, f"an integer in [{low}, {high}]" + (f" ({cap})" if cap else ""))
    return int(value)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise _bad(name, value, f"one of {', '.join(allowed)}")
    return value


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise _bad(name, value, "true or false")
    return bool(value)


def _share(name: str, value: Any) -> float:
    return _number(
        name,
        value,
        low=MIN_SHARE,
        high=1.0,
        why=f"an availability share; below {MIN_SHARE} a resource is down, not slow (MIN_SHARE)",
    )


def _plain(value: Any) -> Any:
    """Turn numpy scalars into Python numbers, lists and arrays become tuples (recursively), so
    configs stay hashable, frozen and JSON-friendly."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _normalise(obj: Any) -> None:
    """Apply :func:`_plain` to every field of a dataclass instance (before validation), and
    build nested sections given as dicts."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        section = _NESTED.get(type(obj), {}).get(f.name)
        if section is not None and isinstance(value, dict):
            value = _build(section, value, f"{_PATH.get()}{f.name}.")
        object.__setattr__(obj, f.name, _plain(value))


# ---- nested sections --------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcessConfig:
    """How availability (a share of peak, in [MIN_SHARE, 1]) of the devices or links evolves.

    kind: ``constant`` (``value``), ``iid`` (a fresh level, one of ``IID_LEVELS`` evenly spaced
    in [``low``, ``high``], held for a random time of mean one step), ``markov`` (``levels``
    with a row-stochastic ``transition`` per step, stationary start),
    ``trace`` (``csv``: a path to a CSV of shares, rows = steps, one column per resource or one
    shared column; or ``"hsdpa"``: the shipped 3G traces of ``split``, ``val`` or ``test``).
    A step is one request (``cluster.clock="request"``) or ``step_ms`` of wall-clock time
    (``clock="time"``); mean dwell in Markov level i is ``step_ms / (1 - transition[i][i])``.
    """

    kind: str = "markov"
    value: float = 1.0
    low: float = 0.5
    high: float = 1.0
    levels: tuple[float, ...] = (1.0, 0.5, 0.2)
    transition: tuple[tuple[float, ...], ...] = (
        (0.90, 0.08, 0.02),
        (0.20, 0.70, 0.10),
        (0.10, 0.30, 0.60),
    )
    step_ms: float = 100.0
    csv: str | None = None
    split: str = "val"

    def __post_init__(self) -> None:
        _normalise(self)
        _choice("kind", self.kind, RESOURCE_PROCESSES)
        _share("value", self.value)
        lo, hi = _share("low", self.low), _share("high", self.high)
        if lo > hi:
            raise _bad("low", self.low, f"<= high ({self.high})")
        levels = self.levels
        if not isinstance(levels, tuple) or not 2 <= len(levels) <= MAX_MARKOV_LEVELS:
            raise _bad(
                "levels",
                levels,
                f"a list of 2 to {MAX_MARKOV_LEVELS} availability levels (MAX_MARKOV_LEVELS)",
            )
        for i, level in enumerate(levels):
            _share(f"levels[{i}]", level)
        s = len(levels)
        t = self.transition
        if (
            not isinstance(t, tuple)
            or len(t) != s
            or not all(isinstance(row, tuple) and len(row) == s for row in t)
        ):
            raise _bad("transition", t, f"a {s}x{s} matrix (one row and column per level)")
        for i, row in enumerate(t):
            for j, p in enumerate(row):
                _number(f"transition[{i}][{j}]", p, low=0.0, high=1.0)
            total = sum(float(p) for p in row)
            if abs(total - 1.0) > 1e-6:
                raise _bad(f"transition[{i}]", row, f"a row summing to 1 (sums to {total:.6g})")
        _number("step_ms", self.step_ms, low=1e-3, high=1e7, why="1 microsecond to ~3 hours")
        _choice("split", self.split, tuple(HSDPA_SPLITS))
        if self.kind == "trace":
            if not isinstance(self.csv, str) or not self.csv.strip():
                raise _bad("csv", self.csv, "'hsdpa' or a path to a share CSV when kind='trace'")
        elif self.csv is not None:
            raise _bad("csv", self.csv, "None unless kind='trace'")


def _check_pipelining(config: EnvConfig) -> None:
    """What ``cluster.pipelining`` needs from the other fields (its topology is checked when the
    trace is read). Why ``system`` reward timing is refused: it pays the latency of every request
    in the system at each decision, in the order of time; with several requests in flight the
    decisions are taken request by request, not in the order of time."""
    needs = (
        ("arrivals.kind", config.arrivals.kind, config.arrivals.kind != "isolated",
         "a request stream (not 'isolated')"),
        ("cluster.clock", config.cluster.clock, config.cluster.clock == "time", "'time'"),
        ("reward.timing", config.reward.timing, config.reward.timing in ("request", "stage"),
         "'request' or 'stage'"),
    )  # fmt: skip
    for name, value, ok, allowed in needs:
        if not ok:
            raise not_allowed(
                name,
                value,
                f"{allowed} when cluster.pipelining is true (scenario 'pipelined-stream' sets "
                "every field pipelining needs, its pipeline-topology trace included)",
            )


def _wifi5_bandwidth() -> ProcessConfig:
    return ProcessConfig(
        levels=(1.0, 0.4, 0.1),
        transition=((0.85, 0.12, 0.03), (0.25, 0.65, 0.10), (0.15, 0.35, 0.50)),
    )


def _check_cold_start(extra_ms: Any, tau_ms: Any) -> None:
    """``cluster.cold_start_ms`` (per stage, ms) and ``cluster.cold_start_tau_ms``."""
    if not isinstance(extra_ms, tuple) or len(extra_ms) > 64:
        raise _bad("cold_start_ms", extra_ms, "a list of at most 64 numbers")
    for i, extra in enumerate(extra_ms):
        _number(f"cold_start_ms[{i}]", extra, low=0.0, high=1e4,
                why="a stage's extra time between 0 and 10 s")  # fmt: skip
    _number("cold_start_tau_ms", tau_ms, low=0.1, high=6e5,
            why="how fast idle devices cool, 0.1 ms to 10 minutes")  # fmt: skip


@dataclass(frozen=True)
class ClusterConfig:
    """Devices, links, how their availability evolves, and what the policy can measure.

    ``devices``/``links``: one entry per device (the trace fixes the count): a profile name from
    ``DEVICE_PROFILES`` / ``LINK_PROFILES`` or an effective rate (FLOP/s, bytes/s); ``None``
    repeats ``device_profile`` / ``link_profile``. Link d is device d's link.
    ``link_latency_ms``: per-message latency of links given as numbers. ``stage_overhead_ms``:
    fixed cost of every stage (dispatch, serialisation). ``exit_overhead_ms``: time of each exit
    head at full speed beyond its FLOPs; it runs on the exit device's share of compute, so it
    stretches as that device's availability drops (on a small network a head's cost is mostly
    the framework's per-call time, which FLOPs do not count). ``decision_ms``: what the exit
    controller spends per decision (building the observation, running the policy), added to every
    stage; it is the policy's cost, not the cluster's, so a heavier policy answers later
    (``experiments.calibrate_cluster`` fits it on a live run and carries it over to another
    policy by timing both offline; the live runtime pays the real one). ``handover_ms``: fixed
    time between a request's end (or, on idle devices, its successor's arrival) and its
    successor's start.
    ``stall_probability``/``stall_mean_ms``: with this probability a hand-over to a request that
    was waiting also stalls for an exponentially distributed time of this mean: the rare pauses
    of a loaded host (measured live on busy hand-overs only; idle devices start on time),
    which lengthen the queue far more than their mean suggests (``experiments.calibrate_cluster``
    fits all three from live records; 0 = none). ``stall_seed``: which realisation of the stalls
    (they have a random stream of their own, so arrivals and resource paths stay those of the
    env's seed, as in a live run driven by the same seed). ``decision_bytes``: the continue
    decision the aggregator sends back to every device (parallel topology; 0 = none).
    ``cold_start_ms``: per exit stage, the extra time (ms at full speed, devices and exit head
    together) a request's stage takes when the cluster was idle for long before the request
    started; after ``idle`` ms of idling it is ``cold_start_ms[k] x (1 - exp(-idle /
    cold_start_tau_ms))``, stretched by the exit device's compute share. Empty (the default):
    none. Why: a core that idled computes its next stage more slowly (caches, clock): 50-65% on
    the first stage after 40 ms, measured live; a light load meets cold devices, a queue warm
    ones (``experiments.calibrate_cluster`` fits both fields from live records).
    ``pipelining`` (pipeline topology only): devices work on different requests at once, as in
    MDI-Exit's pipeline: device 0 takes the next waiting request as soon as it has finished stage
    0 of the previous one, and stage k of a request starts when stage k-1 has ended and device k
    has finished the requests ahead of it (FIFO; buffers between devices unbounded up to
    ``QUEUE_HARD_CAP`` requests in a stream's system, beyond which arrivals are dropped; the
    queue and its capacity are the waiting requests that device 0 has not started). False (the
    default): one request in service at a time. It needs a request stream (not ``isolated``),
    ``clock="time"`` and a per-request reward timing (``request`` or ``stage``).
    ``clock``: ``time`` (processes run in wall-clock time on a ``tick_ms`` grid) or ``request``
    (levels drawn once per request, the first version). ``measurement_period_ms``: the policy sees
    the levels measured at the last multiple of this period (0: the present tick).
    """

    devices: tuple[str | float, ...] | None = None
    device_profile: str = "raspberry-pi-4"
    links: tuple[str | float, ...] | None = None
    link_profile: str = "wifi-5"
    link_latency_ms: float = 1.0
    stage_overhead_ms: float = 0.0
    exit_overhead_ms: float = 0.0
    decision_ms: float = 0.0
    handover_ms: float = 0.0
    stall_probability: float = 0.0
    stall_mean_ms: float = 0.0
    stall_seed: int = 0
    cold_start_ms: tuple[float, ...] = ()
    cold_start_tau_ms: float = 40.0
    decision_bytes: float = 64.0
    pipelining: bool = False
    clock: str = "time"
    tick_ms: float = 10.0
    measurement_period_ms: float = 100.0
    compute: ProcessConfig = field(default_factory=ProcessConfig)
    bandwidth: ProcessConfig = field(default_factory=_wifi5_bandwidth)

    def __post_init__(self) -> None:
        _normalise(self)
        for name, profiles in (
            ("device_profile", DEVICE_PROFILES),
            ("link_profile", LINK_PROFILES),
        ):
            _choice(name, getattr(self, name), tuple(sorted(profiles)))
        for name, entries, profiles, bounds in (
            ("devices", self.devices, DEVICE_PROFILES, _FLOPS),
            ("links", self.links, LINK_PROFILES, _BYTES_PER_S),
        ):
            if entries is None:
                continue
            if not isinstance(entries, tuple) or not 1 <= len(entries) <= 64:
                raise _bad(name, entries, "None or a list of 1 to 64 entries")
            for i, entry in enumerate(entries):
                if isinstance(entry, str):
                    _choice(f"{name}[{i}]", entry, tuple(sorted(profiles)))
                else:
                    _number(f"{name}[{i}]", entry, low=bounds[0], high=bounds[1], why=bounds[2])
        _number("link_latency_ms", self.link_latency_ms, low=_LATENCY_MS[0],
                high=_LATENCY_MS[1], why=_LATENCY_MS[2])  # fmt: skip
        _number("stage_overhead_ms", self.stage_overhead_ms, low=0.0, high=1e4,
                why="a fixed per-stage cost between 0 and 10 s")  # fmt: skip
        _number("exit_overhead_ms", self.exit_overhead_ms, low=0.0, high=1e4,
                why="an exit head's fixed time between 0 and 10 s")  # fmt: skip
        _number("decision_ms", self.decision_ms, low=0.0, high=1e4,
                why="a per-decision cost between 0 and 10 s")  # fmt: skip
        for name in ("handover_ms", "stall_mean_ms"):
            _number(name, getattr(self, name), low=0.0, high=1e4,
                    why="a pause between 0 and 10 s")  # fmt: skip
        _number("stall_probability", self.stall_probability, low=0.0, high=1.0)
        _integer("stall_seed", self.stall_seed, 0, 2**32 - 1, "2**32 - 1")
        _check_cold_start(self.cold_start_ms, self.cold_start_tau_ms)
        _number("decision_bytes", self.decision_bytes, low=0.0, high=1e6,
                why="a small control message, at most 1 MB")  # fmt: skip
        _boolean("pipelining", self.pipelining)
        _choice("clock", self.clock, CLOCKS)
        _number("tick_ms", self.tick_ms, low=0.1, high=1e4,
                why="the resource time grid, 0.1 ms to 10 s")  # fmt: skip
        period = _number("measurement_period_ms", self.measurement_period_ms, low=0.0, high=6e5,
                         why="0 (exact) up to 10 minutes")  # fmt: skip
        if 0.0 < period < self.tick_ms:
            raise _bad("measurement_period_ms", self.measurement_period_ms,
                       f"0 (exact) or >= tick_ms ({self.tick_ms}): levels change on the tick "
                       "grid")  # fmt: skip
        for name in ("compute", "bandwidth"):
            proc = getattr(self, name)
            if not isinstance(proc, ProcessConfig):
                raise _bad(name, proc, "a ProcessConfig or a dict")
            if self.clock == "time" and proc.step_ms < self.tick_ms:
                raise _bad(f"{name}.step_ms", proc.step_ms,
                           f">= tick_ms ({self.tick_ms}): a process cannot step faster than the "
                           "time grid")  # fmt: skip


@dataclass(frozen=True)
class ArrivalConfig:
    """How requests arrive: ``kind`` in ``isolated`` (the next request arrives when the previous
    one is answered; no queue), ``poisson``, ``bursty`` (on/off MMPP: exponential periods of mean
    ``on_ms``/``off_ms``, the off rate ``off_share`` times the on rate), ``periodic`` (a camera at
    ``rate_per_s`` frames per second), ``trace`` (arrival times in ms from ``csv``: a path, or a
    name from ``SHIPPED_ARRIVALS``, the measured arrivals of an Azure LLM inference service, its
    hour's first half for ``split="val"`` and its second half for ``split="test"``).

    A trace is time-scaled to the mean rate when one is set (both None: replayed as recorded).
    The mean rate is ``rate_per_s`` or, if that is None, ``utilisation`` / (mean last-exit
    service time with resources at their stationary levels; with ``cluster.pipelining``, the
    mean stage time of the slowest device: what the pipeline can serve).
    """

    kind: str = "poisson"
    rate_per_s: float | None = None
    utilisation: float | None = 0.7
    on_ms: float = 1000.0
    off_ms: float = 3000.0
    off_share: float = 0.25
    csv: str | None = None
    split: str = "val"

    def __post_init__(self) -> None:
        _normalise(self)
        _choice("kind", self.kind, ARRIVAL_PROCESSES)
        _choice("split", self.split, ARRIVAL_SPLITS)
        if self.rate_per_s is not None:
            _number("rate_per_s", self.rate_per_s, low=_RATE_PER_S[0], high=_RATE_PER_S[1],
                    why=_RATE_PER_S[2])  # fmt: skip
        if self.utilisation is not None:
            _number("utilisation", self.utilisation, low=1e-3, high=10.0,
                    why="offered load relative to the last-exit service time")  # fmt: skip
        if self.kind in ("poisson", "bursty", "periodic") and (
            (self.rate_per_s is None) == (self.utilisation is None)
        ):
            raise _bad("rate_per_s", self.rate_per_s,
                       f"exactly one of rate_per_s and utilisation set for kind={self.kind!r} "
                       f"(utilisation={self.utilisation!r})")  # fmt: skip
        for name in ("on_ms", "off_ms"):
            _number(name, getattr(self, name), low=1e-3, high=1e8, why="a mean period duration")
        _number("off_share", self.off_share, low=0.0, high=1.0,
                why="the off state's rate as a share of the on state's")  # fmt: skip
        if self.kind == "trace":
            if not isinstance(self.csv, str) or not self.csv.strip():
                raise _bad("csv", self.csv, f"one of {', '.join(SHIPPED_ARRIVALS)} or a path "
                           "to a CSV of arrival times when kind='trace'")  # fmt: skip
        elif self.csv is not None:
            raise _bad("csv", self.csv, "None unless kind='trace'")


@dataclass(frozen=True)
class QueueConfig:
    """Requests waiting for the devices: at most ``capacity``; ``overflow`` says what happens to
    a request that arrives when the queue is full: ``drop`` (refused) or ``admit`` (admitted
    anyway, counted as an overflow; at most QUEUE_HARD_CAP wait)."""

    capacity: int = 16
    overflow: str = "drop"

    def __post_init__(self) -> None:
        _normalise(self)
        _integer("capacity", self.capacity, 1, QUEUE_HARD_CAP, "QUEUE_HARD_CAP")
        _choice("overflow", self.overflow, OVERFLOW_POLICIES)


@dataclass(frozen=True)
class RewardConfig:
    """Reward of a request: ``correct_bonus`` if its answer is right (else ``-wrong_penalty``),
    minus ``latency_weight * latency_ms / deadline_ms`` (latency from its arrival), minus
    ``deadline_penalty`` if it missed the deadline. ``timing`` says when the latency cost is
    paid (see REWARD_TIMINGS). A dropped request costs ``wrong_penalty + deadline_penalty``.

    ``drain_weight`` > 0 (v3) adds at every episode end ``drain_weight x (queue cost at the
    episode's start - queue cost now)``, the queue cost being the latency reward the waiting
    requests would accrue if each took the mean last-exit service time
    (``latency_weight / deadline_ms x mean_service_ms x n (n + 1) / 2`` for ``n`` waiting). Why:
    with one request per episode, ``system`` timing charges a request the wait it causes while
    it is served, not the longer queue it leaves behind, which every later request waits
    through; a learner optimising one episode at a time then continues too often. The term is a
    potential difference (Ng et al., 1999): over a stream it telescopes to the queue cost at the
    start minus at the end, so it changes what a learner sees per episode, not what a policy
    earns per request (``agents.evaluate`` scores each request's own reward)."""

    correct_bonus: float = 1.0
    wrong_penalty: float = 0.0
    latency_weight: float = 0.5
    deadline_penalty: float = 0.5
    timing: str = "system"
    drain_weight: float = 0.0

    def __post_init__(self) -> None:
        _normalise(self)
        for name in ("correct_bonus", "wrong_penalty", "latency_weight", "deadline_penalty"):
            _number(name, getattr(self, name), low=0.0, high=_COST_CAP,
                    why=f"reward weights are capped at {_COST_CAP:g}")  # fmt: skip
        _choice("timing", self.timing, REWARD_TIMINGS)
        check_drain_weight(self.drain_weight, f"{_PATH.get()}drain_weight")

    @property
    def drop_cost(self) -> float:
        """What a request refused by a full queue costs."""
        return self.wrong_penalty + self.deadline_penalty

    def request_reward(self, correct: Any, latency_ms: Any, deadline_ms: float) -> np.ndarray:
        """Each answered request's own reward, elementwise: what the Oracle maximises and what
        ``agents.evaluate`` scores, whatever the timing that pays it to a learner."""
        return (
            np.where(correct, self.correct_bonus, -self.wrong_penalty)
            - latency_ms * (self.latency_weight / deadline_ms)
            - np.where(latency_ms > deadline_ms, self.deadline_penalty, 0.0)
        )


# ---- top level --------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvConfig:
    """Everything that defines a DistrEE environment (see the env's card).

    :param trace: ``"synthetic"``, ``"synthetic-pipeline"``, ``"synthetic:key=value,..."``, a
        shipped name (``"cifar10-val"``, ``"cifar10-test"``) or a path to an exit-trace ``.npz``.
    :param requests_per_episode: answered requests per episode (cap MAX_REQUESTS_PER_EPISODE).
    :param deadline_ms: QoS deadline of a request, counted from its arrival.
    :param max_elapsed_ratio: upper clip of ``elapsed_ratio`` and ``oldest_wait_ratio``.
    :param episode_end: one of EPISODE_ENDS (default ``terminate-continue``: every request is
        an episode, and the stream goes on across ``reset()`` calls without a seed).
    :param arrivals: the request stream; :param queue: the waiting queue; :param cluster: devices,
        links and resource processes; :param reward: reward weights and timing.
    """

    trace: str = DEFAULT_TRACE
    requests_per_episode: int = 1
    deadline_ms: float = 100.0
    max_elapsed_ratio: float = 4.0
    episode_end: str = "terminate-continue"
    arrivals: ArrivalConfig = field(default_factory=ArrivalConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        _normalise(self)
        if not isinstance(self.trace, str) or not self.trace.strip():
            raise _bad("trace", self.trace, "a trace name or a path to an .npz file")
        _integer("requests_per_episode", self.requests_per_episode, 1, MAX_REQUESTS_PER_EPISODE,
                 "MAX_REQUESTS_PER_EPISODE")  # fmt: skip
        _number("deadline_ms", self.deadline_ms, low=_DEADLINE_MS[0], high=_DEADLINE_MS[1],
                why=_DEADLINE_MS[2])  # fmt: skip
        _number("max_elapsed_ratio", self.max_elapsed_ratio, low=1.0, high=1e3)
        _choice("episode_end", self.episode_end, EPISODE_ENDS)
        for name, cls in _NESTED[EnvConfig].items():
            if not isinstance(getattr(self, name), cls):
                raise _bad(name, getattr(self, name), f"a {cls.__name__} or a dict")
        if self.cluster.pipelining:
            _check_pipelining(self)

    # ---- conversion ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvConfig:
        """Build from a (possibly partial, nested) dict; missing fields take their defaults."""
        return _build(cls, data, "")

    def replace(self, overrides: dict[str, Any] | None = None, **kwargs: Any) -> EnvConfig:
        """A copy with overrides: dotted keys (``"reward.latency_weight"``) or nested dicts."""
        if overrides is not None and not isinstance(overrides, dict):
            raise ValueError(f"overrides={overrides!r:.200} is not allowed: expected a dict")
        merged = self.to_dict()
        for key, value in {**(overrides or {}), **kwargs}.items():
            if not isinstance(key, str):
                raise ValueError(
                    f"override key {key!r:.100} is not allowed: field names are strings "
                    "(dotted for nested fields, e.g. 'reward.latency_weight')"
                )
            _merge(merged, key, value)
        return EnvConfig.from_dict(merged)

    # ---- scenarios ----------------------------------------------------------------------------
    @classmethod
    def scenario(cls, name: str, **overrides: Any) -> EnvConfig:
        """The named scenario (see ``SCENARIOS``), with optional overrides (fields, nested dicts
        or dotted keys; TypeError for a keyword that is no field)."""
        return cls().with_scenario(name).replace(keyword_overrides("EnvConfig.scenario", overrides))

    def with_scenario(self, name: str) -> EnvConfig:
        """Return a copy with the fields that scenario ``name`` sets replaced."""
        if not isinstance(name, str) or name not in SCENARIOS:
            raise ValueError(
                f"scenario={name!r:.100} is not allowed: one of {', '.join(SCENARIOS)}"
            )
        return self.replace(SCENARIOS[name])


_NESTED: dict[type, dict[str, type]] = {
    EnvConfig: {
        "arrivals": ArrivalConfig,
        "queue": QueueConfig,
        "cluster": ClusterConfig,
        "reward": RewardConfig,
    },
    ClusterConfig: {"compute": ProcessConfig, "bandwidth": ProcessConfig},
}


def _build(cls: type, data: Any, path: str) -> Any:
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        where = path.rstrip(".") or "config"
        raise ValueError(
            f"{where}={data!r:.200} is not allowed: expected a dict (or {cls.__name__})"
        )
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if not isinstance(key, str):
            raise ValueError(f"{path}{key!r:.100} is not allowed: field names are strings")
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"{path}{unknown[0]} is not a known field of {cls.__name__}; allowed: {sorted(names)}"
        )
    kwargs = dict(data)
    for key, sub in _NESTED.get(cls, {}).items():
        if key in kwargs:
            kwargs[key] = _build(sub, kwargs[key], f"{path}{key}.")
    token = _PATH.set(path)
    try:
        return cls(**kwargs)
    finally:
        _PATH.reset(token)


def _merge(target: dict[str, Any], key: str, value: Any, create: bool = False) -> None:
    """Set a dotted key (or merge a nested dict) into a to_dict()-style mapping."""
    head, _, rest = key.partition(".")
    if rest:
        sub = target.get(head)
        if sub is None and create:
            sub = target[head] = {}
        if not isinstance(sub, dict):
            raise ValueError(f"{key} is not a known field: {head!r} is not a section")
        _merge(sub, rest, value, create)
        return
    if isinstance(value, dict) and (isinstance(target.get(head), dict) or create):
        target.setdefault(head, {})
        if not isinstance(target[head], dict):
            target[head] = {}
        for sub_key, sub_value in value.items():
            if not isinstance(sub_key, str):
                raise ValueError(f"{key}.{sub_key!r:.100} is not allowed: field names are strings")
            _merge(target[head], sub_key, sub_value, create)
        return
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = json.loads(json.dumps(dataclasses.asdict(value)))
    target[head] = value


# ---- scenarios: override dicts on top of the defaults (= steady-stream) ------------------------
_ISOLATED: dict[str, Any] = {
    "requests_per_episode": 32,
    "deadline_ms": 40.0,
    "episode_end": "terminate",
    "arrivals": {"kind": "isolated"},
    "cluster": {"clock": "request", "decision_bytes": 0.0},
    "reward": {"timing": "stage"},
}
_CONGESTED = {
    "cluster": {
        "compute": {
            "levels": [1.0, 0.5, 0.2],
            "transition": [[0.60, 0.30, 0.10], [0.15, 0.60, 0.25], [0.05, 0.25, 0.70]],
        },
        "bandwidth": {
            "levels": [1.0, 0.3, 0.08],
            "transition": [[0.50, 0.35, 0.15], [0.10, 0.60, 0.30], [0.05, 0.25, 0.70]],
        },
    }
}


def _merged(*parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            _merge(out, key, json.loads(json.dumps(value)), create=True)
    return out


#: Named scenarios: overrides on top of ``EnvConfig()``'s defaults (which are ``steady-stream``).
SCENARIOS: dict[str, dict[str, Any]] = {
    "isolated": _ISOLATED,
    "stable": _merged(
        _ISOLATED, {"cluster": {"compute": {"kind": "constant"}, "bandwidth": {"kind": "constant"}}}
    ),
    "fluctuating": _ISOLATED,
    "congested": _merged(_ISOLATED, _CONGESTED),
    "steady-stream": {},
    "bursty-stream": {"arrivals": {"kind": "bursty", "utilisation": 0.95}},
    "wifi-contention": {
        "cluster": {
            "link_profile": "wifi-4",
            "compute": {"kind": "constant"},
            "bandwidth": {
                "levels": [0.5, 0.1, 0.02],
                "transition": [[0.80, 0.15, 0.05], [0.20, 0.65, 0.15], [0.10, 0.30, 0.60]],
                "step_ms": 50.0,
            },
        }
    },
    "cellular": {
        "deadline_ms": 1000.0,
        "cluster": {
            "link_profile": "hsdpa-3g",
            "tick_ms": 50.0,
            "bandwidth": {"kind": "trace", "csv": "hsdpa", "split": "val", "step_ms": 100.0},
        },
    },
    "azure-code": {
        "arrivals": {"kind": "trace", "csv": "azure-llm-code", "split": "val", "utilisation": 0.3}
    },
    "pipeline": {"trace": DEFAULT_PIPELINE_TRACE},
    "pipelined-stream": {
        "trace": DEFAULT_PIPELINE_TRACE,
        "cluster": {"pipelining": True},
        "reward": {"timing": "stage"},
    },
}

#: What each scenario's numbers stand for (shown in the env card and the README).
SCENARIO_SOURCES: dict[str, str] = {
    "isolated": "The first version's dynamics (DistrEE-v0): one request at a time, resources drawn "
    "per request from Markov chains (idle/busy/overloaded), 40 ms deadline.",
    "stable": "isolated, with constant full availability: exits trade accuracy for compute only.",
    "fluctuating": "isolated (the first version's default processes).",
    "congested": "isolated, with links often slow and devices often overloaded.",
    "steady-stream": "A camera or sensor stream into a small edge cluster: Poisson arrivals at 70% "
    "of the last-exit service capacity (moderate load), a 100 ms deadline (the response time that "
    "feels instantaneous, Nielsen, Usability Engineering, 1993), a 16-request queue, device load "
    "and Wi-Fi 5 throughput as Markov chains in time, measured every 100 ms.",
    "bursty-stream": "Event-triggered cameras: on/off Markov-modulated Poisson arrivals (the "
    "standard bursty-traffic model, Heffes & Lucantoni, IEEE JSAC 1986), 1 s bursts every ~4 s, "
    "mean utilisation 0.95 (bursts overload the cluster, quiet periods drain it).",
    "wifi-contention": "A link-bound cluster: dedicated devices (constant compute) on Wi-Fi 4 "
    "links shared with other stations; under 802.11 DCF saturation each of n stations gets about "
    "1/n of the goodput (Bianchi, IEEE JSAC 2000): 50%, 10% or 2% (2, 10 or 50 busy stations), "
    "changing every ~100-250 ms.",
    "cellular": "Devices on 3G/HSDPA uplinks: every link replays measured commute throughput "
    "(Riiser et al., MMSys 2013, the traces used by Pensieve), val files to train, test files to "
    "measure; 50 ms per message (assumed), 1 s deadline, levels on a 50 ms grid (the traces are "
    "sampled every 100 ms: each value holds for two ticks).",
    "azure-code": "Requests arriving as at a production inference service: the measured arrival "
    "times of Azure's code-completion LLM service (2023-11-16; Patel et al., Splitwise, ISCA "
    "2024), on/off bursts with minutes of silence between minutes of hundreds of requests, "
    "time-scaled to 30% of the last-exit service capacity on average: a cluster sized for the "
    "busiest minute of the hour's first half (3.5 times the mean rate), which then offers about "
    "the last-exit capacity; the first half to tune and train, the second half to measure; "
    "otherwise steady-stream.",
    "pipeline": "steady-stream on the pipeline topology (MDI-Exit): one backbone cut across the "
    "devices, feature maps shipped between them; one request in service at a time.",
    "pipelined-stream": "pipeline with the devices working on different requests at once, as "
    "MDI-Exit's pipeline does (device k runs stage k of one request while device k-1 runs stage "
    "k-1 of the next); Poisson arrivals at 70% of what the slowest device can serve; each "
    "decision pays its own request's latency since its previous decision (stage timing).",
}


def keyword_overrides(owner: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Config overrides given as keyword arguments of ``owner``; a keyword that is no
    ``EnvConfig`` field (before any dot) is a TypeError, as for any Python callable (libraries
    fall back on it)."""
    fields = {f.name: f for f in dataclasses.fields(EnvConfig)}
    for key in overrides:
        if key.partition(".")[0] not in fields:
            raise TypeError(
                f"{owner}() got an unexpected keyword argument {key!r}"
                f"{_nested_hint(key, fields)}; EnvConfig fields: {', '.join(fields)} "
                "(nested ones as 'section.field' or section={...})"
            )
    return overrides


def _nested_hint(key: str, fields: dict[str, dataclasses.Field]) -> str:
    """`` (did you mean 'cluster.x'?)`` when ``key`` names a field of a config section, and
    where a seed goes when ``key`` is ``seed``."""
    if key == "seed":
        return " (a seed goes to reset(seed=...), not to the config)"
    for name, f in fields.items():
        section = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if section is not None and dataclasses.is_dataclass(section):
            if key in {g.name for g in dataclasses.fields(section)}:
                return f" (did you mean {name + '.' + key!r}?)"
    return ""


def build_config(
    config: EnvConfig | dict[str, Any] | None = None,
    scenario: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> EnvConfig:
    """The config an environment is constructed with: ``config`` (an EnvConfig, a dict or None
    for the defaults) or the ``scenario``'s, then keyword ``overrides`` (dotted keys or nested
    dicts).

    Why not both: a scenario sets arrivals, cluster, deadline and trace, so applied on top of a
    given config it would silently replace most of it (a registered id passes its scenario, so
    ``gym.make(id, config=...)`` would run the id's scenario, not the config).

    :param config: base configuration.
    :param scenario: a name from ``SCENARIOS`` or None.
    :param overrides: field overrides applied last.
    """
    if config is not None and scenario is not None:
        raise ValueError(
            f"config= and scenario={scenario!r} are both given (a registered id passes its "
            "scenario): the scenario would overwrite the config. Give a whole config to "
            "distree_env.DistrEEEnv(config=...) or DistrEEVecEnv(n, config=...), or a scenario "
            "and keyword overrides to gym.make"
        )
    if config is None:
        cfg = EnvConfig()
    elif isinstance(config, EnvConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = EnvConfig.from_dict(config)
    else:
        raise ValueError(
            f"config={config!r:.200} is not allowed: expected an EnvConfig, a dict or None"
        )
    if scenario is not None:
        cfg = cfg.with_scenario(scenario)
    if overrides:
        cfg = cfg.replace(overrides)
    return cfg
