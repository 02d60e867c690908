"""Fit the simulator's cluster parameters to live run records, and score its latency predictions.

Why these parameters: they are exactly the knobs of the environment's latency model
(``distree_env.cluster.latency``): each device's effective FLOP/s, each link's bytes/s, the
per-message link latency, an exit head's fixed time and a fixed per-stage overhead. A fitted set
is written as config overrides (``{"cluster": {...}}``), so ``EnvConfig.replace(profile)`` or
``run_live --config`` load it directly.

The fit, from the per-stage measurements of every request:
- device ``d``: ``rate_d = sum(flops) / sum(busy_ms)`` over its measured stages (``busy`` is the
  stage at the machine's full speed; the throttle's stall is the scenario's, not the device's).
  The simulator has no per-device fixed time, and on a small network the per-stage dispatch cost
  of the framework rivals the arithmetic, so the rate that reproduces the total work (and scales
  with the availability share as the live stall does) is the right one; the least-squares line
  ``busy = flops / r + c`` is reported next to it;
- link ``d``: ``transfer_ms = bytes(k, d) / (bw_d x share) + messages(k, d) x latency_d`` by
  least squares without intercept over the medians of each (stage, share) group (a message is
  one that carries bytes, as in the model);
- the exit head's fixed time: the mean of the measured exit head time scaled to full speed
  (``exit_ms x share`` of its device: the runtime stalls it like a device stage) less its
  FLOPs' time. Why: a head of a small network costs about 0.4 ms of framework time on this
  project's machine and almost nothing in FLOPs; left in the fixed overhead, it would not
  stretch when availability drops, and the simulator would under-price exactly the slow
  periods in which queues build;
- the cold start: a stage's compute (devices and exit head, at full speed) grows with how long
  the devices idled before its request: ``extra = cold_k x (1 - exp(-idle / tau))``, fitted per
  stage by least squares for each ``tau`` of :data:`COLD_TAUS_MS`, the ``tau`` that fits best
  kept. Why: on this project's machine a core that idled more than 40 ms runs the next
  request's first stage 50-65% slower (caches, clock); one speed per device would price a light
  load (long idles) too low and a queue (none) too high. The devices', the head's and the stages'
  measurements are made warm (the fitted cold part taken off) before the fits below;
- the stage overhead: the mean of what the model with these rates leaves unexplained in
  ``stage_ms`` (receive wake-ups, fusion, Python), at the levels that were imposed;
- the decision time: the mean measured ``decision_ms`` (observation and policy). It is kept apart
  from the stage overhead because it belongs to the policy: a profile fitted on a cheap rule
  would otherwise under-price a neural policy (see :func:`carried_decision_ms`);
- the hand-over, from the time between a request's end and the start of the next one where
  that one was already waiting: ``handover_ms`` is its median; the hand-overs longer than the
  median by ``STALL_MIN_MS`` are stalls (pauses of a loaded host, or of the runtime itself: an
  earlier version rewrote its record while requests waited), whose share and mean excess are
  ``stall_probability`` and ``stall_mean_ms``. Why: a stall of 100 ms in one request in fifty
  adds 2 ms to the mean service time but, by holding up everyone queued behind it, tens of ms to
  the mean wait; a simulator without them underestimates queueing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from distree_env.cluster.latency import coldness
from distree_env.runtime.records import RequestRecord, RunRecord

__all__ = [
    "COLD_MIN_STAGES",
    "COLD_TAUS_MS",
    "STALL_MIN_MS",
    "ClusterFit",
    "StageSamples",
    "carried_decision_ms",
    "exit_head_shares",
    "exit_shares",
    "fit_cluster",
    "fit_cold_start",
    "fit_handover",
    "handover_gaps",
    "per_exit_latency",
    "served_with_idle",
    "stage0_after_gap",
    "stage_samples",
]

#: A hand-over longer than the median hand-over by at least this much is a stall (ms).
STALL_MIN_MS = 5.0
#: Time constants (ms) the cold-start fit tries for how fast idle devices cool.
COLD_TAUS_MS = (5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
#: Fewest measured stages of one exit for a cold-start fit of that stage (else none: a slope from
#: a handful of requests is noise).
COLD_MIN_STAGES = 50


@dataclass(frozen=True)
class StageSamples:
    """Every measured stage of every served request, flattened (``n`` stages, ``D`` devices)."""

    k: np.ndarray  # [n] stage index
    busy_ms: np.ndarray  # [n, D]
    transfer_ms: np.ndarray  # [n, D]
    stage_ms: np.ndarray  # [n] dispatch -> exit head done (without the decision)
    compute: np.ndarray  # [n, D] imposed shares
    bandwidth: np.ndarray  # [n, D]
    decision_ms: np.ndarray  # [n] observation + policy
    exit_ms: np.ndarray  # [n] exit head, on its device's share of compute
    idle_ms: np.ndarray  # [n] how long the devices idled before the stage's request started


def served_with_idle(run: RunRecord) -> list[tuple[RequestRecord, float]]:
    """The served requests of ``run`` in start order (FIFO: the record's order), each with how
    long the devices idled before it started: ms since the previous served request ended (the
    run's clock starts with idle devices)."""
    served, free = [], 0.0
    for rec in run.requests:
        if rec.dropped or rec.exit < 0:
            continue
        served.append((rec, rec.start_ms - free))
        free = rec.end_ms
    return served


def stage0_after_gap(run: RunRecord) -> tuple[np.ndarray, np.ndarray]:
    """For every served request after the first: how long its stage-0 devices had been idle when
    stage 0 was dispatched, and stage 0's compute at the machine's speed (both means over those
    devices, ms).

    A device's idle time counts from the end of its last stage at the machine's speed (the
    stage's dispatch plus its ``busy_ms``; each downlink delay falls on both ends alike). Why not
    :func:`served_with_idle`: a device also waits inside a request (the throttle's stall, the
    links, the exit head, the decision), and how long depends on where the previous request
    left, so two policies at equal idle time between requests hand their devices different
    pauses.
    """
    gaps, busy = [], []
    last_end: dict[int, float] = {}
    for rec, _ in served_with_idle(run):
        dispatch = rec.start_ms
        for k in range(rec.exit + 1):
            stage_busy = np.asarray(rec.busy_ms[k], dtype=np.float64)
            devices = np.flatnonzero(np.isfinite(stage_busy))
            if k == 0 and all(int(d) in last_end for d in devices):
                gaps.append(np.mean([dispatch - last_end[int(d)] for d in devices]))
                busy.append(stage_busy[devices].mean())
            for d in devices:
                last_end[int(d)] = dispatch + float(stage_busy[d])
            dispatch += rec.stage_ms[k] + rec.decision_ms[k]
    return np.asarray(gaps, dtype=np.float64), np.asarray(busy, dtype=np.float64)


def stage_samples(runs: Sequence[RunRecord]) -> StageSamples:
    """Flatten the stages of the served requests of ``runs``; ValueError if there are none."""
    k, busy, transfer, stage, comp, bw, decision, head = [], [], [], [], [], [], [], []
    idle = []
    for run in runs:
        for rec, idle_ms in served_with_idle(run):
            idle.extend([idle_ms] * (rec.exit + 1))
            for j in range(rec.exit + 1):
                k.append(j)
                busy.append(rec.busy_ms[j])
                transfer.append(rec.transfer_ms[j])
                stage.append(rec.stage_ms[j])
                decision.append(rec.decision_ms[j])
                head.append(rec.exit_ms[j])
                comp.append(rec.compute_level[j])
                bw.append(rec.bandwidth_level[j])
    if not k:
        raise ValueError("the run records hold no served request to calibrate on")
    return StageSamples(
        np.asarray(k), np.asarray(busy), np.asarray(transfer), np.asarray(stage),
        np.asarray(comp), np.asarray(bw), np.asarray(decision), np.asarray(head),
        np.asarray(idle, dtype=np.float64),
    )  # fmt: skip


@dataclass(frozen=True)
class ClusterFit:
    """Fitted parameters (the config's units) and how well the lines fit."""

    device_flops: np.ndarray  # [D] FLOP/s
    device_intercept_ms: np.ndarray  # [D] line fit: fixed part of a stage on each device
    link_bytes_per_s: np.ndarray  # [D]
    link_latency_ms: float  # per message, shared by the links (as the config has it)
    stage_overhead_ms: float
    device_r2: np.ndarray  # [D]
    decision_ms: float = 0.0
    exit_overhead_ms: float = 0.0
    handover_ms: float = 0.0
    stall_probability: float = 0.0
    stall_mean_ms: float = 0.0
    cold_start_ms: tuple[float, ...] = ()  # [K] devices and exit head together
    cold_start_tau_ms: float = 40.0
    cold_device_ms: tuple[float, ...] = ()  # [K] the devices' part of cold_start_ms

    def overrides(self) -> dict:
        """Config overrides that make the simulator use this fit."""
        return {
            "cluster": {
                "devices": [float(f"{v:.6g}") for v in self.device_flops],
                "links": [float(f"{v:.6g}") for v in self.link_bytes_per_s],
                "link_latency_ms": round(float(self.link_latency_ms), 4),
                "stage_overhead_ms": round(float(self.stage_overhead_ms), 4),
                "exit_overhead_ms": round(float(self.exit_overhead_ms), 4),
                "decision_ms": round(float(self.decision_ms), 4),
                "handover_ms": round(float(self.handover_ms), 4),
                "stall_probability": round(float(self.stall_probability), 5),
                "stall_mean_ms": round(float(self.stall_mean_ms), 3),
                "cold_start_ms": [round(float(v), 4) for v in self.cold_start_ms],
                "cold_start_tau_ms": float(self.cold_start_tau_ms),
            }
        }


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares ``y = a x + b``: (a, b, R^2); a flat x gives a = 0."""
    if np.ptp(x) <= 1e-12 * max(float(np.abs(x).max()), 1.0):
        return 0.0, float(y.mean()), 0.0
    a, b = np.polyfit(x, y, 1)
    resid = y - (a * x + b)
    total = float(((y - y.mean()) ** 2).sum())
    return float(a), float(b), 1.0 - float((resid**2).sum()) / total if total > 0 else 1.0


def _group_medians(
    x: np.ndarray, m: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One point per distinct (x, m): the median of its ``y``. Why: a loaded machine adds
    heavy-tailed wake-up delays to single transfers; the median keeps the link's own line, and
    what the delays add on average goes into the stage overhead."""
    keys = np.column_stack([np.round(x, 6), m])
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    med = np.array([np.median(y[inverse.reshape(-1) == i]) for i in range(len(uniq))])
    return uniq[:, 0], uniq[:, 1], med


def fit_cluster(
    samples: StageSamples,
    stage_flops: np.ndarray,
    stage_bytes: np.ndarray,
    stage_messages: np.ndarray,
    prior_link_bytes_per_s: np.ndarray,
    model_stage_ms,
    exit_flops: np.ndarray,
    exit_device: np.ndarray,
    cold_start: bool = True,
) -> ClusterFit:
    """Fit devices, links, latency, the exit head, the cold start and the stage overhead (see the
    module docstring).

    :param samples: the measured stages.
    :param stage_flops: ``[K, D]`` FLOPs of each stage on each device (the trace's cost table).
    :param stage_bytes: ``[K, D]`` bytes each device's link carries in stage k (in + out).
    :param stage_messages: ``[K, D]`` messages on each device's link in stage k.
    :param prior_link_bytes_per_s: ``[D]`` the links' configured rate, kept where the measured
        sizes do not vary enough to fit a slope (then only the latency is fitted).
    :param model_stage_ms: ``f(overrides, k, compute, bandwidth) -> [n] ms``: the simulator's
        stage latency for config overrides, without the stage overhead.
    :param exit_flops: ``[K]`` FLOPs of each exit head.
    :param exit_device: ``[K]`` the device whose compute share exit head k runs on.
    :param cold_start: fit the cold start (False: none, every stage priced alike).
    """
    cold = fit_cold_start(samples, exit_device, stage_flops.shape[0]) if cold_start else None
    if cold is not None:
        samples = _warm(samples, exit_device, *cold)
    d_count = samples.busy_ms.shape[1]
    flops = np.empty(d_count)
    intercept = np.empty(d_count)
    r2 = np.empty(d_count)
    for d in range(d_count):
        ran = np.isfinite(samples.busy_ms[:, d])  # pipeline: device d runs stage d only
        x, y = stage_flops[samples.k[ran], d], samples.busy_ms[ran, d]
        a, intercept[d], r2[d] = _line(x, y)
        if not y.sum() > 0 or not x.sum() > 0:
            raise ValueError(
                f"device {d}: no measured work to fit (busy {y.sum():.3g} ms for "
                f"{x.sum():.3g} FLOPs)"
            )
        flops[d] = 1e3 * x.sum() / y.sum()
    bw = np.asarray(prior_link_bytes_per_s, np.float64).copy()
    latency = np.empty(d_count)
    for d in range(d_count):
        ran = np.isfinite(samples.transfer_ms[:, d])
        x, m, y = _group_medians(
            stage_bytes[samples.k[ran], d] / samples.bandwidth[ran, d],
            stage_messages[samples.k[ran], d].astype(np.float64),
            samples.transfer_ms[ran, d],
        )
        (per_byte, per_message), *_ = np.linalg.lstsq(np.column_stack([x, m]), y, rcond=None)
        if per_byte > 0 and np.ptp(x) > 0:
            bw[d] = 1e3 / per_byte
        else:  # sizes do not vary (or noise swamps them): keep the rate, fit the latency
            per_message = float(np.sum((y - x / bw[d] * 1e3) * m) / max(np.sum(m * m), 1e-12))
        latency[d] = max(float(per_message), 0.0)
    share, flops_ms = exit_head_shares(samples, exit_flops, exit_device, flops)
    head = max(float(np.mean(samples.exit_ms * share - flops_ms)), 0.0)
    fit = ClusterFit(flops, intercept, bw, float(latency.mean()), 0.0, r2, exit_overhead_ms=head)
    model = model_stage_ms(fit.overrides(), samples.k, samples.compute, samples.bandwidth)
    overhead = max(float(np.mean(samples.stage_ms - model)), 0.0)
    decision = float(np.mean(samples.decision_ms))
    fit = replace(fit, stage_overhead_ms=overhead, decision_ms=decision)
    if cold is not None:
        device, head, tau = cold
        fit = replace(fit, cold_start_ms=tuple(device + head), cold_start_tau_ms=tau,
                      cold_device_ms=tuple(device))  # fmt: skip
    return fit


def fit_cold_start(
    samples: StageSamples,
    exit_device: np.ndarray,
    num_stages: int,
    taus: Sequence[float] = COLD_TAUS_MS,
) -> tuple[np.ndarray, np.ndarray, float]:
    """The cold start (see the module docstring): per stage of the ``num_stages``, the devices'
    and the exit head's extra time at full speed after a long idle ``[K]`` each, and the time
    constant (ms). A stage no request reached gets 0.

    The devices' part is fitted on the slowest device's busy time of each stage (the one the
    stage waits for), the head's on its time scaled to full speed; both share the ``tau`` with
    the least squared error. A stage whose time does not grow with idling, or with fewer than
    :data:`COLD_MIN_STAGES` measurements, gets 0; no stage's line may put its warm time (the
    intercept) below 0.
    """
    k_count = int(num_stages)
    device = np.nanmax(samples.busy_ms, axis=1)
    head = samples.exit_ms * exit_shares(samples, exit_device)
    best: tuple[float, np.ndarray, np.ndarray, float] | None = None
    for tau in taus:
        w = coldness(samples.idle_ms, tau)
        slopes, error = np.zeros((2, k_count)), 0.0
        for k in range(k_count):
            at = samples.k == k
            for row, y in enumerate((device[at], head[at])):
                a, b, _ = _line(w[at], y) if at.sum() >= COLD_MIN_STAGES else (0.0, 0.0, 0.0)
                cap = float(y.mean() / max(w[at].mean(), 1e-9)) if at.any() else 0.0
                slopes[row, k] = min(max(a, 0.0), max(cap, 0.0))  # warm time >= 0 on average
                error += float(((y - a * w[at] - b) ** 2).sum())
        if best is None or error < best[0]:
            best = (error, slopes[0], slopes[1], float(tau))
    assert best is not None
    return best[1], best[2], best[3]


def _warm(
    samples: StageSamples, exit_device: np.ndarray, device: np.ndarray, head: np.ndarray, tau: float
) -> StageSamples:
    """``samples`` with the fitted cold part taken off every measured time (devices, exit head,
    and the stage as the simulator prices it: the cold time on the exit device's share)."""
    w = coldness(samples.idle_ms, tau)
    share = exit_shares(samples, exit_device)
    dev = device[samples.k] * w
    hd = head[samples.k] * w / share
    return replace(
        samples,
        busy_ms=samples.busy_ms - dev[:, None],
        exit_ms=samples.exit_ms - hd,
        stage_ms=samples.stage_ms - (dev + head[samples.k] * w) / share,
    )


def exit_head_shares(
    samples: StageSamples, exit_flops: np.ndarray, exit_device: np.ndarray, device_flops: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per measured stage ``[n]``: the compute share its exit head ran on, and the head's FLOP
    time at full speed (ms) on that device (the fit and the report of the head both need them)."""
    e = np.asarray(exit_device)[samples.k]
    flops_ms = np.asarray(exit_flops)[samples.k] / np.asarray(device_flops)[e] * 1e3
    return exit_shares(samples, exit_device), flops_ms


def exit_shares(samples: StageSamples, exit_device: np.ndarray) -> np.ndarray:
    """Per measured stage ``[n]``: the compute share of the device its exit head ran on."""
    return samples.compute[np.arange(samples.k.size), np.asarray(exit_device)[samples.k]]


def handover_gaps(runs: Sequence[RunRecord]) -> np.ndarray:
    """Time (ms) from each served request's end to the start of the next served one, where
    that one had arrived by then (the devices had work waiting: the gap is the runtime's)."""
    gaps = []
    for run in runs:
        for rec, idle in served_with_idle(run)[1:]:
            if rec.arrival_ms < rec.start_ms - idle:  # it arrived before the previous one ended
                gaps.append(idle)
    return np.asarray(gaps, dtype=np.float64)


def fit_handover(gaps: np.ndarray) -> dict[str, float]:
    """``handover_ms``, ``stall_probability`` and ``stall_mean_ms`` from hand-over times (see
    the module docstring); all 0 when there are none."""
    gaps = np.maximum(np.asarray(gaps, dtype=np.float64), 0.0)
    if gaps.size == 0:
        return {"handover_ms": 0.0, "stall_probability": 0.0, "stall_mean_ms": 0.0}
    base = float(np.median(gaps))
    stalls = gaps[gaps > base + STALL_MIN_MS] - base
    return {
        "handover_ms": base,
        "stall_probability": stalls.size / gaps.size,
        "stall_mean_ms": float(stalls.mean()) if stalls.size else 0.0,
    }


def carried_decision_ms(
    calibrated_ms: float, calibration_predict_ms: float, policy_predict_ms: float
) -> float:
    """The decision time the simulator should charge another policy: the live decision time of
    the calibration run, with its policy's own inference swapped for this one's, both timed
    offline on the same machine (the observation is built the same way for every policy).

    :param calibrated_ms: the profile's ``decision_ms`` (measured live).
    :param calibration_predict_ms: the calibration policy's ``predict``, timed offline.
    :param policy_predict_ms: the other policy's ``predict``, timed offline.
    """
    return max(calibrated_ms + policy_predict_ms - calibration_predict_ms, 0.0)


def per_exit_latency(exits: np.ndarray, latency_ms: np.ndarray, num_exits: int) -> np.ndarray:
    """Mean latency of the requests that left at each exit, ``[K]`` (NaN where none did)."""
    out = np.full(num_exits, np.nan)
    for k in range(num_exits):
        sel = exits == k
        if sel.any():
            out[k] = float(latency_ms[sel].mean())
    return out
