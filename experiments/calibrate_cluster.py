"""Fit the simulator's cluster to live run records; show the simulator's error before and after.

    python -m experiments.calibrate_cluster runs/live-cal.json --name live-2core \\
        --evaluate runs/live-last.json runs/live-rule.json runs/live-ppo.json \\
        --table runs/sim-vs-live.md

Fits each device's effective FLOP/s, each link's bytes/s, the per-message link latency, an exit
head's fixed time, the fixed per-stage overhead, the controller's decision time and the hand-over
between requests with its rare stalls (see ``distree_env.runtime.calibration``) and writes them as
a named cluster profile: a JSON of config overrides (``{"cluster": {...}}``) that
``run_live --config`` and ``EnvConfig.replace`` load. Prints, per exit, the mean live latency and
what the simulator's latency model predicts for the same requests at the same imposed levels,
before (the config the runs used) and after calibration. With ``--evaluate``, runs the simulator
(the environment itself, on the fitted cluster, with each evaluation record's seed, arrival rate,
policy and images; each policy charged its own decision time, measured live with
``--decision-runs`` or else the calibration run's with the policies' offline ``predict`` times
swapped), pools the records of each policy and prints a Markdown table of live and simulated
figures side by side (also written to ``--table``), plus how often the live prediction equals the
exit trace's prediction at the exit the request took. Each policy also gets a diagnostic row, the
simulator at the service time its live runs measured (not a prediction: it separates the error
of the service model from the queue's). ``--timeline`` plots every run's service time against the
fitted model's in wall-clock time and prints how much the host's speed moved.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from experiments.cli import one_line_errors, parse_args, records_positional


@dataclass(frozen=True)
class Args:
    """Calibrate the simulated cluster against live run records."""

    records: tuple[str, ...] = field(
        default=(), metadata={"help": "live run records to fit (positional too)"}
    )
    name: str = field(default="live", metadata={"help": "name of the cluster profile"})
    out: str | None = field(
        default=None, metadata={"help": "profile path (default runs/cluster-NAME.json)"}
    )
    evaluate: tuple[str, ...] = field(
        default=(), metadata={"help": "live run records to compare with the simulator"}
    )
    decision_runs: tuple[str, ...] = field(
        default=(),
        metadata={"help": "live runs whose measured decision time is charged to their policy"},
    )
    cold_start: bool = field(
        default=True,
        metadata={"help": "fit the cold start (stages slower after the devices idled)"},
    )
    table: str | None = field(default=None, metadata={"help": "write the Markdown table here"})
    timeline: str | None = field(
        default=None,
        metadata={
            "help": "plot every run's live service time against the fitted model's over the "
            "runs' wall-clock time (PNG)"
        },
    )
    readme: bool = field(
        default=False, metadata={"help": "also write it into README.md's sim-vs-live block"}
    )
    trust: bool = field(
        default=False,
        metadata={"help": "load the runs' agent archives not listed in MANIFEST (files you made)"},
    )

    def __post_init__(self) -> None:
        if not self.records:
            raise ValueError("records: give at least one live run record to fit")
        if not self.evaluate:
            given = [
                flag
                for flag, value in (
                    ("--table", self.table),
                    ("--readme", self.readme),
                    ("--decision-runs", self.decision_runs),
                )
                if value
            ]
            if given:
                raise ValueError(
                    f"{', '.join(given)}: only allowed with --evaluate (the simulator-vs-live "
                    "comparison that these write or price is made of the --evaluate records)"
                )


#: Stall realisations the simulator's prediction averages over (see :func:`simulate`). With
#: stalls like those an earlier round fitted (~100 ms in 1-2% of busy hand-overs), one
#: realisation's mean latency over 1,000 steady-stream requests had a standard deviation of about
#: 15%; the average of 32 brings that to about 3%.
STALL_REALISATIONS = 32


# ---- costs and the model -----------------------------------------------------------------------
def base_config(run: Any) -> Any:
    """The EnvConfig a live run ran with (stored in its record)."""
    from distree_env.config import EnvConfig

    return EnvConfig.from_dict(run.meta["config"])


def link_traffic(trace: Any, decision_bytes: float) -> tuple[np.ndarray, np.ndarray]:
    """``[K, D]`` bytes and messages on each device's link in stage k, as the simulator counts
    them (a message carries bytes). Parallel: the input or the continue decision in, the
    features out. Pipeline: the input (stage 0) or the previous segment's feature map in."""
    transfer = trace.transfer_bytes.astype(np.float64)
    if trace.topology == "pipeline":
        k = np.arange(trace.num_exits)
        incoming = np.zeros(transfer.shape)
        incoming[0, 0] = float(trace.input_bytes)
        incoming[k[1:], k[1:]] = transfer[k[:-1], k[:-1]]
        return incoming, (incoming > 0).astype(np.float64)
    incoming = np.full(transfer.shape, float(decision_bytes))
    incoming[0] = float(trace.input_bytes)
    return incoming + transfer, (incoming > 0).astype(np.float64) + (transfer > 0)


def model_for(config: Any, trace: Any, overrides: dict | None, overhead: bool = True):
    """``f(k, compute, bandwidth, idle_ms=0) -> ms`` of the simulator's latency model for
    ``config`` with ``overrides`` (the stage overhead and decision time left out when
    ``overhead`` is False), with the cold start of a request that the devices idled ``idle_ms``
    before, as the environment adds it."""
    from distree_env.cluster.latency import LatencyModel, coldness

    cfg = config.replace(overrides or {})
    if not overhead:
        cfg = cfg.replace({"cluster.stage_overhead_ms": 0.0, "cluster.decision_ms": 0.0})
    model = LatencyModel.from_config(cfg, trace)

    def stage_ms(k: Any, c: Any, b: Any, idle_ms: float = 0.0) -> np.ndarray:
        k, c = np.asarray(k), np.asarray(c)
        share = c[np.arange(k.size), model.exit_device[k]]
        cold = model.cold_ms[k] * coldness(idle_ms, model.cold_tau_ms) / share
        return model.stage_ms(k, c, np.asarray(b)) + cold

    return stage_ms


def replayed_latency(run: Any, stage_model) -> tuple[np.ndarray, ...]:
    """Per served request of ``run``: exit, live latency, the model's latency for the same
    stages at the same imposed levels (and the same idle time before it) plus the measured queue
    wait, that wait, and the idle time."""
    from distree_env.runtime.calibration import served_with_idle

    exits, live, sim, waits, idles = [], [], [], [], []
    for rec, idle in served_with_idle(run):
        k = np.arange(rec.exit + 1)
        levels = np.asarray(rec.compute_level), np.asarray(rec.bandwidth_level)
        stages = stage_model(k, *levels, idle)
        exits.append(rec.exit)
        live.append(rec.latency_ms)
        sim.append(rec.queue_wait_ms + float(np.sum(stages)))
        waits.append(rec.queue_wait_ms)
        idles.append(idle)
    return tuple(np.asarray(v, dtype=np.float64) for v in (exits, live, sim, waits, idles))


def error_table(runs: list, trace: Any, before, after) -> str:
    """Markdown: per exit, live mean latency against the ``before`` and ``after`` models."""
    from distree_env.runtime.calibration import per_exit_latency

    k_count = trace.num_exits
    replays = [replayed_latency(r, before) for r in runs]
    exits = np.concatenate([r[0] for r in replays]).astype(np.int64)
    live = np.concatenate([r[1] for r in replays])
    sim_b = np.concatenate([r[2] for r in replays])
    sim_a = np.concatenate([replayed_latency(r, after)[2] for r in runs])
    lines = [
        "| exit | requests | live mean ms | sim before | error before | sim after | error after |",
        "|---|---|---|---|---|---|---|",
    ]
    lm = per_exit_latency(exits, live, k_count)
    bm = per_exit_latency(exits, sim_b, k_count)
    am = per_exit_latency(exits, sim_a, k_count)
    for k in range(k_count):
        n = int((exits == k).sum())
        if n == 0:
            continue
        lines.append(
            f"| {k} | {n} | {lm[k]:.2f} | {bm[k]:.2f} | {100 * (bm[k] / lm[k] - 1):+.1f}% "
            f"| {am[k]:.2f} | {100 * (am[k] / lm[k] - 1):+.1f}% |"
        )
    return "\n".join(lines)


def exit_head_line(samples: Any, trace: Any, fit: Any, exit_device: np.ndarray) -> str:
    """One line: the measured exit head time by its device's compute share beside the fitted
    model's, which stretches the head's FLOPs, fixed time and cold start by the share as the
    runtime does."""
    from distree_env.cluster.latency import coldness
    from distree_env.runtime.calibration import exit_head_shares

    share, flops_ms = exit_head_shares(samples, trace.exit_flops, exit_device, fit.device_flops)
    model = (flops_ms + fit.exit_overhead_ms) / share
    if fit.cold_start_ms:  # the head's part of the cold start, by each request's idle time
        head = np.asarray(fit.cold_start_ms) - np.asarray(fit.cold_device_ms)
        cold = coldness(samples.idle_ms, fit.cold_start_tau_ms)
        model = model + head[samples.k] * cold / share
    parts = []
    for lo, hi in ((0.75, 1.0), (0.35, 0.75), (0.0, 0.35)):
        sel = (share > lo) & (share <= hi)
        if sel.any():
            parts.append(
                f"share ({lo:g}, {hi:g}]: {samples.exit_ms[sel].mean():.3f} ms live, "
                f"{model[sel].mean():.3f} ms model ({int(sel.sum())} stages)"
            )
    return f"exit head, fixed {fit.exit_overhead_ms:.3f} ms at full speed: " + "; ".join(parts)


# ---- sim vs live -------------------------------------------------------------------------------
def live_metrics(runs: list[Any], num_exits: int) -> dict[str, Any]:
    """The simulator's episode figures, computed from live run records (pooled)."""
    from distree_env.runtime.calibration import per_exit_latency

    requests = [r for run in runs for r in run.requests]
    served = [r for r in requests if not r.dropped]
    dropped = len(requests) - len(served)
    lat = np.array([r.latency_ms for r in served])
    exits = np.array([r.exit for r in served])
    return {
        "requests": len(served),
        "accuracy": float(np.mean([r.correct for r in served])),
        "latency_mean_ms": float(lat.mean()),
        "latency_p95_ms": float(np.percentile(lat, 95)),
        "qos_rate": float(np.sum([r.deadline_met for r in served]) / max(len(requests), 1)),
        "drop_rate": dropped / max(len(requests), 1),
        "exit_fractions": np.bincount(exits, minlength=num_exits) / len(served),
        "exit_latency_ms": per_exit_latency(exits, lat, num_exits),
        "decision_ms": float(np.mean([d for r in served for d in r.decision_ms])),
    }


def simulated_config(run: Any, profile: dict) -> Any:
    """The config that simulates ``run`` after calibration: the run's own, with the fitted
    cluster ``profile``, and its arrival rate pinned to the live run's. Why pinned: a rate given
    as a utilisation follows the cluster's service time, and the simulator must replay the very
    arrivals the live run served (same seed, same rate: bit-identical arrival times)."""
    from distree_env.dynamics import describe

    config = base_config(run)
    pinned = config.replace(profile)
    if config.arrivals.utilisation is not None and config.arrivals.kind != "isolated":
        rate = describe(config)["rate_per_s"]
        pinned = pinned.replace({"arrivals": {"rate_per_s": rate, "utilisation": None}})
    return pinned


def predict_ms(run: Any, config: Any, policy_spec: str, trust: bool) -> float:
    """Median time (ms) of one ``predict`` of the policy on this machine, timed offline over a
    simulated run of the live run's length (one observation per call, as live)."""
    n = sum(1 for r in run.requests if not r.dropped)
    times: list[float] = []
    whole_run = config.replace({"requests_per_episode": n})
    _simulate_once(run, whole_run, config.requests_per_episode, policy_spec, trust, times)
    return 1e3 * float(np.median(times))


def simulate(
    runs: list[Any],
    configs: list[Any],
    policy_spec: str,
    trust: bool,
    decision_ms: float | None = None,
) -> dict[str, Any]:
    """Run the environment with each live run's config, seed and policy for as many requests
    and pool the runs; with stalls in the profile, pool ``STALL_REALISATIONS`` realisations of
    them (same seed, so the same arrivals and resource paths as the live run): a stall is the
    host's, not the seed's, so the simulator's prediction is its average over stalls.

    ``run_mean_ms`` is each run's mean simulated latency over the realisations.

    :param configs: the config to simulate each run with (:func:`simulated_config`).
    :param decision_ms: the policy's decision time per stage (None: the config's).
    """
    from distree_env.runtime.calibration import per_exit_latency
    from distree_env.traces import resolve_trace

    exits, lat, correct, met, dropped = [], [], [], [], 0
    realisations = STALL_REALISATIONS if configs[0].cluster.stall_probability > 0 else 1
    each: list[list[float]] = [[] for _ in range(realisations)]  # latencies per realisation
    per_run: list[float] = []  # each run's mean latency over the realisations
    for run, config in zip(runs, configs, strict=True):
        n = sum(1 for r in run.requests if not r.dropped)
        cfg = config.replace({"requests_per_episode": n})
        if decision_ms is not None:
            cfg = cfg.replace({"cluster.decision_ms": round(decision_ms, 4)})
        run_lat: list[float] = []
        for stall_seed in range(realisations):
            stalls = cfg.replace({"cluster.stall_seed": stall_seed})
            one = _simulate_once(run, stalls, config.requests_per_episode, policy_spec, trust)
            for pooled, part in zip((exits, lat, correct, met), one[:4], strict=True):
                pooled.extend(part)
            dropped += one[4]
            each[stall_seed].extend(one[1])
            run_lat.extend(one[1])
        per_run.append(float(np.mean(run_lat)))
    exits_a, lat_a = np.asarray(exits), np.asarray(lat)
    k_count = resolve_trace(configs[0].trace).num_exits
    total = len(exits) + dropped
    return {
        "requests": len(exits) // realisations,
        "accuracy": float(np.mean(correct)),
        "latency_mean_ms": float(lat_a.mean()),
        "latency_p95_ms": float(np.percentile(lat_a, 95)),
        "qos_rate": float(np.sum(met) / max(total, 1)),
        "drop_rate": dropped / max(total, 1),
        "exit_fractions": np.bincount(exits_a, minlength=k_count) / len(exits),
        "exit_latency_ms": per_exit_latency(exits_a, lat_a, k_count),
        "realisation_mean_ms": [float(np.mean(lats)) for lats in each],
        "realisation_p95_ms": [float(np.percentile(lats, 95)) for lats in each],
        "run_mean_ms": per_run,
    }


def _simulate_once(
    run: Any,
    cfg: Any,
    per_episode: int,
    policy_spec: str,
    trust: bool,
    times: list[float] | None = None,
) -> tuple[list[int], list[float], list[bool], list[bool], int]:
    """One simulated episode of the live run's length: exits, latencies, correctness, deadline
    met (answered requests) and the number dropped; each ``predict``'s seconds go to ``times``
    when given. A recurrent policy's memory restarts every ``per_episode`` answered requests
    (the scenario's own episodes), as live."""
    from distree_env.env import DistrEEEnv
    from distree_env.runtime.schedule import starts_episode
    from experiments.run_live import make_policy

    env = DistrEEEnv(cfg)
    seed = int(run.meta["args"]["seed"])
    policy = make_policy(policy_spec, cfg, trust, seed)
    obs, _ = env.reset(seed=seed)
    exits, lat, correct, met, dropped = [], [], [], [], 0
    state, start = None, True
    while True:
        t0 = time.perf_counter()
        action, state = policy.predict(
            obs[None, :], state=state, episode_start=np.array([start]), deterministic=True
        )
        if times is not None:
            times.append(time.perf_counter() - t0)
        start = False
        obs, _, terminated, truncated, info = env.step(int(np.asarray(action).reshape(-1)[0]))
        # every drop of the run, as the live run records them (not agents.evaluate's count of
        # the drops before a window of requests: here the whole run is the window)
        dropped += int(info.get("dropped", 0))
        if info.get("request_done", False):
            exits.append(int(info["request_exit"]))
            start = starts_episode(len(exits), per_episode)
            lat.append(float(info["request_latency_ms"]))
            correct.append(bool(info["request_correct"]))
            met.append(lat[-1] <= cfg.deadline_ms)
        if terminated or truncated:
            return exits, lat, correct, met, dropped


def trace_agreement(runs: list[Any], trace: Any) -> tuple[float, float]:
    """(share of live predictions equal to the trace's at the same image and exit, trace
    accuracy at the live exits), over the served requests of ``runs``."""
    served = [r for run in runs for r in run.requests if not r.dropped]
    same, right = 0, 0
    for r in served:
        row = r.sample
        pred = int(np.argmax(trace.probs[row, r.exit]))
        same += pred == r.prediction
        right += pred == int(trace.labels[row])
    return same / len(served), right / len(served)


def _pooling(profile: dict) -> str:
    """How the simulated rows were made, for the table's heading."""
    if profile["cluster"]["stall_probability"] > 0:
        return (
            f"the simulated rows pool {STALL_REALISATIONS} realisations of the fitted stalls, "
            "all with the live run's arrivals and resource paths"
        )
    return "no stalls were fitted, so each simulated row is one run"


def first_stage_busy_ms(runs: list[Any]) -> float:
    """Mean device compute of stage 0 at the machine's full speed (every served request runs
    it): the machine's speed during a run, to compare a run with its calibration."""
    busy = [np.nanmean(r.busy_ms[0]) for run in runs for r in run.requests if r.busy_ms]
    return float(np.mean(busy)) if busy else float("nan")


#: Upper edges (ms) of the bands of idle time before a request that :func:`idle_compute_line`
#: reports (the last band is open).
IDLE_BANDS_MS = (2.0, 10.0, 40.0)


def band_label(lo: float, hi: float) -> str:
    """``idle <= 2 ms``, ``idle 2-10 ms`` or ``idle > 40 ms`` for the band ``(lo, hi]``."""
    if lo == -np.inf:
        return f"idle <= {hi:g} ms"
    return f"idle > {lo:g} ms" if hi == np.inf else f"idle {lo:g}-{hi:g} ms"


def idle_bands(
    idle: np.ndarray, upper_ms: tuple[float, ...] = IDLE_BANDS_MS
) -> list[tuple[str, np.ndarray]]:
    """``("idle <= 2 ms", mask)`` for each band of ``upper_ms`` (upper edges; the last band is
    open) that ``idle`` visits."""
    bands = []
    for lo, hi in pairwise((-np.inf, *upper_ms, np.inf)):
        sel = (idle > lo) & (idle <= hi)
        if sel.any():
            bands.append((band_label(lo, hi), sel))
    return bands


def idle_compute_line(runs: list[Any]) -> str:
    """Stage 0's device compute by the devices' idle time before the request, per band of
    :data:`IDLE_BANDS_MS`: on this host a core that idled computes the next stage more slowly
    (what the cold start models)."""
    from distree_env.runtime.calibration import stage_samples

    samples = stage_samples(runs)
    first = samples.k == 0  # every served request runs stage 0 once
    idle, busy = samples.idle_ms[first], np.nanmean(samples.busy_ms[first], axis=1)
    parts = [f"{b}: {busy[sel].mean():.2f} ms ({int(sel.sum())})" for b, sel in idle_bands(idle)]
    return "stage 0 device compute by idle time before the request: " + ", ".join(parts)


def service_ms(runs: list[Any], stage_model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per served request of ``runs``: live service time (latency less queue wait), the model's
    for the same stages at the same imposed levels and idle time, and that idle time (what
    :func:`service_line` and :func:`service_ratio` read; replayed once for both)."""
    replays = [replayed_latency(r, stage_model) for r in runs]
    live, sim, wait, idle = (np.concatenate([r[i] for r in replays]) for i in (1, 2, 3, 4))
    return live - wait, sim - wait, idle


def service_line(service: tuple[np.ndarray, np.ndarray, np.ndarray]) -> str:
    """Service time (latency less queue wait) by the idle time before the request, live against
    the fitted model at the imposed levels (``service``: :func:`service_ms`): whether the model
    follows the cold start."""
    live, sim, idle = service
    parts = [
        f"{band}: {live[sel].mean():.2f}/{sim[sel].mean():.2f} ms "
        f"({100 * (sim[sel].mean() / live[sel].mean() - 1):+.1f}%)"
        for band, sel in idle_bands(idle)
    ]
    return "service live/model by idle time before the request: " + ", ".join(parts)


def service_ratio(service: tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
    """Total live service time over the model's for the same requests (``service``:
    :func:`service_ms`; same stages, imposed levels and idle times): how much more slowly (> 1)
    the host served them than the fitted model says, whatever the cause (the shared host's
    drift, the policy's load)."""
    live, sim, _ = service
    return float(live.sum() / sim.sum())


def service_timeline(
    runs: list[Any], stage_model, calibration: int
) -> list[tuple[str, bool, np.ndarray, np.ndarray]]:
    """Per run: ``(policy, is_calibration, start_s, ratio)``, for each served request its start
    in seconds since the earliest run started and its live service time over the model's at the
    same stages, levels and idle time, the policy's decision time left out of both (so that
    every policy's requests measure the host alike).

    :param stage_model: :func:`model_for` of the fitted profile with ``decision_ms`` 0.
    :param calibration: how many of ``runs``, from the first, are calibration runs.
    """
    from distree_env.runtime.calibration import served_with_idle

    t0 = min(float(run.meta["started_unix"]) for run in runs)
    series = []
    for i, run in enumerate(runs):
        _, live, sim, wait, _ = replayed_latency(run, stage_model)
        served = [rec for rec, _ in served_with_idle(run)]
        decision = np.array([sum(rec.decision_ms) for rec in served])
        start_s = (
            float(run.meta["started_unix"]) - t0 + np.array([r.start_ms for r in served]) / 1e3
        )
        ratio = (live - wait - decision) / (sim - wait)
        series.append((run.meta["args"]["policy"], i < calibration, start_s, ratio))
    return series


#: Width of the wall-clock windows over which :func:`window_spread_line` measures the host.
WINDOW_S = 10.0


def window_spread_line(series: list[tuple[str, bool, np.ndarray, np.ndarray]]) -> str:
    """How much the host's service time moved: the live/model ratio per :data:`WINDOW_S`
    window of wall-clock time (all runs' requests in it, windows of at least 10 requests)."""
    start = np.concatenate([s[2] for s in series])
    ratio = np.concatenate([s[3] for s in series])
    window = np.floor(start / WINDOW_S).astype(np.int64)
    windows, counts = np.unique(window, return_counts=True)
    medians = [np.median(ratio[window == w]) for w in windows[counts >= 10]]
    if not medians:
        return f"service live/model per {WINDOW_S:g}-s window: no window of 10 requests"
    lo, mid, hi = np.percentile(medians, [5, 50, 95])
    return (
        f"service live/model (the policy's decision time left out) per {WINDOW_S:g}-s window "
        f"of the runs: median {mid:.3f}, 5-95% {lo:.3f}-{hi:.3f} over {len(medians)} windows"
    )


#: Fields of a fitted cluster profile that are durations (a slower host multiplies them) and
#: rates (it divides them); the stalls' probability and the cold start's time constant, which
#: count idle time and hand-overs, stay as they are.
PROFILE_DURATIONS = (
    "link_latency_ms",
    "stage_overhead_ms",
    "exit_overhead_ms",
    "decision_ms",
    "handover_ms",
    "stall_mean_ms",
)
PROFILE_RATES = ("devices", "links")


def slowed_profile(profile: dict, factor: float) -> dict:
    """The fitted ``profile`` on a host ``factor`` times slower: every duration times
    ``factor`` (the cold start's per stage too), every rate divided by it, so that every
    service time the model gives is ``factor`` times longer."""
    cluster = dict(profile["cluster"])
    for name in PROFILE_RATES:
        cluster[name] = [v / factor for v in cluster[name]]
    for name in PROFILE_DURATIONS:
        cluster[name] = cluster[name] * factor
    cluster["cold_start_ms"] = [v * factor for v in cluster["cold_start_ms"]]
    return {**profile, "cluster": cluster}


def cold_start_line(fit: Any) -> str:
    """The fitted cold start: its time constant and each stage's extra time after a long idle."""
    device = "/".join(f"{v:.2f}" for v in fit.cold_device_ms)
    total = "/".join(f"{v:.2f}" for v in fit.cold_start_ms)
    return (
        f"fitted cold start: tau {fit.cold_start_tau_ms:g} ms, per stage after a long idle "
        f"{total} ms at full speed (devices {device} ms, the rest the exit head)"
    )


def _runs_of(runs: list[Any]) -> str:
    """``"2 live runs (1 of last-exit, 1 of random:0.35)"``: what a fit or a row pools."""
    count: dict[str, int] = {}
    for run in runs:
        spec = run.meta["args"]["policy"]
        count[spec] = count.get(spec, 0) + 1
    parts = ", ".join(f"{n} of {spec}" for spec, n in count.items())
    return f"{len(runs)} live run{'s' if len(runs) > 1 else ''} ({parts})"


def _span(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}"


def _fmt_exits(v: np.ndarray) -> str:
    return "/".join(f"{x:.2f}" for x in v)


def measured_decision_ms(runs: list[Any]) -> dict[str, float]:
    """Policy spec -> mean live decision time (ms) over the given runs of that policy.

    Why measured live: between decisions the aggregator sleeps while the devices compute, and a
    small network's ``predict`` after such a pause is slower than in a tight loop, which an
    offline timing misses (the shipped PPO: 0.64 ms per decision live, observation included,
    against 0.31 ms charged from its offline timing).
    """
    times: dict[str, list[float]] = {}
    for run in runs:
        spec = run.meta["args"]["policy"]
        times.setdefault(spec, []).extend(
            d for r in run.requests if not r.dropped for d in r.decision_ms
        )
    return {spec: float(np.mean(ts)) for spec, ts in times.items() if ts}


def _table_row(spec: str, source: str, m: dict[str, Any]) -> str:
    return (
        f"| {spec} | {source} | {m['requests']} | {m['accuracy']:.4f} | "
        f"{m['latency_mean_ms']:.2f} | {m['latency_p95_ms']:.2f} | {m['qos_rate']:.3f} | "
        f"{_fmt_exits(m['exit_fractions'])} | {_fmt_exits(m['exit_latency_ms'])} |"
    )


def latency_errors(sim: dict[str, Any], live: dict[str, Any]) -> tuple[float, float]:
    """(largest relative error of the per-exit mean latency over the exits both visit, relative
    error of the p95 latency) of simulated figures against live ones."""
    with np.errstate(invalid="ignore"):
        per_exit = np.nanmax(np.abs(sim["exit_latency_ms"] / live["exit_latency_ms"] - 1))
    return float(per_exit), abs(sim["latency_p95_ms"] / live["latency_p95_ms"] - 1)


def matched_service_note(sim: dict, matched: dict, live: dict, ratio: float) -> str:
    """The errors left when the simulator serves at the live runs' own service time, and how
    much the mean latency moves per percent of service time (the queue's amplification)."""
    per_exit, p95 = latency_errors(matched, live)
    note = (
        f"; at the live runs' own service time (the fitted model's x{ratio:.3f}: a diagnostic, "
        "not a prediction, as the factor comes from these runs), the simulator's per-exit error "
        f"is at most {100 * per_exit:.1f}% and its p95 error {100 * p95:.1f}%"
    )
    if abs(ratio - 1) >= 0.005:  # below that, the slope is mostly the stalls' noise
        slope = (matched["latency_mean_ms"] / sim["latency_mean_ms"] - 1) / (ratio - 1)
        note += f", and each 1% of service time moves its mean latency by {slope:.1f}%"
    return note


def run_spread_note(group: list[Any], sim: dict[str, Any]) -> str:
    """How far the simulated mean latency is off the live one run by run (the chunks of one
    policy): the spread that the host's drift between chunks puts on a pooled error."""
    live = [np.mean([r.latency_ms for r in run.requests if not r.dropped]) for run in group]
    errors = 100 * (np.asarray(sim["run_mean_ms"]) / np.asarray(live) - 1)
    return (
        f"; run by run, the simulated mean latency is {errors.min():+.1f}% to "
        f"{errors.max():+.1f}% off the live one"
    )


def comparison_table(
    runs: list[Any],
    calibration: Any,
    profile: dict,
    measured: dict[str, float] | None = None,
    calibration_busy_ms: float | None = None,
    trust: bool = False,
) -> str:
    """Markdown: the live runs of each policy (pooled) beside the simulator's runs of the same
    seeds and policy on the calibrated cluster, with the per-exit and p95 latency errors against
    the issue's targets.

    :param runs: live runs; several runs of one policy (chunks of an interleaved protocol, each
        with its own seed) make one row.
    :param calibration: the calibration run; its policy is timed offline next to each run's, so
        the simulator charges each policy its own decision time
        (:func:`~distree_env.runtime.calibration.carried_decision_ms`).
    :param profile: the fitted cluster overrides the simulator runs with
        (:func:`simulated_config`).
    :param measured: policy spec -> decision time measured in a separate live run of that
        policy (:func:`measured_decision_ms`); charged instead of the offline estimate.
    :param calibration_busy_ms: :func:`first_stage_busy_ms` of the calibration runs; each
        policy's own is printed beside it, since a machine slower during a run than during
        calibration (other jobs, a shared host) shows up as longer queues the simulator cannot
        know of. Given, each policy also gets a diagnostic row: the simulator on the fitted
        cluster slowed to the service time its live runs measured (:func:`service_ratio`,
        :func:`slowed_profile`), which separates the queue model's error from the service
        time's.
    :param trust: load the runs' agent archives when MANIFEST does not list them (the user's
        ``--trust``; a record never grants it).
    """
    measured = measured or {}
    from distree_env.runtime.calibration import carried_decision_ms
    from distree_env.traces import resolve_trace

    lines = [
        "| policy | source | requests | accuracy | mean ms | p95 ms | deadline met | "
        "exit fractions | mean ms per exit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    cal_spec = calibration.meta["args"]["policy"]
    cal = predict_ms(calibration, base_config(calibration), cal_spec, trust)
    by_policy: dict[str, list[Any]] = {}
    for run in runs:
        by_policy.setdefault(run.meta["args"]["policy"], []).append(run)
    for spec, group in by_policy.items():
        configs = [simulated_config(run, profile) for run in group]
        trace = resolve_trace(configs[0].trace)
        live = live_metrics(group, trace.num_exits)
        if spec in measured:
            decision, charged = measured[spec], "measured in its own calibration run"
        else:  # timing the policy offline simulates a whole run: only when needed
            own = predict_ms(group[0], configs[0], spec, trust)
            decision = carried_decision_ms(configs[0].cluster.decision_ms, cal, own)
            charged = f"{own:.3f} ms predict offline against {cal:.3f} ms for {cal_spec}"
        sim = simulate(group, configs, spec, trust, decision)
        priced = {"cluster": {**profile["cluster"], "decision_ms": decision}}
        same, trace_acc = trace_agreement(group, trace)
        lines += [_table_row(spec, "live", live), _table_row(spec, "simulated", sim)]
        per_exit, p95 = latency_errors(sim, live)
        notes.append(
            f"- {spec} ({len(group)} run{'s' if len(group) > 1 else ''}): per-exit mean latency "
            f"error at most {100 * per_exit:.1f}% (target 10%), p95 error {100 * p95:.1f}% "
            f"(target 15%); live predictions equal the trace's at the same exit for "
            f"{100 * same:.2f}% of requests (trace accuracy at the live exits {trace_acc:.4f}, "
            f"live {live['accuracy']:.4f}); decision time {live['decision_ms']:.2f} ms live, "
            f"{decision:.2f} ms simulated ({charged})"
        )
        if calibration_busy_ms is not None:
            busy = first_stage_busy_ms(group)
            service = service_ms(group, model_for(base_config(group[0]), trace, priced))
            notes[-1] += (
                f"; device compute of stage 0 {busy:.2f} ms, against {calibration_busy_ms:.2f} ms "
                f"in the calibration runs ({100 * (busy / calibration_busy_ms - 1):+.0f}%); "
                + idle_compute_line(group)
                + "; "
                + service_line(service)
            )
            ratio = service_ratio(service)
            slowed = slowed_profile(profile, ratio)
            matched_configs = [simulated_config(run, slowed) for run in group]
            matched = simulate(group, matched_configs, spec, trust, decision * ratio)
            lines.append(_table_row(spec, f"simulated at live service (x{ratio:.3f})", matched))
            notes[-1] += matched_service_note(sim, matched, live, ratio)
        if len(group) > 1:
            notes[-1] += run_spread_note(group, sim)
        if len(sim["realisation_mean_ms"]) > 1:
            notes[-1] += (
                f"; the simulated stall realisations range over "
                f"{_span(sim['realisation_mean_ms'])} ms (mean) and "
                f"{_span(sim['realisation_p95_ms'])} ms (p95)"
            )
    return "\n".join(lines + [""] + notes)


def complete_live_run(path: str) -> Any:
    """The run record at ``path``, with the ``meta`` this script reads (``config``, and in
    ``args`` the ``policy`` and ``seed``); ValueError naming the file and the field."""
    from distree_env.runtime.records import load_run

    run = load_run(path)
    args = run.meta.get("args")
    problems = [
        name
        for name, ok in (
            ("meta.config", isinstance(run.meta.get("config"), dict)),
            ("meta.args.policy", isinstance(args, dict) and isinstance(args.get("policy"), str)),
            ("meta.args.seed", isinstance(args, dict) and isinstance(args.get("seed"), int)),
        )
        if not ok
    ]
    if problems:
        raise ValueError(f"run record {path!r}: missing or malformed {', '.join(problems)}")
    status = run.meta.get("status")
    if status != "complete":
        raise ValueError(
            f"run record {path!r}: status {status!r}, not 'complete' (a run that failed or was "
            "killed measured its last requests under a fault); use complete runs"
        )
    if all(r.dropped for r in run.requests):
        raise ValueError(f"run record {path!r}: no served requests to compare or fit")
    return run


def _same_network(runs: list[Any], paths: list[str]) -> None:
    """ValueError naming the files unless every run ran one network (its whole config: a
    fit pools their stages, so depth, width and exits must agree too)."""
    kinds: dict[str, list[str]] = {}
    described: dict[str, str] = {}
    for run, path in zip(runs, paths, strict=True):
        net = run.meta.get("net") if isinstance(run.meta.get("net"), dict) else {}
        key = json.dumps(net, sort_keys=True, default=str)
        kinds.setdefault(key, []).append(path)
        described[key] = (
            f"{net.get('topology')} on {net.get('num_devices')} devices, depth "
            f"{net.get('depth')}, widen {net.get('widen')}, exits {net.get('exits')}"
        )
    if len(kinds) > 1:
        groups = "; ".join(f"{described[k]}: {', '.join(files)}" for k, files in kinds.items())
        raise ValueError(f"the run records are of different networks ({groups}); give one's")


def in_sample_note(records: Sequence[str], evaluated: Sequence[str]) -> str:
    """A warning line when evaluated runs are also fitted (their errors are in-sample, not a
    prediction the targets speak of); empty when none is."""
    fitted = {Path(p).resolve() for p in records}
    both = [p for p in evaluated if Path(p).resolve() in fitted]
    if not both:
        return ""
    return (
        f"Note: {', '.join(both)} {'is' if len(both) == 1 else 'are'} also fitted (a calibration "
        "record): the errors above are measured on the data the profile was fitted to, not "
        "predicted; evaluate runs the fit did not see for the targets."
    )


@one_line_errors
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run from command-line ``argv`` (default: ``sys.argv``); returns the profile and table."""
    argv = records_positional(list(sys.argv[1:] if argv is None else argv))
    args = parse_args(Args, argv)
    from distree_env.io import atomic_write_text, require_output_file, strict_json
    from distree_env.runtime.calibration import (
        STALL_MIN_MS,
        fit_cluster,
        fit_handover,
        handover_gaps,
        stage_samples,
    )
    from distree_env.traces import resolve_trace

    # every record is read (and every output path checked) before the fit: a bad --evaluate
    # file must not end the run after the profile is written
    runs = [complete_live_run(p) for p in args.records]
    evaluated = [complete_live_run(p) for p in args.evaluate]
    decision_runs = [complete_live_run(p) for p in args.decision_runs]
    _same_network(
        [*runs, *evaluated, *decision_runs],
        [*args.records, *args.evaluate, *args.decision_runs],
    )
    out = require_output_file(args.out or f"runs/cluster-{args.name}.json", "--out")
    if args.table:
        require_output_file(args.table, "--table")
    if args.timeline:
        require_output_file(args.timeline, "--timeline")
        for run, path in zip([*runs, *evaluated], [*args.records, *args.evaluate], strict=True):
            if not isinstance(run.meta.get("started_unix"), (int, float)):
                raise ValueError(
                    f"run record {path!r}: no meta.started_unix (when the run started), which "
                    "--timeline needs; leave --timeline out for this record"
                )
    config = base_config(runs[0])
    trace = resolve_trace(config.trace)
    samples = stage_samples(runs)
    from distree_env.cluster.latency import LatencyModel, link_rates

    prior_bw, _ = link_rates(config.cluster, trace.num_devices, config.trace)
    exit_device = LatencyModel.from_config(config, trace).exit_device
    fit = fit_cluster(
        samples,
        trace.stage_flops.astype(np.float64),
        *link_traffic(trace, config.cluster.decision_bytes),
        prior_bw,
        lambda ov, k, c, b: model_for(config, trace, ov, overhead=False)(k, c, b),
        trace.exit_flops.astype(np.float64),
        exit_device,
        args.cold_start,
    )
    gaps = handover_gaps(runs)
    fit = dataclasses.replace(fit, **fit_handover(gaps))
    profile = fit.overrides()
    atomic_write_text(out, strict_json(profile, indent=2) + "\n")
    print(f"cluster profile {args.name!r} -> {out}")
    print(json.dumps(profile["cluster"]))
    print(
        f"hand-over: {gaps.size} measured, median {fit.handover_ms:.3f} ms; stalls (longer by "
        f">= {STALL_MIN_MS:g} ms) in {100 * fit.stall_probability:.2f}% of them, mean excess "
        f"{fit.stall_mean_ms:.1f} ms"
    )
    print(
        "device line fit R^2: " + ", ".join(f"{r:.3f}" for r in fit.device_r2)
        + "; per-stage device intercepts (ms): "
        + ", ".join(f"{v:.3f}" for v in fit.device_intercept_ms)
    )  # fmt: skip
    head = exit_head_line(samples, trace, fit, exit_device)
    print(head)
    idle_line = idle_compute_line(runs)
    if args.cold_start:
        idle_line += "; " + cold_start_line(fit)
    print(idle_line)
    before = model_for(config, trace, None)
    after = model_for(config, trace, profile)
    errors = error_table(runs, trace, before, after)
    print("\nPer-exit latency, live vs the simulator's model on the same requests:\n")
    print(errors)
    result: dict[str, Any] = {"profile": profile}
    spread = ""
    if args.timeline:
        from experiments.live_plots import timeline_figure

        undecided = {"cluster": {**profile["cluster"], "decision_ms": 0.0}}
        series = service_timeline(
            [*runs, *evaluated], model_for(config, trace, undecided), len(runs)
        )
        timeline_figure(series, args.timeline)
        spread = window_spread_line(series)
        print(f"\n{spread}; timeline -> {args.timeline}")
    if evaluated:
        measured = measured_decision_ms(decision_runs)
        table = comparison_table(
            evaluated, runs[0], profile, measured, first_stage_busy_ms(runs), args.trust
        )
        in_sample = in_sample_note(args.records, args.evaluate)
        if in_sample:
            table += f"\n\n{in_sample}"
        print("\nSimulator vs live (each policy's runs pooled; same seeds, policy and images):\n")
        print(table)
        block = (
            f"Cluster profile `{args.name}` fitted to {_runs_of(runs)}: "
            f"`{json.dumps(profile['cluster'])}`\n\n"
            f"The calibration runs' {head[0].lower() + head[1:]}\n\n"
            f"The calibration runs' {idle_line}\n\n"
            "Per-exit latency of the calibration requests, live vs the simulator's model at the "
            f"same imposed levels:\n\n{errors}\n\n"
            "Live runs vs the simulator on the fitted cluster (each policy's runs pooled; the "
            "simulator replays each run's seed, arrivals, policy and images; "
            f"{_pooling(profile)}):\n\n"
            f"{table}\n"
        )
        if spread:
            block += f"\nThe host during these runs: {spread[0].lower() + spread[1:]}.\n"
        if args.table:
            atomic_write_text(args.table, block)
        if args.readme:
            from experiments.readme import update_block

            update_block("sim-vs-live", block)
        result["table"] = table
    return result


if __name__ == "__main__":
    main()
