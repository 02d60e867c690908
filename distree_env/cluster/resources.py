"""Resource processes: how much of each device's compute and each link's bandwidth is available.

Why processes in wall-clock time: a real edge device's load and a shared link's throughput change
while a request runs, so its later stages can meet other levels than the ones seen at its current
exit. A process is a sample path of availability shares on a grid: one grid step per request
(``clock="request"``, the first version's behaviour: levels held for a whole request) or one per
``tick_ms`` of wall-clock time (``clock="time"``).

Kinds: ``constant``; ``iid`` (one of ``IID_LEVELS`` evenly spaced levels in [low, high], drawn
afresh when the level moves: in the time clock each level holds for a random time of mean
``step_ms``); ``markov`` (a chain over ``levels`` with a row-stochastic ``transition`` per step,
started from its stationary distribution); ``trace`` (a CSV of shares, or the shipped 3G/HSDPA
traces, replayed; a CSV with more than 256 distinct values is rounded onto a log grid of 256,
and a single column shared by several resources is replayed by each from its own random
offset). In the time clock a step lasts ``step_ms``: on the tick grid the chain moves with
probability ``tick_ms / step_ms`` per tick, so the mean dwell in level i is
``step_ms / (1 - P_ii)`` (a continuous-time chain discretised on the tick grid).

A path is drawn once per seed as a pool of grid steps (uint8 codes into a level table) and replayed
cyclically from a random offset per environment, so a step needs two array look-ups. Two
approximations follow. A Markov or iid path is drawn in independent pieces of
``SEGMENT_STEPS`` grid steps, each started from the stationary distribution, so dwell times
comparable to a piece or longer (2,048 ticks: 20.48 s at the default 10 ms tick) come out
shorter than configured. The pool's length is a power of two, so a replayed trace fills it with
whole copies and then its first rows once more: unless its length divides the pool's, those rows
weigh a little more, and a stream that wraps around the pool jumps back to the trace's first row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distree_env.cluster.profiles import HSDPA_PEAK_MBPS
from distree_env.io import csv_rows

__all__ = [
    "CLOCKS",
    "HSDPA_SPLITS",
    "MAX_MARKOV_LEVELS",
    "MIN_SHARE",
    "POOL_STEPS",
    "RESOURCE_PROCESSES",
    "ProcessPath",
    "ResourcePaths",
    "ResourceTimeline",
    "hsdpa_shares",
    "load_share_csv",
    "stationary_distribution",
]

RESOURCE_PROCESSES = ("constant", "iid", "markov", "trace")
#: What one grid step of a resource path is: a request, or ``tick_ms`` of wall-clock time.
CLOCKS = ("request", "time")
#: Smallest availability share: below 1% a device or link is down, not slow (and latencies of
#: 1/share would explode to meaningless values).
MIN_SHARE = 0.01
#: Largest number of levels of a Markov process (tables per level stay small).
MAX_MARKOV_LEVELS = 16
#: Levels of an ``iid`` process (uniform draws are quantised to this many levels in [low, high]).
IID_LEVELS = 32
#: Largest number of distinct levels a trace keeps exactly; more are quantised on a log grid.
TRACE_LEVELS = 256
#: Largest number of rows of a share CSV or grid steps of a replayed trace.
MAX_TRACE_STEPS = 1 << 22
#: Grid steps of the resource pool of one stream (a power of two; the vector env's pool grows
#: with the number of streams, see ``distree_env.dynamics.pool_steps``).
POOL_STEPS = 1 << 15
#: Grid steps of a Markov/iid chain drawn in one piece (longer pools are independent pieces,
#: each started from the stationary distribution: sampled in parallel).
SEGMENT_STEPS = 2048
#: Shipped HSDPA files per split (one per transport mode; ``val`` to tune, ``test`` to measure).
HSDPA_SPLITS = {
    split: tuple(
        f"norway_{mode}_{number}.tsv" for mode in ("bus", "car", "ferry", "metro", "train", "tram")
    )
    for split, number in (("val", 1), ("test", 3))
}
_HSDPA_DIR = Path(__file__).resolve().parent.parent / "data" / "bandwidth" / "hsdpa"


def stationary_distribution(transition: np.ndarray) -> np.ndarray:
    """Stationary distribution of a row-stochastic matrix (least squares; uniform fallback)."""
    p = np.asarray(transition, dtype=np.float64)
    s = p.shape[0]
    a = np.vstack([p.T - np.eye(s), np.ones((1, s))])
    b = np.zeros(s + 1)
    b[-1] = 1.0
    pi, *_ = np.linalg.lstsq(a, b, rcond=None)
    pi = np.clip(pi, 0.0, None)
    total = pi.sum()
    return pi / total if total > 0 else np.full(s, 1.0 / s)


def load_share_csv(path: str | Path, field: str = "csv") -> np.ndarray:
    """Read a CSV of availability shares (rows = grid steps) as ``[T, columns]`` float64.

    A header row is allowed (skipped when none of its cells is a number). Values must be finite
    and in [MIN_SHARE, 1]. Raises ValueError naming the field, the file, the row and the problem.
    """
    p = Path(path)
    rows: list[list[float]] = []
    for line_no, row in csv_rows(p, field, "share CSV"):
        try:
            values = [float(cell) for cell in row]
        except ValueError:
            if not rows and not any(_is_number(cell) for cell in row):
                continue  # header row
            raise ValueError(f"{field}: {p}:{line_no}: non-numeric cell in {row!r}") from None
        if rows and len(values) != len(rows[0]):
            raise ValueError(
                f"{field}: {p}:{line_no}: {len(values)} columns, expected {len(rows[0])}"
            )
        if not all(math.isfinite(v) and MIN_SHARE <= v <= 1.0 for v in values):
            raise ValueError(f"{field}: {p}:{line_no}: share {values} outside [{MIN_SHARE}, 1]")
        rows.append(values)
        if len(rows) > MAX_TRACE_STEPS:
            raise ValueError(f"{field}: {p}: more than MAX_TRACE_STEPS={MAX_TRACE_STEPS} rows")
    if not rows:
        raise ValueError(f"{field}: share CSV {str(p)!r} has no data rows")
    return np.asarray(rows, dtype=np.float64)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def hsdpa_shares(split: str, step_ms: float) -> np.ndarray:
    """The shipped HSDPA traces of ``split`` as bandwidth shares on a ``step_ms`` grid, ``[T]``.

    Files are concatenated in a fixed order; each sample's rate holds over the interval that ends
    at its time stamp (Pensieve's rule); a grid step takes the rate at its start. Shares are
    Mbit/s / HSDPA_PEAK_MBPS, clipped to [MIN_SHARE, 1].
    """
    if split not in HSDPA_SPLITS:
        raise ValueError(f"split={split!r} is not allowed: one of {sorted(HSDPA_SPLITS)}")
    pieces = []
    for name in HSDPA_SPLITS[split]:
        data = np.loadtxt(_HSDPA_DIR / name, dtype=np.float64, ndmin=2)
        times, mbps = data[:, 0] * 1e3, data[:, 1]
        grid = np.arange(0.0, times[-1], step_ms)
        row = np.minimum(np.searchsorted(times, grid, side="right"), len(times) - 1)
        pieces.append(mbps[row])
    shares = np.concatenate(pieces) / HSDPA_PEAK_MBPS
    return np.clip(shares, MIN_SHARE, 1.0)


def _codes_of(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A level table and uint8 codes of ``values`` (exact if few distinct, else on a log grid)."""
    levels, codes = np.unique(values, return_inverse=True)
    if len(levels) > TRACE_LEVELS:
        levels = np.geomspace(MIN_SHARE, 1.0, TRACE_LEVELS)
        codes = np.rint(np.log(values / MIN_SHARE) / np.log(levels[1] / levels[0]))
    return levels, codes.reshape(values.shape).astype(np.uint8)


@dataclass(frozen=True)
class ProcessPath:
    """How to draw sample paths of one process over ``m`` resources on its grid.

    ``levels``: the availability of each code. ``kind == "trace"``: ``codes`` is the replayed
    sequence ``[T, 1 or m]``. Otherwise the chain per grid step: ``stay`` ``[L]`` (probability of
    keeping the level), ``jump`` ``[L, L]`` (cumulative distribution of the next level when it
    changes) and ``start`` (cumulative stationary distribution).
    """

    kind: str
    m: int
    levels: np.ndarray
    stay: np.ndarray | None = None
    jump: np.ndarray | None = None
    start: np.ndarray | None = None
    codes: np.ndarray | None = None

    @classmethod
    def from_config(cls, spec: Any, m: int, clock: str, tick_ms: float, field: str) -> ProcessPath:
        """Build from a validated ``ProcessConfig`` for ``m`` resources."""
        move = 1.0 if clock == "request" else tick_ms / spec.step_ms  # chain moves per grid step
        if spec.kind == "trace":
            if spec.csv == "hsdpa":
                table = hsdpa_shares(spec.split, spec.step_ms)[:, None]
            elif not Path(spec.csv).expanduser().exists():
                raise ValueError(
                    f"{field}.csv={spec.csv!r}: file not found; allowed: 'hsdpa' (the shipped "
                    "HSDPA traces) or a path to a share CSV"
                )
            else:
                table = load_share_csv(spec.csv, f"{field}.csv")
            if table.shape[1] not in (1, m):
                raise ValueError(
                    f"{field}.csv: {table.shape[1]} columns, expected 1 (shared) or {m} "
                    "(one per device/link)"
                )
            if clock == "time":  # expand steps to ticks
                ticks = int(math.ceil(table.shape[0] * spec.step_ms / tick_ms))
                if ticks > MAX_TRACE_STEPS:
                    raise ValueError(
                        f"{field}: the trace spans {ticks} ticks of {tick_ms} ms, more than "
                        f"MAX_TRACE_STEPS={MAX_TRACE_STEPS}; raise cluster.tick_ms"
                    )
                table = table[(np.arange(ticks) * tick_ms / spec.step_ms).astype(np.int64)]
            levels, codes = _codes_of(table)
            return cls("trace", m, levels, codes=codes)
        if spec.kind == "constant":
            levels, transition = np.array([spec.value]), np.ones((1, 1))
        elif spec.kind == "iid":
            count = 1 if spec.low == spec.high else IID_LEVELS
            levels = np.linspace(spec.low, spec.high, count)
            transition = np.full((count, count), 1.0 / count)
        else:
            levels = np.asarray(spec.levels, dtype=np.float64)
            transition = np.asarray(spec.transition, dtype=np.float64)
        per_step = (1.0 - move) * np.eye(len(levels)) + move * transition
        stay = np.diag(per_step).copy()
        away = per_step - np.diag(stay)
        total = away.sum(axis=1, keepdims=True)
        away = np.where(total > 0, away / np.where(total > 0, total, 1.0), 1.0 / len(levels))
        return cls(
            spec.kind,
            m,
            levels,
            stay=stay,
            jump=np.cumsum(away, axis=1),
            start=np.cumsum(stationary_distribution(transition)),
        )

    def stationary_sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` independent draws of the levels ``[size, m]`` from the stationary distribution
        (a trace: uniformly over its steps)."""
        if self.codes is not None:
            rows = rng.integers(0, self.codes.shape[0], size=(size, self.m))
            cols = np.arange(self.m) % self.codes.shape[1]
            return self.levels[self.codes[rows, cols]]
        assert self.start is not None
        codes = np.minimum(np.searchsorted(self.start, rng.random((size, self.m)), side="right"),
                           len(self.levels) - 1)  # fmt: skip
        return self.levels[codes]

    def draw(self, rng: np.random.Generator, steps: int) -> np.ndarray:
        """A path pool: uint8 codes ``[P, m]`` (P = ``steps`` rounded up to whole segments, or
        the trace's length). Trace columns shared by all resources start at independent offsets."""
        if self.codes is not None:
            if self.codes.shape[1] == self.m:
                return self.codes
            n = self.codes.shape[0]
            shift = rng.integers(0, n, size=self.m)
            rows = (np.arange(n)[:, None] + shift[None, :]) % n
            return self.codes[rows, 0]
        assert self.stay is not None and self.jump is not None and self.start is not None
        segments = max(1, -(-steps // SEGMENT_STEPS))
        length = min(steps, SEGMENT_STEPS)
        chains = segments * self.m
        if len(self.levels) == 1:
            return np.zeros((segments * length, self.m), dtype=np.uint8)
        # Jump by jump, all chains at once: a level holds for a geometric number of grid steps
        # (the per-step chain's dwell), then moves by the jump distribution.
        top = len(self.levels) - 1
        state = np.minimum((rng.random(chains)[:, None] >= self.start[None, :]).sum(axis=1), top)
        filled = np.zeros(chains, dtype=np.int64)
        states, spans = [], []
        while (filled < length).any():
            leave = 1.0 - self.stay[state]
            span = np.where(leave > 0, rng.geometric(np.where(leave > 0, leave, 1.0)), length)
            span = np.minimum(span, length - filled)
            states.append(state)
            spans.append(span)
            filled += span
            u = rng.random(chains)
            state = np.minimum((u[:, None] >= self.jump[state]).sum(axis=1), top)
        codes = np.repeat(
            np.stack(states, axis=1).ravel().astype(np.uint8), np.stack(spans, axis=1).ravel()
        )
        # chain c = segment * m + resource: [segments, m, length] -> [segments * length, m]
        return codes.reshape(segments, self.m, length).transpose(0, 2, 1).reshape(-1, self.m)


@dataclass(frozen=True)
class ResourcePaths:
    """The compute and bandwidth processes of a cluster with ``D`` devices, and their clock.

    ``clock="time"``: grid index of wall-clock time t (ms) is ``floor(t / tick_ms)``; the policy
    sees the levels at the last multiple of ``measurement_period_ms`` (0: the current tick).
    ``clock="request"``: grid index is the number of requests started; levels are exact.
    """

    compute: ProcessPath
    bandwidth: ProcessPath
    clock: str
    tick_ms: float
    measurement_period_ms: float

    @classmethod
    def from_config(cls, cluster: Any, num_devices: int) -> ResourcePaths:
        """From a validated ``ClusterConfig`` (devices = links = ``num_devices``)."""
        args = (num_devices, cluster.clock, cluster.tick_ms)
        return cls(
            ProcessPath.from_config(cluster.compute, *args, "cluster.compute"),
            ProcessPath.from_config(cluster.bandwidth, *args, "cluster.bandwidth"),
            cluster.clock,
            float(cluster.tick_ms),
            float(cluster.measurement_period_ms),
        )

    def draw_pool(
        self, rng: np.random.Generator, steps: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One pool of levels ``[P, 2D]`` (compute of each device, then bandwidth of each link)
        with P a power of two >= ``steps`` (and >= a replayed trace's length); shorter paths
        repeat cyclically. Compute is drawn first, then bandwidth. Also returns an int64 key
        per row that is equal for equal rows (None when the level combinations are too many)."""
        compute = self.compute.draw(rng, steps)
        bandwidth = self.bandwidth.draw(rng, steps)
        size = 1 << int(max(steps, compute.shape[0], bandwidth.shape[0]) - 1).bit_length()
        rows = np.arange(size)
        codes = np.concatenate(
            (compute[rows % compute.shape[0]], bandwidth[rows % bandwidth.shape[0]]), axis=1
        )
        d = compute.shape[1]
        radix = [len(self.compute.levels)] * d + [len(self.bandwidth.levels)] * d
        levels = np.concatenate(
            (self.compute.levels[codes[:, :d]], self.bandwidth.levels[codes[:, d:]]), axis=1
        )
        if float(np.prod(np.array(radix, dtype=np.float64))) >= 2.0**62:
            return levels, None
        key = np.zeros(size, dtype=np.int64)
        for col, base in enumerate(radix):
            key = key * base + codes[:, col]
        return levels, key

    def positions(self, offsets: np.ndarray, t_ms: np.ndarray, started: np.ndarray, mask: int,
                  measured: bool) -> np.ndarray:  # fmt: skip
        """Pool rows of the present (or of the last measurement when ``measured``) for streams
        whose paths start at ``offsets``; ``mask`` = pool length - 1 (a power of two)."""
        if self.clock == "request":
            index = started
        elif measured and self.measurement_period_ms > 0:
            period = self.measurement_period_ms
            index = (np.floor(t_ms * (1.0 / period)) * (period / self.tick_ms)).astype(np.int64)
        else:
            index = (t_ms * (1.0 / self.tick_ms)).astype(np.int64)
        return (offsets + index) & mask


class ResourceTimeline:
    """One environment's resource levels in wall-clock time, for code outside the env.

    The live runtime replays exactly what ``env.reset(seed=seed)`` sees::

        paths = ResourcePaths.from_config(config.cluster, num_devices)
        timeline = ResourceTimeline(paths, seed)
        compute, bandwidth = timeline.levels(t_ms)      # true shares now
        compute, bandwidth = timeline.measured(t_ms)    # what the policy sees

    The env draws its pool from ``default_rng(seed)`` and its path's offset as the first draw
    of its own generator seeded with ``seed`` (``distree_env.dynamics``); this class does the
    same. ``pool_steps`` must be the env's (``Dynamics.pool_steps``; the default,
    ``POOL_STEPS``, is a single env's).
    """

    def __init__(self, paths: ResourcePaths, seed: int, pool_steps: int = POOL_STEPS) -> None:
        self.paths = paths
        self.pool = paths.draw_pool(np.random.default_rng(seed), pool_steps)[0]
        self.offset = np.random.default_rng(seed).integers(0, self.pool.shape[0], size=1)
        self.devices = self.pool.shape[1] // 2

    def _at(self, t_ms: float, started: int, measured: bool) -> tuple[np.ndarray, np.ndarray]:
        row = self.paths.positions(self.offset, np.array([t_ms]), np.array([started]),
                                   self.pool.shape[0] - 1, measured)  # fmt: skip
        levels = self.pool[row[0]]
        return levels[: self.devices], levels[self.devices :]

    def levels(self, t_ms: float, started: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """True ``(compute [D], bandwidth [D])`` at ``t_ms`` (request clock: of request
        number ``started``, counted from 0)."""
        return self._at(t_ms, started, measured=False)

    def measured(self, t_ms: float, started: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The measured ``(compute [D], bandwidth [D])`` the policy sees at ``t_ms``."""
        return self._at(t_ms, started, measured=True)
