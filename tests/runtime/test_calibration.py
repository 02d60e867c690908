"""Calibration recovers the parameters that generated the measurements, and records round-trip."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from distree_env.runtime.calibration import (
    StageSamples,
    carried_decision_ms,
    fit_cluster,
    fit_cold_start,
    fit_handover,
    handover_gaps,
    per_exit_latency,
    stage_samples,
)
from distree_env.runtime.records import RequestRecord, RunRecord, load_run, write_run

FLOPS = np.array([[2e6, 2e6], [4e6, 4e6], [1e6, 1e6]])  # [K, D]
BYTES = np.array([[3072 + 128.0, 3072 + 128], [256.0, 256], [512.0, 512]])
MESSAGES = np.array([[2.0, 2], [1, 1], [1, 1]])  # no decision message after stage 0
EXIT_FLOPS = np.array([2e5, 2e5, 4e5])  # [K], run on device 0's share (parallel)
EXIT_DEVICE = np.zeros(3, dtype=np.int64)


def _model(overrides, k, compute, bandwidth):
    cl = overrides["cluster"]
    rate = np.array(cl["devices"]) / 1e3  # FLOP/ms
    bw = np.array(cl["links"]) / 1e3  # B/ms
    latency = MESSAGES[k] * cl["link_latency_ms"]
    per = FLOPS[k] / rate / compute + BYTES[k] / bw / bandwidth + latency
    head = (EXIT_FLOPS[k] / rate[0] + cl["exit_overhead_ms"]) / compute[:, 0]
    return per.max(axis=1) + head


def _samples(rng, n=300, cold=None, tau=40.0) -> StageSamples:
    """Stages measured on a known cluster; with ``cold`` (``[K]`` ms each for the slowest device
    and the head at full speed) requests that idled longer ran slower."""
    true_rate = np.array([2e9, 1e9]) / 1e3
    true_bw, lat, overhead, head_fixed = np.array([5e6, 2e6]) / 1e3, 1.5, 0.7, 0.4
    k = rng.integers(0, 3, n)
    comp = rng.choice([1.0, 0.5, 0.2], size=(n, 2))
    bw = rng.choice([1.0, 0.4, 0.1], size=(n, 2))
    busy = FLOPS[k] / true_rate + 0.05 + rng.normal(0, 0.01, (n, 2))
    transfer = BYTES[k] / true_bw / bw + MESSAGES[k] * lat + rng.normal(0, 0.01, (n, 2))
    # the exit head: its FLOPs plus a fixed framework time, stalled by device 0's share
    head = (EXIT_FLOPS[k] / true_rate[0] + head_fixed) / comp[:, 0] + rng.normal(0, 0.01, n)
    idle = rng.uniform(0.0, 200.0, n)
    stage = (busy / comp + transfer).max(axis=1) + head + overhead
    if cold is not None:  # stretched by the exit device's share, as the simulator has it
        extra = cold[k] * (1.0 - np.exp(-idle / tau))
        busy = busy + extra[:, None]
        head = head + extra / comp[:, 0]
        stage = stage + 2 * extra / comp[:, 0]
    decision = 0.2 + rng.exponential(0.05, n)
    return StageSamples(k, busy, transfer, stage, comp, bw, decision, head, idle)


def test_fit_recovers_rates_bandwidth_latency_overhead_and_decision_time():
    s = _samples(np.random.default_rng(0))
    fit = fit_cluster(s, FLOPS, BYTES, MESSAGES, np.array([1e6, 1e6]), _model, EXIT_FLOPS,
                      EXIT_DEVICE, cold_start=False)  # fmt: skip
    # the rate reproduces the total busy time (the 0.05 ms per stage included) ...
    total = [FLOPS[s.k, d].sum() / s.busy_ms[:, d].sum() * 1e3 for d in range(2)]
    assert fit.device_flops == pytest.approx(total)
    assert fit.device_flops == pytest.approx([2e9, 1e9], rel=0.06)
    # ... and the line fit sees the fixed part
    assert fit.device_intercept_ms == pytest.approx([0.05, 0.05], abs=0.01)
    assert fit.link_bytes_per_s == pytest.approx([5e6, 2e6], rel=0.02)
    assert fit.link_latency_ms == pytest.approx(1.5, abs=0.02)
    # the head's fixed time stretches with device 0's share; the rest of the stage does not
    assert fit.exit_overhead_ms == pytest.approx(0.4, abs=0.03)
    assert fit.stage_overhead_ms == pytest.approx(0.7, abs=0.1)  # the decision kept apart
    assert fit.decision_ms == pytest.approx(0.25, abs=0.02)
    cl = fit.overrides()["cluster"]
    assert set(cl) == {
        "devices", "links", "link_latency_ms", "stage_overhead_ms", "exit_overhead_ms",
        "decision_ms", "handover_ms", "stall_probability", "stall_mean_ms", "cold_start_ms",
        "cold_start_tau_ms",
    }  # fmt: skip
    assert cl["cold_start_ms"] == []
    with_cold = fit_cluster(s, FLOPS, BYTES, MESSAGES, np.array([1e6, 1e6]), _model, EXIT_FLOPS,
                            EXIT_DEVICE)  # fmt: skip
    assert max(with_cold.cold_start_ms) < 0.02  # nothing here grows with idling


def test_fit_recovers_the_cold_start_and_keeps_the_warm_rates():
    """Stages after long idles slower by 0.6 / 0.2 / 0.1 ms (devices, and the head again at full
    speed), cooling with tau = 40 ms: the fit finds tau and the per-stage times, and the device
    rates and the head's fixed time are the warm ones."""
    cold = np.array([0.6, 0.2, 0.1])
    s = _samples(np.random.default_rng(0), n=3000, cold=cold)
    fit = fit_cluster(s, FLOPS, BYTES, MESSAGES, np.array([1e6, 1e6]), _model, EXIT_FLOPS,
                      EXIT_DEVICE)  # fmt: skip
    assert fit.cold_start_tau_ms == 40.0
    assert fit.cold_device_ms == pytest.approx(cold, abs=0.01)
    assert fit.cold_start_ms == pytest.approx(2 * cold, abs=0.02)
    assert fit.device_flops == pytest.approx([2e9, 1e9], rel=0.06)
    assert fit.exit_overhead_ms == pytest.approx(0.4, abs=0.03)
    assert fit.stage_overhead_ms == pytest.approx(0.7, abs=0.1)
    plain = fit_cluster(s, FLOPS, BYTES, MESSAGES, np.array([1e6, 1e6]), _model, EXIT_FLOPS,
                        EXIT_DEVICE, cold_start=False)  # fmt: skip
    assert plain.cold_start_ms == () and plain.device_flops[0] < 0.95 * fit.device_flops[0]
    few = _samples(np.random.default_rng(1), n=60, cold=cold)  # about 20 stages per exit
    device, head, _ = fit_cold_start(few, EXIT_DEVICE, 3)
    assert not device.any() and not head.any()  # too few to tell a slope from noise
    early = dataclasses.replace(s, **{f: getattr(s, f)[s.k < 2] for f in (
        "k", "busy_ms", "transfer_ms", "stage_ms", "compute", "bandwidth", "decision_ms",
        "exit_ms", "idle_ms")})  # fmt: skip
    device, head, _ = fit_cold_start(early, EXIT_DEVICE, 3)  # no request reached stage 2
    assert device.shape == head.shape == (3,) and device[2] == head[2] == 0.0
    assert device[:2] == pytest.approx(cold[:2], abs=0.02)


def test_another_policy_is_charged_its_own_inference():
    # live 0.3 ms with a 0.05 ms rule; a 0.45 ms network costs 0.4 ms more per decision
    assert carried_decision_ms(0.3, 0.05, 0.45) == pytest.approx(0.7)
    assert carried_decision_ms(0.3, 0.05, 0.05) == pytest.approx(0.3)
    assert carried_decision_ms(0.1, 0.5, 0.05) == 0.0  # never negative


def test_fit_refuses_stages_without_measured_work():
    s = _samples(np.random.default_rng(1))
    bad = dataclasses.replace(s, busy_ms=np.zeros_like(s.busy_ms))
    with pytest.raises(ValueError, match="device 0"):
        fit_cluster(
            bad, FLOPS, BYTES, MESSAGES, np.array([1e6, 1e6]), _model, EXIT_FLOPS, EXIT_DEVICE
        )


def test_fit_keeps_the_prior_bandwidth_when_sizes_do_not_vary():
    s = _samples(np.random.default_rng(2))
    full = dataclasses.replace(s, bandwidth=np.ones_like(s.bandwidth))
    same = np.full_like(BYTES, 1000.0)
    fit = fit_cluster(full, FLOPS, same, MESSAGES, np.array([7e6, 7e6]), _model, EXIT_FLOPS,
                      EXIT_DEVICE)  # fmt: skip
    assert fit.link_bytes_per_s == pytest.approx([7e6, 7e6])


def test_per_exit_latency():
    out = per_exit_latency(np.array([0, 0, 2]), np.array([1.0, 3.0, 10.0]), 3)
    assert out[0] == 2.0 and math.isnan(out[1]) and out[2] == 10.0


def test_records_round_trip_atomically(tmp_path):
    two = [[0.5, 0.6], [0.7, 0.8]]
    rec = RequestRecord(
        index=0, sample=3, label=1, arrival_ms=0.5, start_ms=0.5, end_ms=4.5, queue_wait_ms=0.0,
        latency_ms=4.0, exit=1, prediction=1, correct=True,
        stage_ms=[1.0, 2.0], exit_ms=[0.1, 0.1], decision_ms=[0.2, 0.2], compute_ms=two,
        busy_ms=two, transfer_ms=two, compute_level=[[1.0, 1.0]] * 2,
        bandwidth_level=[[1.0, 0.5]] * 2,
    )  # fmt: skip
    dropped = RequestRecord(index=1, sample=4, label=2, arrival_ms=1.0, dropped=True)
    path = tmp_path / "run.json"
    write_run(path, RunRecord({"status": "complete"}, [rec, dropped]))
    back = load_run(path)
    assert back.requests[0] == rec
    assert back.requests[1].dropped and math.isnan(back.requests[1].latency_ms)
    samples = stage_samples([back])
    assert samples.k.tolist() == [0, 1]
    assert samples.stage_ms.tolist() == [1.0, 2.0] and samples.decision_ms.tolist() == [0.2, 0.2]
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="bad.json"):
        load_run(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("change", "needle"),
    [({"requests": 5}, "'requests' a list"), ({"meta": "x"}, "'meta' must be an object"),
     ({"exit": "abc"}, "exit=abc is not a int"), ({"busy_ms": [["x"]]}, "busy_ms"),
     ({"correct": 1}, "correct=1 is not a bool"), ({"deep": True}, "nested too deeply"),
     ({"exit": -2}, "exit=-2"), ({"exit": 0, "dropped": True}, "exit=0 (dropped=True)"),
     ({"exit": 0}, "stage_ms has 0 entries; a request answered at exit 0 has 1"),
     ({"answered": {"latency_ms": 1e308}}, "latency_ms=1e+308"),
     ({"answered": {"queue_wait_ms": -1.0}}, "queue_wait_ms=-1.0"),
     ({"answered": {"busy_ms": [[0.5, -0.1], [0.7, 0.8]]}}, "busy_ms"),
     ({"answered": {"transfer_ms": [[0.5, -0.01], [0.7, 0.8]]}}, "transfer_ms")],
)  # fmt: skip
def test_odd_records_are_one_line_naming_the_file_and_field(tmp_path, change, needle):
    path = tmp_path / "odd.json"
    write_run(path, RunRecord({"status": "complete"}, [RequestRecord(0, 0, 1, 0.0)]))
    data = json.loads(path.read_text())
    if "answered" in change:  # a possible answered request, then one field made impossible
        two = [[0.5, 0.6], [0.7, 0.8]]
        data["requests"][0].update(
            start_ms=0.0, end_ms=4.0, queue_wait_ms=0.0, latency_ms=4.0, exit=1,
            stage_ms=[1.0, 2.0], exit_ms=[0.1, 0.1], decision_ms=[0.2, 0.2], compute_ms=two,
            busy_ms=two, transfer_ms=two, compute_level=two, bandwidth_level=two,
        )  # fmt: skip
        # a round trip less a float32 compute time may round a hair below 0: still fine
        data["requests"][0]["transfer_ms"] = [[0.5, -1e-6], [0.7, 0.8]]
        (tmp_path / "fine.json").write_text(json.dumps(data))
        assert load_run(tmp_path / "fine.json").requests[0].exit == 1  # fine before the change
        data["requests"][0].update(change["answered"])
        path.write_text(json.dumps(data))
    elif "deep" in change:
        nested = "[" * 100_000 + "]" * 100_000
        path.write_text(path.read_text().replace('"meta":{', f'"meta":{{"x":{nested},', 1))
    elif set(change) <= {"requests", "meta"}:
        path.write_text(json.dumps({**data, **change}))
    else:
        data["requests"][0].update(change)
        path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="odd.json") as exc:
        load_run(path)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_the_replay_starts_a_recurrent_policys_memory_where_evaluate_does(monkeypatch):
    """The replay runs the live run as one long episode, yet hands the policy the
    ``episode_start`` flags of the scenario's own episodes, those of ``agents.evaluate`` (and of
    the live aggregator, which uses the same ``starts_episode``)."""
    from agents import evaluate
    from distree_env.config import build_config
    from experiments import calibrate_cluster, run_live

    class Recorder:
        def __init__(self) -> None:
            self.starts: list[bool] = []

        def predict(self, obs, state=None, episode_start=None, deterministic=True):
            self.starts.append(bool(np.asarray(episode_start).reshape(-1)[0]))
            return np.ones(len(obs), dtype=np.int64), state  # exit at once: one step a request

    for per_episode in (1, 3):
        overrides = {"trace": "synthetic:n=200", "requests_per_episode": per_episode}
        config = build_config(None, "steady-stream", overrides)
        live, offline = Recorder(), Recorder()
        monkeypatch.setattr(run_live, "make_policy", lambda *a, live=live: live)
        run = RunRecord({"args": {"policy": "x", "seed": 3}}, [])
        whole_run = config.replace({"requests_per_episode": 9})
        calibrate_cluster._simulate_once(run, whole_run, per_episode, "x", False)
        evaluate(offline, config, n_requests=9, seed=3, num_envs=1)
        assert live.starts == offline.starts[: len(live.starts)]
        assert sum(live.starts) == 9 // per_episode


def test_a_request_with_missing_or_extra_fields_names_them(tmp_path):
    path = tmp_path / "odd.json"
    write_run(path, RunRecord({"status": "complete"}, [RequestRecord(0, 0, 1, 0.0)]))
    data = json.loads(path.read_text())
    del data["requests"][0]["exit"]
    data["requests"][0]["colour"] = "red"
    path.write_text(json.dumps(data))
    with pytest.raises(
        ValueError, match="missing field\\(s\\) exit; unexpected field\\(s\\) colour$"
    ):
        load_run(path)


def test_handover_fit_recovers_the_base_gap_and_the_stalls():
    """Requests back to back (each arrived before the previous ended): gaps of 0.2 ms, one in
    twenty stalled by an exponential pause of mean 40 ms; an idle gap (arrival after the end)
    does not count."""
    rng = np.random.default_rng(0)
    n, t, requests = 4000, 0.0, []
    stalled = rng.random(n) < 0.05
    for i in range(n):
        gap = 0.2 + (20.0 + rng.exponential(40.0) if stalled[i] else 0.0)
        if i % 100:  # waiting since before the previous request ended
            arrival, start = t - 1.0, t + gap
        else:  # every 100th: the devices were idle when it arrived
            arrival = start = t + 50.0
        requests.append(RequestRecord(index=i, sample=i, label=0, arrival_ms=arrival,
                                      start_ms=start, end_ms=start + 5.0, exit=0))  # fmt: skip
        t = start + 5.0
    gaps = handover_gaps([RunRecord(meta={}, requests=requests)])
    assert gaps.size < n - 1 - 30  # the idle starts are left out
    fit = fit_handover(gaps)
    assert fit["handover_ms"] == pytest.approx(0.2, abs=1e-9)
    assert fit["stall_probability"] == pytest.approx(0.05, abs=0.01)
    assert fit["stall_mean_ms"] == pytest.approx(60.0, rel=0.1)
    assert fit_handover(np.array([])) == {
        "handover_ms": 0.0,
        "stall_probability": 0.0,
        "stall_mean_ms": 0.0,
    }


def test_simulated_prediction_pools_stall_realisations():
    """With stalls in the profile, the simulator's figures pool several stall realisations of
    the live run's seed (same arrivals); without, one run. Stalls only lengthen waits."""
    from distree_env.config import EnvConfig
    from experiments.calibrate_cluster import STALL_REALISATIONS, simulate

    served = [RequestRecord(index=i, sample=i, label=0, arrival_ms=0.0) for i in range(60)]
    run = RunRecord(meta={"args": {"seed": 4}}, requests=served)
    base = EnvConfig.scenario("bursty-stream", trace="synthetic")
    plain = simulate([run], [base], "last-exit", False)
    stalls = base.replace({"cluster": {"stall_probability": 0.3, "stall_mean_ms": 20.0}})
    pooled = simulate([run], [stalls], "last-exit", False)
    assert plain["requests"] == pooled["requests"] == 60 and STALL_REALISATIONS > 1
    assert pooled["latency_mean_ms"] > plain["latency_mean_ms"]
    # a slower controller answers later (it pays on every stage)
    slow = simulate([run], [base], "last-exit", False, decision_ms=5.0)
    assert slow["latency_mean_ms"] > plain["latency_mean_ms"] + 5.0
    # runs of one policy pool: two chunks of 60 make one row of 120
    other = RunRecord(meta={"args": {"seed": 5}}, requests=served)
    both = simulate([run, other], [base, base], "last-exit", False)
    alone = simulate([other], [base], "last-exit", False)
    assert both["requests"] == 120
    assert both["latency_mean_ms"] == pytest.approx(
        (plain["latency_mean_ms"] + alone["latency_mean_ms"]) / 2
    )
    assert both["run_mean_ms"] == pytest.approx(
        [plain["latency_mean_ms"], alone["latency_mean_ms"]]
    )
    assert pooled["run_mean_ms"] == pytest.approx([pooled["latency_mean_ms"]])


def test_the_run_spread_note_gives_each_chunks_error_of_the_mean_latency():
    """Two chunks served in 10 and 20 ms on average live, 11 and 18 ms simulated: +10% and
    -10%; a dropped request does not count."""
    from experiments.calibrate_cluster import run_spread_note

    def chunk(latencies):
        reqs = [RequestRecord(index=i, sample=i, label=0, arrival_ms=0.0, latency_ms=lat)
                for i, lat in enumerate(latencies)]  # fmt: skip
        reqs.append(RequestRecord(index=9, sample=9, label=0, arrival_ms=0.0, dropped=True))
        return RunRecord(meta={}, requests=reqs)

    note = run_spread_note([chunk([5.0, 15.0]), chunk([20.0])], {"run_mean_ms": [11.0, 18.0]})
    assert "simulated mean latency is -10.0% to +10.0% off the live one" in note


def test_the_simulated_config_replays_the_live_runs_arrivals_on_the_fitted_cluster():
    """After calibration the simulator runs the fitted cluster; a rate given as a utilisation
    would follow its service time, so the live run's rate is pinned: same arrival times."""
    from distree_env.config import EnvConfig
    from distree_env.runtime.schedule import live_scenario
    from experiments.calibrate_cluster import simulated_config

    live = EnvConfig.scenario("steady-stream", trace="synthetic")
    run = RunRecord(meta={"config": live.to_dict(), "args": {"seed": 3}})
    profile = {"cluster": {"device_profile": "jetson-nano", "stage_overhead_ms": 3.0}}
    sim = simulated_config(run, profile)
    assert sim.cluster.stage_overhead_ms == 3.0 and sim.arrivals.utilisation is None
    assert np.array_equal(
        live_scenario(sim, 3, 200).arrivals_ms, live_scenario(live, 3, 200).arrivals_ms
    )
    unpinned = live.replace(profile)  # the same profile with the utilisation kept: other times
    assert not np.array_equal(
        live_scenario(unpinned, 3, 200).arrivals_ms, live_scenario(live, 3, 200).arrivals_ms
    )


def test_idle_compute_line_bands_stage_zero_by_idle_time_before_the_request():
    """Requests started after 1, 5 and 100 ms of idle time (the first after 1 ms of the run's
    clock), with stage 0 taking 1, 2 and 4 ms, and one dropped: each lands in its band with its
    mean."""
    from experiments.calibrate_cluster import idle_compute_line

    requests, t = [], 0.0
    for i, (idle, busy) in enumerate([(1.0, 1.0), (5.0, 2.0), (100.0, 4.0), (1.0, 1.0)] * 3):
        start = t + idle
        requests.append(RequestRecord(index=i, sample=i, label=0, arrival_ms=start,
                                      start_ms=start, end_ms=start + 3.0, exit=0,
                                      stage_ms=[3.0], exit_ms=[0.5], decision_ms=[0.1],
                                      busy_ms=[[busy, busy]], transfer_ms=[[1.0, 1.0]],
                                      compute_level=[[1.0, 1.0]],
                                      bandwidth_level=[[1.0, 1.0]]))  # fmt: skip
        t = start + 3.0
    requests.insert(2, RequestRecord(index=99, sample=0, label=0, arrival_ms=5.0, dropped=True))
    samples = stage_samples([RunRecord(meta={}, requests=requests)])
    assert samples.idle_ms.tolist() == [1.0, 5.0, 100.0, 1.0] * 3
    line = idle_compute_line([RunRecord(meta={}, requests=requests)])
    assert "idle <= 2 ms: 1.00 ms (6)" in line
    assert "idle 2-10 ms: 2.00 ms (3)" in line
    assert "idle 10-40 ms" not in line
    assert "idle > 40 ms: 4.00 ms (3)" in line


def test_service_line_compares_live_and_model_service_by_idle_band():
    """Service is latency less queue wait; the model's is its stage times at the same levels for
    the same idle time (here 1 ms per stage, plus 1 ms after a long idle)."""
    from experiments.calibrate_cluster import service_line, service_ms, service_ratio

    requests, t = [], 0.0
    for i, idle in enumerate([1.0, 100.0, 1.0, 100.0]):
        start = t + idle
        requests.append(RequestRecord(index=i, sample=i, label=0, arrival_ms=start - 0.5,
                                      start_ms=start, end_ms=start + 2.5, queue_wait_ms=0.5,
                                      latency_ms=3.0, exit=1,
                                      compute_level=[[1.0, 1.0]] * 2,
                                      bandwidth_level=[[1.0, 1.0]] * 2))  # fmt: skip
        t = start + 2.5

    def model(k, compute, bandwidth, idle_ms=0.0):
        return np.ones(len(k)) + (idle_ms > 50.0) / len(k)

    runs = [RunRecord(meta={}, requests=requests)]
    service = service_ms(runs, model)
    line = service_line(service)
    assert "idle <= 2 ms: 2.50/2.00 ms (-20.0%)" in line
    assert "idle > 40 ms: 2.50/3.00 ms (+20.0%)" in line
    # over all requests the model's 2 + 3 + 2 + 3 ms against 4 x 2.5 ms live: as fast; a model
    # of 1 ms per stage whatever the idle time: live is 25% slower
    assert service_ratio(service) == pytest.approx(1.0)
    flat = service_ratio(service_ms(runs, lambda k, c, b, i=0.0: np.ones(len(k))))
    assert flat == pytest.approx(1.25)


def test_a_slowed_profile_makes_every_service_time_of_the_model_longer_by_its_factor():
    """A fitted profile on a host 1.3 times slower: every stage at every level and idle time
    takes 1.3 times as long in the simulator's model (cold start, exit head and decision
    included), and the stalls' probability and the cold start's time constant stay."""
    from distree_env.config import EnvConfig
    from distree_env.traces import resolve_trace
    from experiments.calibrate_cluster import model_for, slowed_profile

    config = EnvConfig.scenario("steady-stream", trace="synthetic")
    trace = resolve_trace(config.trace)
    profile = {"cluster": {"devices": [2e9] * trace.num_devices, "links": [3e6] * trace.num_devices,
                           "link_latency_ms": 1.5, "stage_overhead_ms": 0.4,
                           "exit_overhead_ms": 0.3, "decision_ms": 0.2, "handover_ms": 0.02,
                           "stall_probability": 0.01, "stall_mean_ms": 7.0,
                           "cold_start_ms": [0.3] + [0.05] * (trace.num_exits - 1),
                           "cold_start_tau_ms": 10.0}}  # fmt: skip
    slowed = slowed_profile(profile, 1.3)
    assert slowed["cluster"]["stall_probability"] == 0.01
    assert slowed["cluster"]["cold_start_tau_ms"] == 10.0
    assert slowed["cluster"]["stall_mean_ms"] == pytest.approx(9.1)
    fitted, slow = model_for(config, trace, profile), model_for(config, trace, slowed)
    k = np.arange(trace.num_exits)
    rng = np.random.default_rng(0)
    for idle in (0.0, 5.0, 200.0):
        levels = (rng.uniform(0.2, 1.0, (k.size, trace.num_devices)) for _ in range(2))
        c, b = next(levels), next(levels)
        np.testing.assert_allclose(slow(k, c, b, idle), 1.3 * fitted(k, c, b, idle), rtol=1e-9)


def test_the_matched_service_note_gives_the_errors_left_and_the_queues_amplification():
    """Served 10% more slowly, the simulated mean latency moved from 50 to 60 ms: 2.0% of
    latency per 1% of service; below half a percent of difference no slope is printed."""
    from experiments.calibrate_cluster import matched_service_note

    live = {"exit_latency_ms": np.array([np.nan, 20.0, 62.0]), "latency_p95_ms": 150.0}
    sim = {"latency_mean_ms": 50.0}
    matched = {"exit_latency_ms": np.array([np.nan, 21.0, 60.0]), "latency_p95_ms": 120.0,
               "latency_mean_ms": 60.0}  # fmt: skip
    note = matched_service_note(sim, matched, live, 1.1)
    assert "the fitted model's x1.100" in note
    assert "per-exit error is at most 5.0% and its p95 error 20.0%" in note
    assert "each 1% of service time moves its mean latency by 2.0%" in note
    assert "moves its mean latency" not in matched_service_note(sim, matched, live, 1.004)


def _request(i, start, exit_k, busy, stage_ms=3.0, decision_ms=0.5, devices=2):
    """A served request: every stage ``stage_ms`` + ``decision_ms`` long, each device busy for
    ``busy[k]`` (NaN: not in the stage), ending after its last decision."""
    n = exit_k + 1
    return RequestRecord(index=i, sample=i, label=0, arrival_ms=start, start_ms=start,
                         end_ms=start + n * (stage_ms + decision_ms), exit=exit_k,
                         stage_ms=[stage_ms] * n, exit_ms=[0.5] * n,
                         decision_ms=[decision_ms] * n, busy_ms=[list(b) for b in busy[:n]],
                         transfer_ms=[[1.0] * devices] * n,
                         compute_level=[[1.0] * devices] * n,
                         bandwidth_level=[[1.0] * devices] * n)  # fmt: skip


def test_stage0_gap_counts_from_each_devices_last_stage_not_from_the_request_end():
    """Parallel: request 0 runs stages 0-2 (dispatched at 0, 3.5, 7), request 1 starts at 12
    after exit 0, request 2 at 16. A device's gap ends its last stage at dispatch + busy: 12 - (7
    + 0.5) = 4.5, 16 - (12 + 1.5) = 2.5; the request-level idle would be 1.5 and 0.5. Pipeline:
    only device 0 runs stage 0, and its own last stage 0 counts."""
    from distree_env.runtime.calibration import stage0_after_gap

    busy = [[1.0, 1.0], [0.8, 0.8], [0.5, 0.5]]
    requests = [_request(0, 0.0, 2, busy), _request(1, 12.0, 0, [[1.5, 1.5]]),
                RequestRecord(index=9, sample=0, label=0, arrival_ms=13.0, dropped=True),
                _request(2, 16.0, 0, [[2.0, 2.0]])]  # fmt: skip
    gaps, stage0 = stage0_after_gap(RunRecord(meta={}, requests=requests))
    np.testing.assert_allclose(gaps, [4.5, 2.5])
    np.testing.assert_allclose(stage0, [1.5, 2.0])
    nan = math.nan
    pipe = [[1.0, nan], [nan, 0.8]]
    requests = [_request(0, 0.0, 1, pipe), _request(1, 9.0, 0, [[1.2, nan]])]
    gaps, stage0 = stage0_after_gap(RunRecord(meta={}, requests=requests))
    np.testing.assert_allclose(gaps, [8.0])  # 9 - (0 + 1.0): device 0's stage 0
    np.testing.assert_allclose(stage0, [1.2])


def test_device_speed_table_groups_runs_by_policy_and_load():
    """Two runs of one policy and load pool into one row; another load is its own row; each
    stage 0 lands in the band of its gap; the duty is the busy share of the served span (3
    stages of 1 or 3 ms in 83.5 ms: 0.036 and 0.108, mean 0.072)."""
    from experiments.device_speed import speed_table

    def run(policy, utilisation, stage0):
        meta = {
            "args": {"policy": policy},
            "config": {"arrivals": {"rate_per_s": None, "utilisation": utilisation}},
        }
        starts = [0.0, 20.0, 80.0]  # gaps 20 - b and 60 - b: the 8-20 and > 40 ms bands
        reqs = [_request(i, s, 0, [[stage0, stage0]]) for i, s in enumerate(starts)]
        return RunRecord(meta=meta, requests=reqs)

    runs = [run("last-exit", 0.7, 1.0), run("x", 1.4, 2.0), run("last-exit", 0.7, 3.0)]
    table = speed_table(runs)
    lines = table.splitlines()
    assert lines[0].startswith("| policy @ load | runs | device duty | stage 0 ms, idle <= 5 ms")
    assert len(lines) == 4
    row = "| last-exit @ utilisation 0.7 | 2 | 0.072 | - | - | 2.000 (2) | - | 2.000 (2) |"
    assert lines[2] == row
    assert lines[3].startswith("| x @ utilisation 1.4 | 1 | ")


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--table", "t.md"], "--table"),
        (["--readme"], "--readme"),
        (["--decision-runs", "d.json"], "--decision-runs"),
    ],
)
def test_comparison_options_without_evaluate_are_refused_before_any_work(
    tmp_path, capsys, extra, flag
):
    from experiments import calibrate_cluster

    with pytest.raises(SystemExit) as info:
        calibrate_cluster.main([str(tmp_path / "cal.json"), *extra])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1
    assert f"{flag}: only allowed with --evaluate" in err


@pytest.mark.parametrize("option", ["--evaluate", "--decision-runs"])
def test_an_unreadable_record_to_evaluate_fails_before_the_fit_writes_anything(
    tmp_path, capsys, option
):
    from experiments import calibrate_cluster

    good, bad = tmp_path / "cal.json", tmp_path / "bad.json"
    meta = {"config": {}, "args": {"policy": "last-exit", "seed": 0}}
    write_run(good, RunRecord({"status": "complete", **meta}, [RequestRecord(0, 0, 1, 0.0)]))
    bad.write_text("not json")
    profile = tmp_path / "profile.json"
    argv = [str(good), "--out", str(profile)]
    argv += ["--evaluate", str(bad)] if option == "--evaluate" else ["--evaluate", str(good)]
    argv += ["--decision-runs", str(bad)] if option == "--decision-runs" else []
    with pytest.raises(SystemExit) as info:
        calibrate_cluster.main(argv)
    captured = capsys.readouterr()
    assert info.value.code == 2 and "bad.json" in captured.err and captured.out == ""
    assert not profile.exists()


@pytest.mark.parametrize(
    ("meta", "requests", "needle"),
    [
        ({"status": "failed"}, [RequestRecord(0, 0, 1, 0.0)], "status 'failed'"),
        ({"status": "running"}, [], "status 'running'"),
        ({"status": "complete"}, [RequestRecord(0, 0, 1, 0.0, dropped=True)], "no served"),
        ({"status": "complete", "net": {"topology": "pipeline", "num_devices": 4}},
         [RequestRecord(0, 0, 1, 0.0)], "different networks (parallel on 2 devices, depth None"),
    ],
)  # fmt: skip
def test_records_unfit_to_fit_or_compare_are_one_line(tmp_path, capsys, meta, requests, needle):
    """A killed or failed run, one that served nothing (it crashed the comparison), or runs of
    two networks (a bare numpy error) are refused, naming the file."""
    from experiments import calibrate_cluster

    args = {"config": {}, "args": {"policy": "last-exit", "seed": 0}}
    good = tmp_path / "cal.json"
    net = {"topology": "parallel", "num_devices": 2}
    write_run(
        good, RunRecord({"status": "complete", "net": net, **args}, [RequestRecord(0, 0, 1, 0.0)])
    )
    odd = tmp_path / "odd.json"
    write_run(odd, RunRecord({"net": net, **args, **meta}, requests))
    with pytest.raises(SystemExit) as exc:
        calibrate_cluster.main([str(good), "--evaluate", str(odd), "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and needle in err and "odd.json" in err, err
    assert err.strip().count("\n") == 0 and not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    ("meta", "needle"),
    [({"status": "failed"}, "status 'failed'"), ({"status": "complete", "config": None},
                                                 "missing or malformed meta.config")],
)  # fmt: skip
def test_device_speed_takes_only_complete_records(tmp_path, capsys, meta, needle):
    from experiments import device_speed

    path = tmp_path / "odd.json"
    args = {"config": {}, "args": {"policy": "last-exit", "seed": 0}}
    write_run(path, RunRecord({**args, **meta}, [RequestRecord(0, 0, 1, 0.0)]))
    with pytest.raises(SystemExit) as exc:
        device_speed.main([str(path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and needle in err and "odd.json" in err, err


def test_a_record_without_its_config_or_policy_is_one_line(tmp_path, capsys):
    from experiments import calibrate_cluster

    path = tmp_path / "bare.json"
    write_run(path, RunRecord({"status": "complete", "args": {"seed": 1}}, []))
    with pytest.raises(SystemExit) as exc:
        calibrate_cluster.main([str(path), "--out", str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "meta.config, meta.args.policy" in err
    assert not (tmp_path / "p.json").exists()


def test_the_timeline_puts_each_request_at_its_wall_clock_time_with_its_service_ratio():
    """Two runs started 5 s apart: each request sits at its run's start plus its own; its ratio
    is the live service less the policy's decisions over the model's (decisions left out)."""
    from experiments.calibrate_cluster import service_timeline, window_spread_line

    def run(policy, started, stage_ms):
        reqs = [_request(i, 1000.0 * i, 1, [[1.0, 1.0]] * 2, stage_ms=stage_ms, decision_ms=0.5)
                for i in range(20)]  # fmt: skip
        for r in reqs:  # served on arrival
            r.queue_wait_ms, r.latency_ms = 0.0, r.end_ms - r.start_ms
        meta = {"args": {"policy": policy}, "started_unix": started}
        return RunRecord(meta=meta, requests=reqs)

    def model(k, compute, bandwidth, idle_ms=0.0):  # 2 ms per stage
        return np.full(len(k), 2.0)

    series = service_timeline([run("a", 100.0, 3.0), run("b", 105.0, 2.0)], model, 1)
    (pa, cal_a, start_a, ratio_a), (pb, cal_b, start_b, ratio_b) = series
    assert (pa, cal_a, pb, cal_b) == ("a", True, "b", False)
    np.testing.assert_allclose(start_a, np.arange(20.0))
    np.testing.assert_allclose(start_b, 5.0 + np.arange(20.0))
    np.testing.assert_allclose(ratio_a, 1.5)  # (2 x 3.5 - 2 x 0.5) / (2 x 2)
    np.testing.assert_allclose(ratio_b, 1.0)
    # 10-s windows: [0, 10) holds a's 10 and b's 5 (median 1.5), [10, 20) 10 of each (1.25),
    # [20, 25) b's last 5, too few to count
    line = window_spread_line(series)
    assert "median 1.375, 5-95% 1.262-1.488 over 2 windows" in line, line
    few = window_spread_line([(pa, True, start_a[:9], ratio_a[:9])])
    assert "no window of 10 requests" in few


def test_the_timeline_needs_each_runs_start_time(tmp_path, capsys):
    """A record without meta.started_unix cannot be placed in time: one line naming it."""
    from experiments import calibrate_cluster

    path = tmp_path / "cal.json"
    meta = {"status": "complete", "config": {}, "args": {"policy": "last-exit", "seed": 0}}
    write_run(path, RunRecord(meta, [RequestRecord(0, 0, 1, 0.0)]))
    png = tmp_path / "t.png"
    with pytest.raises(SystemExit) as exc:
        calibrate_cluster.main([str(path), "--out", str(tmp_path / "p"), "--timeline", str(png)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "cal.json" in err and "meta.started_unix" in err, err
    assert not png.exists() and not (tmp_path / "p").exists()


def test_runs_both_fitted_and_evaluated_are_called_in_sample(tmp_path):
    from experiments.calibrate_cluster import in_sample_note

    assert in_sample_note(["cal.json"], ["eval.json"]) == ""
    note = in_sample_note([str(tmp_path / "a.json")], [str(tmp_path / "x" / ".." / "a.json")])
    assert "also fitted" in note and "not predicted" in note
