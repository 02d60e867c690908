"""Emulated edge conditions: compute throttling and token-bucket links, driven by level paths.

Why here and not in the network code: the live runtime runs on whatever machine it is given, so
the scenario's resource processes (the same ones the simulator samples) are imposed on it. A
device runs its stage at the machine's full speed; the stage then lasts until that work would have
been done at the availability the process prescribes (``LevelPath.finish``, or
``RequestLevels`` when levels are drawn once per request). Every message is booked on its link's
token bucket for ``bytes / (peak bandwidth x share)`` plus the per-message latency
(``TokenBucket``). Levels are piecewise constant in run time, and a stage or a transfer that
straddles a level change is integrated across it (the simulator holds the level of the stage's
start: the difference is part of what the live runs measure).

``KernelShaper`` offers the real thing where the machine allows it (root, ``ip netns``, ``tc``
with ``tbf``): each device process lives in its own network namespace behind a veth pair whose
both ends are rate-limited by ``tbf``; the rates follow the link process.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "KernelShaper",
    "LevelPath",
    "LinkFollower",
    "Levels",
    "RequestLevels",
    "TokenBucket",
    "kernel_shaping_unavailable",
    "sleep_until",
]


def sleep_until(deadline_s: float, clock=time.perf_counter) -> None:
    """Sleep until ``clock() >= deadline_s``; the last 0.15 ms are spun.

    Why: ``time.sleep`` overshoots by about 0.1 ms here, and the emulated delays are a few ms;
    spinning longer would steal a core from the devices on a 2-core machine.
    """
    while True:
        left = deadline_s - clock()
        if left <= 0:
            return
        if left > 1.5e-4:
            time.sleep(left - 1e-4)


@dataclass(frozen=True)
class LevelPath:
    """A share of peak in (0, 1] that is ``levels[i]`` from ``times_ms[i]`` to ``times_ms[i+1]``.

    ``times_ms[0]`` must be 0 and the last level lasts forever.
    """

    times_ms: np.ndarray
    levels: np.ndarray

    def __post_init__(self) -> None:
        t = np.asarray(self.times_ms, dtype=np.float64).reshape(-1)
        v = np.asarray(self.levels, dtype=np.float64).reshape(-1)
        if t.shape != v.shape or t.size == 0:
            raise ValueError(f"LevelPath: times_ms {t.shape} and levels {v.shape} must match")
        if t[0] != 0.0 or np.any(np.diff(t) < 0):
            raise ValueError("LevelPath: times_ms must start at 0 and never decrease")
        if not np.all((v > 0) & (v <= 1)):
            raise ValueError(f"LevelPath: levels must lie in (0, 1], got min {v.min()}")
        object.__setattr__(self, "times_ms", t)
        object.__setattr__(self, "levels", v)

    @classmethod
    def constant(cls, level: float = 1.0) -> LevelPath:
        """A level that never changes (a resource without a process)."""
        return cls(np.zeros(1), np.full(1, float(level)))

    def _segment(self, t_ms: float) -> int:
        return max(int(np.searchsorted(self.times_ms, t_ms, side="right")) - 1, 0)

    def at(self, request: int, t_ms: float) -> float:
        """The level at run time ``t_ms`` (``request`` is ignored: levels move in time)."""
        return float(self.levels[self._segment(t_ms)])

    def finish(self, request: int, start_ms: float, work_ms: float) -> float:
        """When work of ``work_ms`` (at full availability) started at ``start_ms`` is done."""
        i, t, left = self._segment(start_ms), float(start_ms), float(work_ms)
        n = self.levels.size
        while True:
            level = float(self.levels[i])
            end = float(self.times_ms[i + 1]) if i + 1 < n else math.inf
            capacity = (end - t) * level
            if capacity >= left:
                return t + left / level
            left -= capacity
            t, i = end, i + 1

    def integral(self, request: int, start_ms: float, end_ms: float) -> float:
        """Full-availability milliseconds of work that fit between ``start_ms`` and ``end_ms``."""
        if end_ms <= start_ms:
            return 0.0
        i, t, total = self._segment(start_ms), float(start_ms), 0.0
        n = self.levels.size
        while t < end_ms:
            seg_end = min(float(self.times_ms[i + 1]) if i + 1 < n else math.inf, end_ms)
            total += (seg_end - t) * float(self.levels[i])
            t, i = seg_end, i + 1
        return total


@dataclass(frozen=True)
class RequestLevels:
    """A share of peak that is ``levels[r]`` for the whole of request ``r`` (the ``isolated``
    scenario draws resources once per request). Same methods as :class:`LevelPath`."""

    levels: np.ndarray

    def at(self, request: int, t_ms: float) -> float:
        """Request ``request``'s level (``t_ms`` is ignored)."""
        return float(self.levels[request % len(self.levels)])

    def finish(self, request: int, start_ms: float, work_ms: float) -> float:
        """When ``work_ms`` of full-availability work started at ``start_ms`` is done."""
        return start_ms + work_ms / self.at(request, start_ms)

    def integral(self, request: int, start_ms: float, end_ms: float) -> float:
        """Full-availability milliseconds of work that fit between ``start_ms`` and ``end_ms``."""
        return max(end_ms - start_ms, 0.0) * self.at(request, start_ms)


#: Anything with ``at``, ``finish`` and ``integral`` as :class:`LevelPath` has them.
Levels = LevelPath | RequestLevels


class TokenBucket:
    """One direction of a link: ``peak_bytes_per_s`` x the path's share, plus a fixed latency.

    ``reserve(nbytes, now_ms)`` books the link for a message and returns the run time at which
    it has been serialised and has crossed the link (``+ latency_ms``); the caller holds the
    message until then. Messages on one link queue behind each other. Tokens (bytes) accrue
    while the link is idle, up to ``burst_bytes``; the default 0 makes every byte wait its
    turn, which is what the simulator's ``bytes / bandwidth`` model assumes.
    """

    def __init__(
        self,
        peak_bytes_per_s: float,
        latency_ms: float,
        path: Levels | None = None,
        burst_bytes: float = 0.0,
    ) -> None:
        if not peak_bytes_per_s > 0:
            raise ValueError(f"peak_bytes_per_s={peak_bytes_per_s!r} is not allowed: > 0")
        if not latency_ms >= 0 or not burst_bytes >= 0:
            raise ValueError(
                f"latency_ms={latency_ms!r}, burst_bytes={burst_bytes!r}: both must be >= 0"
            )
        self.bytes_per_ms = float(peak_bytes_per_s) / 1e3
        self.latency_ms = float(latency_ms)
        self.path = path or LevelPath.constant()
        self.burst = float(burst_bytes)
        self.tokens = self.burst
        self.busy_until_ms = 0.0

    def reserve(self, nbytes: float, now_ms: float, request: int = 0) -> float:
        """Book ``nbytes`` of ``request`` at run time ``now_ms``; the run time at which they
        have arrived. No bytes is a control message the model does not count: it goes at
        once."""
        if nbytes <= 0:
            return now_ms
        start = max(now_ms, self.busy_until_ms)
        if self.burst > 0:
            earned = self.path.integral(request, self.busy_until_ms, start) * self.bytes_per_ms
            self.tokens = min(self.burst, self.tokens + earned)
        need = max(float(nbytes) - self.tokens, 0.0)
        self.tokens = max(self.tokens - float(nbytes), 0.0)
        end = self.path.finish(request, start, need / self.bytes_per_ms)
        self.busy_until_ms = end
        return end + self.latency_ms


# ---- kernel shaping ---------------------------------------------------------------------------
#: Prefix of every network object KernelShaper creates (so a user can spot and remove leftovers).
NETNS_PREFIX = "dtree"
#: Subnet of the emulated cluster: the aggregator is .1, device d is .(d + 2).
SUBNET = "10.77.0"
#: tbf queue limit: how long a packet may wait in the shaper before it is dropped.
TBF_LATENCY_MS = 400


def kernel_shaping_unavailable() -> str | None:
    """Why kernel shaping cannot run here, or None when it can (root, ``ip``, ``tc`` with tbf)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "kernel shaping needs root (network namespaces and tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"kernel shaping needs the {tool!r} command (iproute2)"
    probe = f"{NETNS_PREFIX}pr{os.getpid() % 100000}"
    try:
        _run(["ip", "link", "add", probe, "type", "veth", "peer", "name", f"{probe}p"[:15]])
        try:
            _run(["tc", "qdisc", "add", "dev", probe, "root", "tbf", "rate", "1mbit",
                  "burst", "4kb", "latency", "50ms"])  # fmt: skip
        finally:
            _run(["ip", "link", "del", probe])
    except (RuntimeError, OSError) as e:
        return f"kernel shaping unavailable: {e}"
    return None


def _run(cmd: Sequence[str], timeout: float = 10.0) -> None:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)!r} failed: {proc.stderr.strip()}")


def _rate(bytes_per_s: float) -> str:
    return f"{max(int(bytes_per_s * 8), 8000)}bit"


class KernelShaper:
    """Network namespaces ``<prefix><tag>d<d>`` joined by a bridge; ``tbf`` on both veth ends.

    Usage: ``with KernelShaper(peaks) as ks:`` start device ``d`` under
    ``ks.exec_prefix(d)`` with ``MASTER_ADDR=ks.master_addr`` and ``GLOO_SOCKET_IFNAME`` from
    ``ks.ifname(d)`` (``ks.bridge`` for the aggregator); call ``ks.set_share(d, share)`` when the
    link's level changes. Everything is removed on exit, also after an error.
    """

    def __init__(self, peak_bytes_per_s: Sequence[float], tag: str | None = None) -> None:
        self.peaks = [float(p) for p in peak_bytes_per_s]
        self.tag = tag = tag or str(os.getpid() % 100000)
        self.bridge = f"{NETNS_PREFIX}br{tag}"[:15]
        self.names = [f"{NETNS_PREFIX}{tag}d{d}" for d in range(len(self.peaks))]
        self.master_addr = f"{SUBNET}.1"
        self._made: list[list[str]] = []  # undo commands, newest last

    def ifname(self, d: int) -> str:
        """Device ``d``'s interface inside its namespace (15 characters at most, as Linux wants)."""
        return f"{NETNS_PREFIX}{self.tag}n{d}"[:15]  # the device end, inside its namespace

    def _host_if(self, d: int) -> str:
        return f"{self.names[d]}h"[:15]

    def exec_prefix(self, d: int) -> list[str]:
        """The command prefix that runs a process inside device ``d``'s network namespace."""
        return ["ip", "netns", "exec", self.names[d]]

    def __enter__(self) -> KernelShaper:
        try:
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            self._made.append(["ip", "link", "del", self.bridge])
            _run(["ip", "addr", "add", f"{self.master_addr}/24", "dev", self.bridge])
            _run(["ip", "link", "set", self.bridge, "up"])
            for d, ns in enumerate(self.names):
                _run(["ip", "netns", "add", ns])
                self._made.append(["ip", "netns", "del", ns])
                host, dev = self._host_if(d), self.ifname(d)
                _run(["ip", "link", "add", host, "type", "veth", "peer", "name", dev])
                self._made.append(["ip", "link", "del", host])
                _run(["ip", "link", "set", dev, "netns", ns])
                _run(["ip", "link", "set", host, "master", self.bridge])
                _run(["ip", "link", "set", host, "up"])
                _run(["ip", "netns", "exec", ns, "ip", "addr", "add", f"{SUBNET}.{d + 2}/24",
                      "dev", dev])  # fmt: skip
                _run(["ip", "netns", "exec", ns, "ip", "link", "set", dev, "up"])
                _run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])
                self._tbf("add", d, 1.0)
        except BaseException:
            self.close()
            raise
        return self

    def _tbf(self, verb: str, d: int, share: float) -> None:
        rate = _rate(self.peaks[d] * share)
        burst = f"{max(int(self.peaks[d] * share / 250), 1600)}b"  # about 4 ms of traffic
        args = ["tbf", "rate", rate, "burst", burst, "latency", f"{TBF_LATENCY_MS}ms"]
        _run(["tc", "qdisc", verb, "dev", self._host_if(d), "root", *args])
        _run(["ip", "netns", "exec", self.names[d], "tc", "qdisc", verb, "dev", self.ifname(d),
              "root", *args])  # fmt: skip

    def set_share(self, d: int, share: float) -> None:
        """Set link ``d`` (both directions) to ``share`` of its peak rate."""
        self._tbf("change", d, share)

    def close(self) -> None:
        """Remove what was made, newest first; what is already gone is skipped."""
        while self._made:
            cmd = self._made.pop()
            try:
                _run(cmd)
            except (RuntimeError, OSError, subprocess.TimeoutExpired):
                pass  # already gone (a namespace's veth end dies with it)

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def attach(cls, tag: str, peak_bytes_per_s: Sequence[float]) -> KernelShaper:
        """The shaper another process created with ``tag`` (to change its rates; it is not
        removed by this object)."""
        return cls(peak_bytes_per_s, tag=tag)


class LinkFollower:
    """A thread that keeps each link's ``tbf`` rate at its level (checked every ``period_s``).

    Why a thread: ``tc`` takes milliseconds per call, which must not land inside a measured
    stage. ``request_started(r)`` tells it the request in service (for per-request levels).
    """

    def __init__(
        self, shaper: KernelShaper, levels: Sequence[Levels], now_ms, period_s: float = 0.005
    ) -> None:
        self.shaper, self.levels, self.now_ms, self.period_s = (
            shaper,
            list(levels),
            now_ms,
            period_s,
        )
        self.request = 0
        self._applied = [1.0] * len(self.levels)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="link-follower", daemon=True)
        self._thread.start()

    def request_started(self, r: int) -> None:
        """Request ``r`` is now in service (per-request levels follow it)."""
        self.request = r

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            now = self.now_ms()
            for d, path in enumerate(self.levels):
                level = path.at(self.request, now)
                if level != self._applied[d]:
                    self.shaper.set_share(d, level)
                    self._applied[d] = level

    def stop(self) -> None:
        """Stop the thread and wait for it (5 s at most)."""
        self._stop.set()
        self._thread.join(timeout=5.0)
