"""Cluster model: cited profiles, the stage-latency formula, resource processes in time."""

from __future__ import annotations

import numpy as np
import pytest

from distree_env import DistrEEEnv, EnvConfig
from distree_env.cluster import (
    DEVICE_PROFILES,
    HSDPA_SPLITS,
    LINK_PROFILES,
    MIN_SHARE,
    LatencyModel,
    ProcessPath,
    ResourcePaths,
    ResourceTimeline,
    stationary_distribution,
)
from distree_env.cluster.resources import hsdpa_shares, load_share_csv
from distree_env.config import ClusterConfig, ProcessConfig

FAST = {"trace": "synthetic:n=200"}


def test_profiles_are_sourced_and_derated():
    for p in (*DEVICE_PROFILES.values(), *LINK_PROFILES.values()):
        assert p.source and 0 < p.derate <= 1
    assert (
        DEVICE_PROFILES["jetson-nano"].effective_flops
        > DEVICE_PROFILES["raspberry-pi-4"].effective_flops
    )
    hsdpa, wifi = LINK_PROFILES["hsdpa-3g"], LINK_PROFILES["wifi-4"]
    assert hsdpa.effective_bandwidth < wifi.effective_bandwidth


def _parallel(**kw):
    args = dict(
        topology="parallel",
        stage_flops=np.array([[1e9, 2e9], [1e9, 1e9]]),
        exit_flops=np.array([1e8, 1e8]),
        transfer_bytes=np.zeros((2, 2)),
        input_bytes=0.0,
        device_flops=np.array([1e10, 1e10]),
        link_bandwidth=np.array([1e6, 1e6]),
        link_latency_s=np.zeros(2),
    )
    args.update(kw)
    return LatencyModel(**args)


def test_parallel_stage_is_slowest_device_plus_exit_on_the_aggregator():
    model = _parallel()
    ones = np.ones((1, 2))
    assert np.allclose(model.all_stages_ms(ones[0], ones[0]), [200 + 10, 100 + 10])
    slow = model.stage_ms(np.array([0]), np.array([[1.0, 0.5]]), ones)
    assert np.allclose(slow, [400 + 10])
    agg = model.stage_ms(np.array([1]), np.array([[0.5, 1.0]]), ones)
    assert np.allclose(agg, [200 + 20])  # device 0 runs the exit head


def test_parallel_pays_input_features_and_the_decision_back():
    model = _parallel(
        transfer_bytes=np.array([[1000.0, 1000.0], [2000.0, 2000.0]]),
        input_bytes=3000.0,
        link_latency_s=np.array([0.002, 0.002]),
        decision_bytes=64.0,
        stage_overhead_ms=0.5,
    )
    ms = model.full_speed_ms()
    # stage 0: compute 200 ms (device 1) + input 3 ms + features 1 ms + 2 messages x 2 ms
    assert np.isclose(ms[0], 200 + 3 + 1 + 4 + 10 + 0.5)
    # stage 1: compute 100 + decision 0.064 + features 2 + 2 messages x 2 ms
    assert np.isclose(ms[1], 100 + 0.064 + 2 + 4 + 10 + 0.5)
    half = model.stage_ms(np.array([0]), np.ones((1, 2)), np.array([[1.0, 0.5]]))
    assert np.isclose(half[0], 200 + 2 * (3 + 1) + 4 + 10 + 0.5)  # the slow link doubles bytes


def test_the_controllers_decision_time_is_paid_on_every_stage():
    from distree_env.config import EnvConfig
    from distree_env.traces import resolve_trace

    cfg = EnvConfig.scenario("isolated", trace="synthetic")
    trace = resolve_trace(cfg.trace)
    plain = LatencyModel.from_config(cfg, trace).full_speed_ms()
    slow = cfg.replace({"cluster": {"stage_overhead_ms": 0.5, "decision_ms": 0.25}})
    assert np.allclose(LatencyModel.from_config(slow, trace).full_speed_ms(), plain + 0.75)


def test_an_exit_heads_fixed_time_stretches_with_its_devices_share():
    from distree_env.config import EnvConfig
    from distree_env.traces import resolve_trace

    cfg = EnvConfig.scenario("isolated", trace="synthetic")
    trace = resolve_trace(cfg.trace)
    d = trace.num_devices
    k = np.arange(trace.num_exits)
    plain = LatencyModel.from_config(cfg, trace)
    headed = LatencyModel.from_config(cfg.replace({"cluster.exit_overhead_ms": 0.4}), trace)
    full, ones = np.ones((k.size, d)), np.ones((k.size, d))
    assert np.allclose(headed.stage_ms(k, full, ones), plain.stage_ms(k, full, ones) + 0.4)
    quarter = full.copy()
    quarter[:, 0] = 0.25  # the exit head's device (parallel) at a quarter of its speed
    extra = headed.stage_ms(k, quarter, ones) - plain.stage_ms(k, quarter, ones)
    assert np.allclose(extra, 0.4 / 0.25)


def test_cold_start_needs_one_entry_per_stage():
    from distree_env.config import EnvConfig
    from distree_env.traces import resolve_trace

    cfg = EnvConfig.scenario("steady-stream", trace="synthetic")
    trace = resolve_trace(cfg.trace)
    with pytest.raises(
        ValueError, match=f"cluster.cold_start_ms has 2 entries .* {trace.num_exits} stages"
    ):
        LatencyModel.from_config(cfg.replace({"cluster.cold_start_ms": [1.0, 2.0]}), trace)
    fitted = cfg.replace({"cluster.cold_start_ms": [1.0] * trace.num_exits})
    assert LatencyModel.from_config(fitted, trace).cold_ms.tolist() == [1.0] * trace.num_exits


def test_pipeline_is_sequential_over_the_receiving_link():
    model = LatencyModel(
        "pipeline",
        np.diag([1e9, 2e9]),
        np.array([0.0, 0.0]),
        np.array([[5000.0, 0.0], [0.0, 0.0]]),
        1000.0,
        np.array([1e10, 1e10]),
        np.array([1e6, 1e6]),
        np.array([0.001, 0.001]),
    )
    ms = model.full_speed_ms()
    assert np.allclose(ms, [100 + 1 + 1, 200 + 5 + 1])
    slow_link1 = model.stage_ms(np.array([1]), np.ones((1, 2)), np.array([[1.0, 0.5]]))
    assert np.isclose(slow_link1[0], 200 + 10 + 1)


def test_markov_pool_matches_stationary_distribution_and_dwell_time():
    spec = ProcessConfig(step_ms=100.0)
    path = ProcessPath.from_config(spec, 2, "time", 10.0, "cluster.compute")
    pool = path.draw(np.random.default_rng(0), 1 << 17)
    pi = stationary_distribution(np.array(spec.transition))
    freq = np.bincount(pool.reshape(-1), minlength=3) / pool.size
    assert np.allclose(freq, pi, atol=0.03)
    # mean dwell in level 0 = step_ms / (1 - P_00) = 1000 ms = 100 ticks
    col = pool[:, 0]
    change = np.flatnonzero(np.diff(col)) + 1
    runs = np.diff(change)
    starts = col[change[:-1]]
    assert 80 < runs[starts == 0].mean() < 120


def test_request_clock_holds_levels_per_request():
    path = ProcessPath.from_config(ProcessConfig(), 1, "request", 10.0, "cluster.compute")
    pool = path.draw(np.random.default_rng(1), 1 << 15)
    # request clock: P_00 = 0.9 per request -> mean run of level 0 is 10 requests
    col = pool[:, 0]
    change = np.flatnonzero(np.diff(col)) + 1
    runs = np.diff(change)
    assert 8 < runs[col[change[:-1]] == 0].mean() < 12


def test_constant_and_iid():
    const = ProcessPath.from_config(ProcessConfig(kind="constant", value=0.3), 2, "time", 10.0, "x")
    assert np.all(const.levels[const.draw(np.random.default_rng(0), 4096)] == 0.3)
    iid = ProcessPath.from_config(ProcessConfig(kind="iid", low=0.2, high=0.6), 3, "time", 10, "x")
    levels = iid.levels[iid.draw(np.random.default_rng(0), 1 << 14)]
    assert levels.min() >= 0.2 and levels.max() <= 0.6 and abs(levels.mean() - 0.4) < 0.02


def test_share_csv_replay(tmp_path):
    path = tmp_path / "shares.csv"
    path.write_text("compute_0,compute_1\n1.0,0.5\n0.25,1.0\n")
    table = load_share_csv(path)
    assert table.tolist() == [[1.0, 0.5], [0.25, 1.0]]
    spec = ProcessConfig(kind="trace", csv=str(path), step_ms=20.0)
    proc = ProcessPath.from_config(spec, 2, "time", 10.0, "cluster.compute")
    pool = proc.levels[proc.draw(np.random.default_rng(0), 10)]
    assert pool.tolist() == [[1.0, 0.5], [1.0, 0.5], [0.25, 1.0], [0.25, 1.0]]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "no data rows"),
        ("0.5,abc\n", "non-numeric"),
        ("0.5\n0.5,0.5\n", "columns"),
        ("0.001\n", "outside"),
        ("nan\n", "outside"),
    ],
)
def test_bad_share_csv(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_share_csv(path)


def test_a_missing_share_csv_names_the_shipped_choice(tmp_path):
    spec = ProcessConfig(kind="trace", csv="hsdpa-bus", step_ms=100.0)
    with pytest.raises(
        ValueError, match=r"cluster.bandwidth.csv='hsdpa-bus': file not found.*'hsdpa'"
    ):
        ProcessPath.from_config(spec, 2, "time", 10.0, "cluster.bandwidth")
    folder = ProcessConfig(kind="trace", csv=str(tmp_path), step_ms=100.0)
    with pytest.raises(ValueError, match="is a directory"):  # an existing path keeps its own error
        ProcessPath.from_config(folder, 2, "time", 10.0, "cluster.bandwidth")


def test_hsdpa_splits_are_disjoint_and_scaled():
    assert not set(HSDPA_SPLITS["val"]) & set(HSDPA_SPLITS["test"])
    for split in HSDPA_SPLITS:
        shares = hsdpa_shares(split, 100.0)
        assert shares.min() >= MIN_SHARE and shares.max() <= 1.0
        assert 0.05 < shares.mean() < 0.4  # about 1-2 Mbit/s of 8
    assert not np.array_equal(hsdpa_shares("val", 100.0)[:500], hsdpa_shares("test", 100.0)[:500])


def test_cellular_replays_the_chosen_split():
    val = EnvConfig.scenario("cellular", **FAST)
    test = val.replace({"cluster.bandwidth.split": "test"})
    a, b = DistrEEEnv(val), DistrEEEnv(test)
    assert a._dyn.tables.paths.bandwidth.levels.size > 1
    pa, pb = (env._dyn.tables.paths.bandwidth for env in (a, b))
    assert not np.array_equal(pa.codes[:1000], pb.codes[:1000])


def test_resources_change_within_a_request(tmp_path):
    """Time clock: stages of one request meet different levels; request clock: they do not."""
    csv = tmp_path / "flip.csv"
    csv.write_text("\n".join(["1,1,1,1", "0.1,0.1,0.1,0.1"] * 50))  # 4 devices, in step
    compute = {"kind": "trace", "csv": str(csv), "step_ms": 10.0}
    found = {}
    for clock in ("time", "request"):
        env = DistrEEEnv(
            **FAST,
            arrivals={"kind": "isolated"},
            cluster={"clock": clock, "compute": compute, "bandwidth": {"kind": "constant"}},
        )
        env.reset(seed=0)
        dyn = env._dyn
        mixed = 0
        model, ones = dyn.tables.latency, np.ones((1, env.num_devices))
        for _ in range(60):
            levels = []
            while True:
                t0 = dyn.t[0]
                _, _, _, _, info = env.step(0)
                if info["request_done"]:
                    env.reset()  # v2: the request was the episode; the stream goes on
                    break
                stage, k = dyn.t[0] - t0, dyn.k[:1]
                fast, slow = (model.stage_ms(k, ones * c, ones)[0] for c in (1.0, 0.1))
                assert np.isclose(stage, fast) or np.isclose(stage, slow)
                levels.append(np.isclose(stage, fast))
            mixed += len(set(levels)) > 1
        found[clock] = mixed
    assert found["time"] > 10 and found["request"] == 0


def test_measured_levels_are_sampled_and_timeline_replays_the_env():
    env = DistrEEEnv(**FAST, cluster={"measurement_period_ms": 100.0})
    env.reset(seed=7)
    dyn = env._dyn
    timeline = ResourceTimeline(
        ResourcePaths.from_config(env.config.cluster, env.num_devices), 7, dyn.pool_steps
    )
    d = env.num_devices
    rng = np.random.default_rng(0)
    for _ in range(200):
        obs, _, term, trunc, _ = env.step(int(rng.integers(2)))
        if term or trunc:
            env.reset()
        t = dyn.t[0]
        measured = np.concatenate(timeline.measured(t))
        assert np.allclose(obs[5 : 5 + 2 * d], measured, atol=1e-6)
        assert np.allclose(np.concatenate(timeline.levels(np.floor(t / 100) * 100)), measured)


def test_cluster_config_pools_are_shared_and_read_only():
    a, b = DistrEEEnv(**FAST), DistrEEEnv(**FAST)
    a.reset(seed=3)
    b.reset(seed=3)
    assert a._dyn.tables is b._dyn.tables
    assert a._dyn.pool is b._dyn.pool and not a._dyn.pool.levels.flags.writeable
    assert ClusterConfig().clock == "time"
