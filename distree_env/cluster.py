"""The edge cluster: device and link profiles, resource processes, and the stage-latency model.

Why: the exit decision trades accuracy for latency, and latency depends on how much of each
device's compute and each link's bandwidth is available right now. This module turns a trace's
cost tables (FLOPs, bytes) and the current availability into milliseconds. Everything is
vectorised over leading batch axes, so the same code serves one environment and a thousand.

Resource state changes once per *request* and is constant within it, so the latency of every
exit of the current request is known when the request starts (the Oracle uses this).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DEVICE_PROFILES",
    "LINK_PROFILES",
    "RESOURCE_PROCESSES",
    "DeviceProfile",
    "LatencyModel",
    "LinkProfile",
    "ResourceProcess",
    "load_availability_csv",
    "make_process",
    "stationary_distribution",
]


@dataclass(frozen=True)
class DeviceProfile:
    """A device kind: peak FP32 rate and the share of it that small-batch CNN inference reaches."""

    name: str
    peak_flops: float  # FLOP/s, vendor peak
    derate: float  # effective / peak
    source: str

    @property
    def effective_flops(self) -> float:
        return self.peak_flops * self.derate


@dataclass(frozen=True)
class LinkProfile:
    """A network link kind: peak PHY rate, goodput share, and per-message latency."""

    name: str
    peak_bandwidth: float  # bytes/s (PHY rate / 8)
    derate: float  # goodput / PHY rate
    latency_s: float  # one-way per-message latency
    source: str

    @property
    def effective_bandwidth(self) -> float:
        return self.peak_bandwidth * self.derate


# Sources for every figure. "Effective" = peak x derate; derates are stated per profile.
DEVICE_PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        # Raspberry Pi 4 Model B: Broadcom BCM2711, 4x ARM Cortex-A72 at 1.5 GHz (Raspberry Pi
        # product brief). Peak FP32 = 4 cores x 1.5 GHz x 8 FLOP/cycle (one 128-bit NEON FMA per
        # cycle) = 48 GFLOP/s. Derated to 15% (7.2 GFLOP/s): High Performance Linpack measures
        # about 8 GFLOP/s on a Pi 4 (B. Feiereisen, "Benchmarking the Raspberry Pi 4 with
        # Raspberry Pi OS64", 2022), and batch-1 CNN inference in PyTorch/ONNX reaches less.
        DeviceProfile(
            "raspberry-pi-4", 48e9, 0.15, "BCM2711 4xA72@1.5GHz; HPL ~8 GFLOP/s (Feiereisen 2022)"
        ),
        # NVIDIA Jetson Nano: 128 Maxwell CUDA cores at 921 MHz, "472 GFLOPS" FP16 (NVIDIA Jetson
        # Nano developer kit spec page); FP32 peak = 128 x 2 x 0.921 GHz = 236 GFLOP/s. Derated
        # to 20% (47 GFLOP/s): batch-1 small-CNN kernels are launch- and memory-bound.
        DeviceProfile(
            "jetson-nano", 236e9, 0.20, "NVIDIA Jetson Nano spec: 128 CUDA cores, 472 GFLOPS FP16"
        ),
        # Raspberry Pi 5: 4x Cortex-A76 at 2.4 GHz (Raspberry Pi 5 product brief); peak FP32 =
        # 4 x 2.4 GHz x 16 FLOP/cycle (two 128-bit NEON FMA pipes) = 153.6 GFLOP/s; derated to
        # 15% like the Pi 4 (23 GFLOP/s).
        DeviceProfile("raspberry-pi-5", 153.6e9, 0.15, "BCM2712 4xA76@2.4GHz product brief"),
    )
}

LINK_PROFILES: dict[str, LinkProfile] = {
    p.name: p
    for p in (
        # Wi-Fi 4, IEEE 802.11n-2009: 1 spatial stream, 40 MHz, MCS 7, short guard interval =
        # 150 Mb/s PHY. Derated to 50% (75 Mb/s) for MAC, ACK and contention overhead (typical
        # TCP goodput is about half the PHY rate). Per-message latency 2 ms (typical WLAN).
        LinkProfile("wifi-4", 150e6 / 8, 0.5, 2.0e-3, "IEEE 802.11n MCS7 1SS 40MHz SGI"),
        # Wi-Fi 5, IEEE 802.11ac-2013: 1 spatial stream (as on the Raspberry Pi 4), 80 MHz,
        # MCS 9, short GI = 433.3 Mb/s PHY. Derated to 50% (217 Mb/s). Latency 1.5 ms.
        LinkProfile("wifi-5", 433.3e6 / 8, 0.5, 1.5e-3, "IEEE 802.11ac MCS9 1SS 80MHz SGI"),
        # Gigabit Ethernet, IEEE 802.3ab 1000BASE-T: 1000 Mb/s. Derated to 94% (941 Mb/s TCP
        # goodput after Ethernet/IP/TCP framing). Latency 0.2 ms (switched LAN).
        LinkProfile("ethernet-1g", 1000e6 / 8, 0.94, 0.2e-3, "IEEE 802.3ab 1000BASE-T"),
    )
}

RESOURCE_PROCESSES = ("constant", "iid", "markov", "trace")
_U16 = 1 << 16


# ---- resource processes -----------------------------------------------------------------------
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


def load_availability_csv(path: str | Path, columns: int, field: str = "csv") -> np.ndarray:
    """Read a CSV of availability (rows = requests, one column per resource) as ``[T, columns]``.

    A header row is allowed (it is skipped if its cells are not numbers). Values must be in
    (0, 1]. Raises ValueError naming the file, the row and the problem.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{field}: availability CSV {str(p)!r} not found")
    rows: list[list[float]] = []
    with open(p, newline="", encoding="utf-8") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            try:
                values = [float(cell) for cell in row]
            except ValueError:
                if not rows and not any(_is_number(cell) for cell in row):
                    continue  # header row: no cell is a number
                raise ValueError(f"{field}: {p}:{line_no}: non-numeric cell in {row!r}") from None
            if len(values) != columns:
                raise ValueError(
                    f"{field}: {p}:{line_no}: {len(values)} columns, expected {columns} "
                    "(one per device/link)"
                )
            if not all(math.isfinite(v) and 0.0 < v <= 1.0 for v in values):
                raise ValueError(f"{field}: {p}:{line_no}: availability {values} outside (0, 1]")
            rows.append(values)
    if not rows:
        raise ValueError(f"{field}: availability CSV {str(p)!r} has no data rows")
    return np.asarray(rows, dtype=np.float64)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


class ResourceProcess:
    """Availability (share of peak, in (0, 1]) of ``m`` resources, one value per request.

    ``sample(rng, episodes, steps)`` returns ``[episodes, steps, m]`` float64: each episode
    starts afresh (stationary start for ``markov``, random offset for ``trace``). The discrete
    kinds (``constant``, ``markov``) also give integer states via ``sample_states`` so that the
    environment can look latencies up in precomputed tables instead of recomputing them.

    Markov sampling draws 16-bit uniforms and looks the next state up in a ``[S, 65536]``
    table, so transition probabilities are realised to within 1/65536.
    """

    def __init__(
        self,
        kind: str,
        m: int,
        *,
        value: float = 1.0,
        low: float = 0.5,
        high: float = 1.0,
        levels: tuple[float, ...] = (1.0, 0.5, 0.2),
        transition: tuple[tuple[float, ...], ...] | None = None,
        table: np.ndarray | None = None,
    ) -> None:
        if kind not in RESOURCE_PROCESSES:
            raise ValueError(f"resource process {kind!r} unknown; allowed {RESOURCE_PROCESSES}")
        self.kind, self.m = kind, int(m)
        self.value, self.low, self.high = float(value), float(low), float(high)
        self.discrete = kind in ("constant", "markov")
        if kind == "constant":
            self.levels = np.array([self.value])
        else:
            self.levels = np.asarray(levels, dtype=np.float64)
        if kind == "markov":
            if transition is None:
                raise ValueError("markov resource process needs a transition matrix")
            self.transition = np.asarray(transition, dtype=np.float64)
            grid = np.arange(_U16, dtype=np.float64) + 0.5
            s = len(self.levels)

            def lookup(probs: np.ndarray) -> np.ndarray:
                edges = np.cumsum(probs)[:-1] * _U16
                return np.minimum(np.searchsorted(edges, grid, side="right"), s - 1)

            #: next state given (state, 16-bit uniform): [S, 65536]
            self.next_state = np.stack([lookup(row) for row in self.transition]).astype(np.int64)
            #: first state given a 16-bit uniform (stationary distribution): [65536]
            self.first_state = lookup(stationary_distribution(self.transition)).astype(np.int64)
        elif kind == "constant":
            self.transition = np.ones((1, 1))
            self.next_state = np.zeros((1, _U16), dtype=np.int64)
            self.first_state = np.zeros(_U16, dtype=np.int64)
        if kind == "trace":
            if table is None or table.ndim != 2 or table.shape[1] != self.m:
                raise ValueError(f"trace resource process needs a [T, {self.m}] table")
            self.table = table

    @property
    def num_states(self) -> int:
        return len(self.levels)

    @classmethod
    def product(cls, first: ResourceProcess, second: ResourceProcess) -> ResourceProcess:
        """The pair of two independent discrete processes as one chain with state
        ``s1 * S2 + s2`` (transition ``kron(P1, P2)``): one look-up advances both."""
        if not (first.discrete and second.discrete) or first.m != second.m:
            raise ValueError("product needs two discrete processes over the same resources")
        transition = np.kron(first.transition, second.transition)
        levels = tuple(float(i + 1) for i in range(transition.shape[0]))  # placeholders
        return cls("markov", first.m, levels=levels, transition=tuple(map(tuple, transition)))

    def sample_states(self, rng: np.random.Generator, episodes: int, steps: int) -> np.ndarray:
        """Integer states ``[episodes, steps, m]`` of a discrete process."""
        if not self.discrete:
            raise ValueError(f"{self.kind!r} resource process has no discrete states")
        return ChainSampler([self])(rng, episodes, steps).transpose(1, 0, 2)

    def sample(self, rng: np.random.Generator, episodes: int, steps: int) -> np.ndarray:
        shape = (episodes, steps, self.m)
        if self.discrete:
            return self.levels[self.sample_states(rng, episodes, steps)]
        if self.kind == "iid":
            return rng.uniform(self.low, self.high, size=shape)
        start = rng.integers(0, self.table.shape[0], size=episodes)
        idx = (start[:, None] + np.arange(steps)[None, :]) % self.table.shape[0]
        return self.table[idx]


class ChainSampler:
    """Samples several discrete processes side by side, one column per resource.

    Why: the chains are sequential in time, so the cost is one Python-level step per request
    for all episodes and resources at once. A state is coded as ``(offset + state) * 65536`` so
    that advancing every chain is one add (of a 16-bit uniform) and one table look-up.
    """

    def __init__(self, processes: list[ResourceProcess]) -> None:
        offsets, tables, cols = [], [], []
        base = 0
        for proc in processes:
            offsets.append(base)
            tables.append((proc.next_state + base) * _U16)
            cols.append(proc.m)
            base += proc.num_states
        self.processes = processes
        self.offsets = np.repeat(offsets, cols).astype(np.int64)  # per column
        self.first = [(p.first_state + o) * _U16 for p, o in zip(processes, offsets, strict=True)]
        self.next_code = np.concatenate([t.reshape(-1) for t in tables])
        self.m = int(sum(cols))
        self._splits = np.cumsum([0, *cols])

    def __call__(self, rng: np.random.Generator, episodes: int, steps: int) -> np.ndarray:
        """States ``[steps, episodes, m]`` (time-major), local to each process."""
        return self.codes(rng, episodes, steps) - self.offsets

    def codes(self, rng: np.random.Generator, episodes: int, steps: int) -> np.ndarray:
        """Global state indices ``offset + state`` as ``[steps, episodes, m]``."""
        width = episodes * self.m
        u = rng.integers(0, _U16, size=(steps, width), dtype=np.uint16)
        codes = np.empty((steps, episodes, self.m), dtype=np.int64)
        first = codes[0]
        u0 = u[0].reshape(episodes, self.m)
        for i, table in enumerate(self.first):
            lo, hi = self._splits[i], self._splits[i + 1]
            first[:, lo:hi] = table.take(u0[:, lo:hi])
        flat = codes.reshape(steps, width)
        nxt = self.next_code
        tmp = np.empty(width, dtype=np.int64)
        for t in range(1, steps):
            np.add(flat[t - 1], u[t], out=tmp)
            flat[t] = nxt.take(tmp)
        flat >>= 16
        return codes


def make_process(spec: dict, m: int, field: str) -> ResourceProcess:
    """Build a process from a validated config mapping (see ``config.ProcessConfig``)."""
    kind = spec["kind"]
    if kind == "trace":
        table = load_availability_csv(spec["csv"], m, field=f"{field}.csv")
        return ResourceProcess("trace", m, table=table)
    return ResourceProcess(
        kind,
        m,
        value=spec.get("value", 1.0),
        low=spec.get("low", 0.5),
        high=spec.get("high", 1.0),
        levels=tuple(spec.get("levels", (1.0, 0.5, 0.2))),
        transition=spec.get("transition"),
    )


# ---- latency model ----------------------------------------------------------------------------
class LatencyModel:
    """Milliseconds of each stage of a request given the devices' and links' availability.

    ``parallel`` (DistrEE): every device d runs stage k of its branch, then sends its pooled
    features over its link; the stage ends when the slowest device has reported; then the exit
    head runs on the aggregator (device 0). The input is sent to every device in stage 0.
    ``pipeline`` (MDI-Exit): stage k and exit head k run on device k; reaching stage k > 0 first
    ships the feature map from device k-1 over link k-1; the input reaches device 0 over link 0.
    A per-message link latency is added for every non-empty transfer.
    """

    def __init__(
        self,
        topology: str,
        stage_flops: np.ndarray,
        exit_flops: np.ndarray,
        transfer_bytes: np.ndarray,
        input_bytes: float,
        device_flops: np.ndarray,
        link_bandwidth: np.ndarray,
        link_latency_s: np.ndarray,
    ) -> None:
        k, d = stage_flops.shape
        self.topology, self.num_stages, self.num_devices = topology, k, d
        rate = np.asarray(device_flops, dtype=np.float64)
        bw = np.asarray(link_bandwidth, dtype=np.float64)
        lat = np.asarray(link_latency_s, dtype=np.float64)
        if topology == "parallel":
            # seconds at full availability, [K, D]
            self.compute_s = stage_flops / rate[None, :]
            transfer = transfer_bytes.astype(np.float64).copy()
            fixed = np.where(transfer > 0, lat[None, :], 0.0)
            if input_bytes > 0:
                transfer[0] += input_bytes
                fixed[0] += lat
            self.transfer_s = transfer / bw[None, :]
            self.fixed_s = fixed
            self.exit_s = exit_flops / rate[0]  # [K] on the aggregator
        else:
            diag = np.arange(k)
            self.compute_s = (stage_flops[diag, diag] + exit_flops) / rate[:k]  # [K]
            src = np.concatenate([[0], diag[:-1]])  # link used to reach stage k
            incoming = np.concatenate([[input_bytes], transfer_bytes[diag[:-1], diag[:-1]]])
            self.src = src
            self.transfer_s = incoming / bw[src]
            self.fixed_s = np.where(incoming > 0, lat[src], 0.0)

    def stage_ms(self, compute: np.ndarray, bandwidth: np.ndarray) -> np.ndarray:
        """Latency in ms of each stage, ``[..., K]``, from availability ``[..., D]`` in (0, 1]."""
        inv_c = 1.0 / compute
        inv_b = 1.0 / bandwidth
        if self.topology == "parallel":
            per_device = (
                self.compute_s * inv_c[..., None, :]
                + self.transfer_s * inv_b[..., None, :]
                + self.fixed_s
            )
            stage = per_device.max(axis=-1) + self.exit_s * inv_c[..., :1]
        else:
            k = self.num_stages
            stage = (
                self.compute_s * inv_c[..., :k]
                + self.transfer_s * inv_b[..., self.src]
                + self.fixed_s
            )
        return stage * 1e3

    def full_speed_ms(self) -> np.ndarray:
        """Stage latencies with every resource fully available, ``[K]`` ms."""
        ones = np.ones(self.num_devices)
        return self.stage_ms(ones, ones)
