"""Request streams: when inference requests arrive at the cluster.

Why: under a stream, waiting counts against a request's deadline and an early exit frees the
devices for the requests behind it, so one decision changes the latency of the next ones.
Kinds: ``isolated`` (closed loop: the next request arrives the moment the previous one is answered;
no queue; the first version's behaviour), ``poisson``, ``bursty`` (a two-state Markov-modulated
Poisson process, on/off), ``periodic`` (a camera at a fixed frame rate, random phase), ``trace``
(arrival times from a CSV, or the shipped Azure traces, replayed cyclically from a random
offset; time-scaled to the configured mean rate when there is one, so the pattern of gaps is the
recording's and the load is the scenario's).

Arrival times are generated in blocks for a batch of environments at once (array operations, no
loop over environments), so the vector env and the single env share one implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distree_env.io import csv_rows

__all__ = [
    "ARRIVAL_PROCESSES",
    "ARRIVAL_SPLITS",
    "AZURE_LLM_DIR",
    "AZURE_LLM_SERVICES",
    "MAX_ARRIVAL_ROWS",
    "SHIPPED_ARRIVALS",
    "ArrivalProcess",
    "ArrivalState",
    "ArrivalStream",
    "arrival_trace_path",
    "load_arrival_csv",
]

ARRIVAL_PROCESSES = ("isolated", "poisson", "bursty", "periodic", "trace")
#: Largest number of rows of an arrival-time CSV.
MAX_ARRIVAL_ROWS = 1 << 22
#: The shipped arrival traces: measured request arrivals of two Azure LLM inference services
#: (``csv="azure-llm-<service>"``), each cut in two halves of its hour, the first for ``val``
#: and the second for ``test`` (see the folder's README.md).
AZURE_LLM_DIR = Path(__file__).resolve().parent.parent / "data" / "arrivals" / "azure-llm"
AZURE_LLM_SERVICES = ("conversation", "code")
ARRIVAL_SPLITS = ("val", "test")
SHIPPED_ARRIVALS = tuple(f"azure-llm-{service}" for service in AZURE_LLM_SERVICES)


def arrival_trace_path(csv: str, split: str) -> Path:
    """The file of ``arrivals.csv``: the shipped trace's ``split`` half for a shipped name,
    else the path itself."""
    if csv in SHIPPED_ARRIVALS:
        return AZURE_LLM_DIR / f"{csv.removeprefix('azure-llm-')}-{split}.csv"
    return Path(csv)


def load_arrival_csv(path: str | Path, field_name: str = "arrivals.csv") -> np.ndarray:
    """Arrival times in ms (first column; a header row is allowed), non-decreasing, finite."""
    p = Path(path)
    times: list[float] = []
    for line_no, row in csv_rows(p, field_name, "arrival CSV"):
        try:
            value = float(row[0])
        except ValueError:
            if not times and line_no == 1:
                continue  # header
            raise ValueError(
                f"{field_name}: {p}:{line_no}: non-numeric arrival time {row[0]!r}"
            ) from None
        if not math.isfinite(value) or value < 0 or (times and value < times[-1]):
            raise ValueError(
                f"{field_name}: {p}:{line_no}: arrival time {value} must be finite, >= 0 "
                "and not before the previous row"
            )
        times.append(value)
        if len(times) > MAX_ARRIVAL_ROWS:
            raise ValueError(
                f"{field_name}: {p}: more than MAX_ARRIVAL_ROWS={MAX_ARRIVAL_ROWS} rows"
            )
    if len(times) < 2 or times[-1] <= times[0]:
        raise ValueError(f"{field_name}: {p}: needs at least 2 distinct arrival times")
    return np.asarray(times, dtype=np.float64)


@dataclass
class ArrivalState:
    """Per-environment state of the arrival process ``[B]``: last arrival time, MMPP phase and
    its next switch, trace position and the time origin of the replayed trace."""

    last: np.ndarray
    on: np.ndarray
    switch_at: np.ndarray
    position: np.ndarray
    origin: np.ndarray


#: An MMPP's on/off cycle must span at least this many mean gaps between arrivals: the
#: generator draws every phase switch, so a shorter cycle costs many switches per arrival
#: (a hang as the cycle tends to 0) and bursts nothing.
MIN_BURST_CYCLE_GAPS = 0.1


@dataclass(frozen=True)
class ArrivalProcess:
    """An arrival process with its mean rate (requests per ms) resolved.

    ``bursty``: on and off periods are exponential with means ``on_ms``/``off_ms``; the off rate
    is ``off_share`` times the on rate, chosen so the long-run mean rate is ``rate_per_ms``.
    """

    kind: str
    rate_per_ms: float = 0.0
    on_ms: float = 1000.0
    off_ms: float = 3000.0
    off_share: float = 0.25
    times: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, arrivals: Any, rate_per_ms: float) -> ArrivalProcess:
        """From a validated ``ArrivalConfig`` and its resolved mean rate (0: a trace is replayed
        as recorded; else its gaps are scaled so that its mean rate is this one)."""
        times = None
        if arrivals.kind == "bursty" and rate_per_ms > 0:
            gaps = (arrivals.on_ms + arrivals.off_ms) * rate_per_ms  # mean gaps per on/off cycle
            if gaps < MIN_BURST_CYCLE_GAPS:
                raise ValueError(
                    f"arrivals.on_ms={arrivals.on_ms!r}, arrivals.off_ms={arrivals.off_ms!r}: an "
                    f"on/off cycle spans {gaps:.3g} mean gaps between arrivals "
                    f"({1.0 / rate_per_ms:.4g} ms); allowed: at least {MIN_BURST_CYCLE_GAPS:g} "
                    "(a shorter cycle is a Poisson stream at the mean rate, kind='poisson', and "
                    "would switch phase many times per arrival)"
                )
        if arrivals.kind == "trace":
            times = load_arrival_csv(arrival_trace_path(arrivals.csv, arrivals.split))
            if rate_per_ms > 0:
                mean_gap = (times[-1] - times[0]) / (len(times) - 1)
                times = (times - times[0]) * (1.0 / (rate_per_ms * mean_gap))
        return cls(
            arrivals.kind,
            rate_per_ms,
            arrivals.on_ms,
            arrivals.off_ms,
            arrivals.off_share,
            times,
        )

    @property
    def on_rate(self) -> float:
        """Arrivals per ms in the on phase (bursty)."""
        cycle = self.on_ms + self.off_ms
        return self.rate_per_ms * cycle / (self.on_ms + self.off_share * self.off_ms)

    def start(self, rng: np.random.Generator, count: int) -> ArrivalState:
        """Fresh state for ``count`` streams starting at time 0 (MMPP phase drawn from its
        stationary distribution, trace at a random offset, periodic at a random phase)."""
        last = np.zeros(count)
        on = np.zeros(count, dtype=bool)
        switch_at = np.zeros(count)
        position = np.zeros(count, dtype=np.int64)
        origin = np.zeros(count)
        if self.kind == "bursty":
            on = rng.random(count) < self.on_ms / (self.on_ms + self.off_ms)
            switch_at = rng.exponential(np.where(on, self.on_ms, self.off_ms))
        elif self.kind == "periodic":
            last = -rng.random(count) / self.rate_per_ms
        elif self.kind == "trace":
            assert self.times is not None
            position = rng.integers(0, len(self.times), size=count)
            origin = -self.times[position]
        return ArrivalState(last, on, switch_at, position, origin)

    def generate(self, rng: np.random.Generator, state: ArrivalState, n: int) -> np.ndarray:
        """The next ``n`` arrival times (ms) of every stream ``[B, n]``; advances ``state``."""
        b = state.last.shape[0]
        if self.kind == "poisson":
            out = state.last[:, None] + np.cumsum(
                rng.exponential(1.0 / self.rate_per_ms, size=(b, n)), axis=1
            )
        elif self.kind == "periodic":
            out = state.last[:, None] + np.arange(1, n + 1) / self.rate_per_ms
        elif self.kind == "trace":
            assert self.times is not None
            times, count = self.times, len(self.times)
            span = (times[-1] - times[0]) * count / (count - 1)  # one loop, plus a mean gap
            pos = state.position[:, None] + np.arange(n)
            out = state.origin[:, None] + times[pos % count] + (pos // count) * span
            state.position = state.position + n
        else:
            out = self._bursty(rng, state, n)
        state.last = out[:, -1].copy()
        return out

    def _bursty(self, rng: np.random.Generator, state: ArrivalState, n: int) -> np.ndarray:
        """MMPP arrivals: exponential gaps at the phase's rate, phase switches in between
        (memoryless, so a gap cut by a switch restarts at the new rate)."""
        on_rate, off_rate = self.on_rate, self.on_rate * self.off_share
        b = state.last.shape[0]
        out = np.empty((b, n))
        t, on, switch_at = state.last.copy(), state.on.copy(), state.switch_at.copy()
        for j in range(n):
            pending = np.arange(b)
            while pending.size:
                rate = np.where(on[pending], on_rate, off_rate)
                gap = rng.exponential(1.0, size=pending.size) / np.maximum(rate, 1e-300)
                candidate = t[pending] + gap
                cut = candidate > switch_at[pending]
                done = pending[~cut]
                t[done] = candidate[~cut]
                moved = pending[cut]
                t[moved] = switch_at[moved]
                on[moved] = ~on[moved]
                switch_at[moved] += rng.exponential(np.where(on[moved], self.on_ms, self.off_ms))
                pending = moved
            out[:, j] = t
        state.on, state.switch_at = on, switch_at
        return out


class ArrivalStream:
    """One stream of arrival times, for code outside the env (the live runtime's load generator).

    ``ArrivalStream(process, np.random.default_rng(seed)).take(n)`` gives the next ``n`` arrival
    times in ms; the same seed gives the same times.
    """

    def __init__(self, process: ArrivalProcess, rng: np.random.Generator) -> None:
        if process.kind == "isolated":
            raise ValueError(
                "arrivals.kind='isolated' has no arrival times: requests arrive "
                "when the previous one is answered"
            )
        self.process, self.rng = process, rng
        self.state = process.start(rng, 1)

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` arrival times (ms, float64)."""
        return self.process.generate(self.rng, self.state, n)[0]
