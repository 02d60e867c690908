"""Cluster model: profiles, resource processes, and stage latencies for both topologies."""

from __future__ import annotations

import numpy as np
import pytest

from distree_env.cluster import (
    DEVICE_PROFILES,
    LINK_PROFILES,
    LatencyModel,
    ResourceProcess,
    load_availability_csv,
    stationary_distribution,
)
from distree_env.config import ProcessConfig


def test_profiles_are_sourced_and_derated():
    for p in (*DEVICE_PROFILES.values(), *LINK_PROFILES.values()):
        assert p.source and 0 < p.derate <= 1
    assert (
        DEVICE_PROFILES["jetson-nano"].effective_flops
        > DEVICE_PROFILES["raspberry-pi-4"].effective_flops
    )
    assert (
        LINK_PROFILES["ethernet-1g"].effective_bandwidth
        > LINK_PROFILES["wifi-4"].effective_bandwidth
    )


def test_parallel_stage_is_slowest_device_plus_exit():
    flops = np.array([[1e9, 2e9], [1e9, 1e9]])
    model = LatencyModel(
        "parallel",
        flops,
        np.array([1e8, 1e8]),
        np.zeros((2, 2)),
        0.0,
        np.array([1e10, 1e10]),
        np.array([1e6, 1e6]),
        np.zeros(2),
    )
    ms = model.stage_ms(np.array([1.0, 1.0]), np.array([1.0, 1.0]))
    assert np.allclose(ms, [200 + 10, 100 + 10])
    slow = model.stage_ms(np.array([1.0, 0.5]), np.array([1.0, 1.0]))
    assert np.allclose(slow, [400 + 10, 200 + 10])
    # device 0 is the aggregator: its availability slows the exit head
    agg = model.stage_ms(np.array([0.5, 1.0]), np.array([1.0, 1.0]))
    assert np.allclose(agg, [200 + 20, 200 + 20])


def test_parallel_transfers_and_input():
    model = LatencyModel(
        "parallel",
        np.zeros((2, 2)),
        np.zeros(2),
        np.full((2, 2), 1000.0),
        3000.0,
        np.ones(2),
        np.array([1e6, 1e5]),
        np.array([1e-3, 2e-3]),
    )
    ms = model.stage_ms(np.ones(2), np.ones(2))
    # device 1: (1000 + 3000) B / 1e5 B/s = 40 ms + 2 x 2 ms latency (input + features)
    assert np.allclose(ms, [44.0, 12.0])


def test_pipeline_is_sequential():
    flops = np.diag([1e9, 2e9])
    tb = np.array([[1e6, 0.0], [0.0, 0.0]])
    model = LatencyModel(
        "pipeline",
        flops,
        np.zeros(2),
        tb,
        0.0,
        np.array([1e10, 1e10]),
        np.array([1e7, 1e7]),
        np.array([1e-3, 1e-3]),
    )
    ms = model.stage_ms(np.ones(2), np.ones(2))
    assert np.allclose(ms, [100.0, 200.0 + 100.0 + 1.0])
    half_link = model.stage_ms(np.ones(2), np.array([0.5, 1.0]))
    assert np.allclose(half_link, [100.0, 200.0 + 200.0 + 1.0])


def test_batched_shapes():
    model = LatencyModel(
        "parallel",
        np.ones((3, 4)),
        np.ones(3),
        np.ones((3, 4)),
        1.0,
        np.ones(4),
        np.ones(4),
        np.zeros(4),
    )
    out = model.stage_ms(np.full((5, 7, 4), 0.5), np.full((5, 7, 4), 0.5))
    assert out.shape == (5, 7, 3)


def test_markov_matches_stationary_distribution():
    pc = ProcessConfig()
    proc = ResourceProcess("markov", 2, levels=pc.levels, transition=pc.transition)
    x = proc.sample(np.random.default_rng(0), 400, 50)
    pi = stationary_distribution(np.array(pc.transition))
    freq = [(x == level).mean() for level in pc.levels]
    assert np.allclose(freq, pi, atol=0.02)
    # time-correlated: consecutive requests agree more often than independent draws would
    same = (x[:, 1:] == x[:, :-1]).mean()
    assert same > (pi**2).sum() + 0.2


def test_constant_and_iid():
    rng = np.random.default_rng(0)
    assert np.all(ResourceProcess("constant", 3, value=0.7).sample(rng, 2, 4) == 0.7)
    x = ResourceProcess("iid", 3, low=0.2, high=0.4).sample(rng, 50, 10)
    assert x.min() >= 0.2 and x.max() <= 0.4 and x.std() > 0.01


def test_trace_csv_replay(tmp_path):
    p = tmp_path / "avail.csv"
    p.write_text("dev0,dev1\n1.0,0.5\n0.25,1.0\n0.5,0.5\n")
    table = load_availability_csv(p, 2)
    proc = ResourceProcess("trace", 2, table=table)
    x = proc.sample(np.random.default_rng(0), 4, 6)
    for ep in x:  # each episode is a cyclic window of the table
        start = int(np.flatnonzero((table == ep[0]).all(1))[0])
        assert np.array_equal(ep, table[(start + np.arange(6)) % 3])


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("a,b\n1.0\n", "1 columns, expected 2"),
        ("1.0,x\n", "non-numeric"),
        ("1.0,0.0\n", r"outside \(0, 1\]"),
        ("1.0,nan\n", r"outside \(0, 1\]"),
        ("a,b\n", "no data rows"),
    ],
)
def test_bad_csv(tmp_path, content, match):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_availability_csv(p, 2)
    with pytest.raises(ValueError, match="not found"):
        load_availability_csv(tmp_path / "none.csv", 2)
