"""Arrival processes: rates, spacing, burstiness, trace replay, and replay outside the env."""

from __future__ import annotations

import numpy as np
import pytest

from agents.splits import on_split
from distree_env import DistrEEEnv
from distree_env.cluster.arrivals import (
    ARRIVAL_SPLITS,
    MIN_BURST_CYCLE_GAPS,
    SHIPPED_ARRIVALS,
    ArrivalProcess,
    ArrivalStream,
    arrival_trace_path,
    load_arrival_csv,
)
from distree_env.config import ArrivalConfig, EnvConfig


def _times(kind, n=20000, seed=0, **kw):
    process = ArrivalProcess(kind, rate_per_ms=0.05, **kw)  # 50 requests per second
    return ArrivalStream(process, np.random.default_rng(seed)).take(n)


def test_poisson_rate_and_exponential_gaps():
    gaps = np.diff(_times("poisson"))
    assert abs(gaps.mean() - 20.0) < 0.6 and abs(gaps.std() / gaps.mean() - 1) < 0.05


def test_periodic_is_a_camera_at_fixed_fps_with_random_phase():
    a, b = _times("periodic", 100, seed=0), _times("periodic", 100, seed=1)
    assert np.allclose(np.diff(a), 20.0) and 0 < a[0] <= 20.0 and a[0] != b[0]


def test_bursty_keeps_the_mean_rate_and_is_burstier_than_poisson():
    times = _times("bursty", 8000, on_ms=1000.0, off_ms=3000.0, off_share=0.25)
    assert abs(len(times) / times[-1] - 0.05) < 0.005
    counts = np.bincount((times // 1000).astype(int))  # arrivals per second
    poisson = np.bincount((_times("poisson", 8000) // 1000).astype(int))
    assert counts.var() / counts.mean() > 3 * poisson.var() / poisson.mean()


def test_bursty_streams_start_in_the_stationary_phase():
    """A stream starts on or off with the MMPP's stationary odds, so its first 200 ms bring
    rate x 200 ms arrivals on average; all starting in a burst would bring the on rate's
    (2.3 times as many here)."""
    process = ArrivalProcess("bursty", rate_per_ms=0.05, on_ms=1000.0, off_ms=3000.0,
                             off_share=0.25)  # fmt: skip
    rng = np.random.default_rng(0)
    state = process.start(rng, 20_000)
    times = process.generate(rng, state, 64)
    first = (times < 200.0).sum(axis=1).mean()
    assert process.on_rate * 200 > 2 * 0.05 * 200
    assert abs(first / (0.05 * 200) - 1) < 0.05, first


def test_trace_replays_its_gaps_cyclically(tmp_path):
    path = tmp_path / "arrivals.csv"
    path.write_text("time_ms\n0\n5\n30\n")
    process = ArrivalProcess("trace", times=load_arrival_csv(path))
    times = ArrivalStream(process, np.random.default_rng(0)).take(9)
    gaps = np.diff(times)
    # gaps of the trace (5, 25) and the wrap gap (mean gap 15), in cyclic order
    assert sorted(set(np.round(gaps, 6))) == [5.0, 15.0, 25.0]
    assert (gaps > 0).all()


@pytest.mark.parametrize("name", SHIPPED_ARRIVALS)
def test_shipped_traces_are_two_disjoint_halves_of_an_hour(name):
    halves = [load_arrival_csv(arrival_trace_path(name, split)) for split in ARRIVAL_SPLITS]
    for times in halves:
        assert len(times) > 3000 and times[0] == 0.0
        assert 25 * 60e3 < times[-1] < 30 * 60e3  # about half of the recorded hour
    assert not np.array_equal(halves[0][:1000], halves[1][:1000])


def test_a_trace_is_time_scaled_to_the_configured_rate_keeping_its_pattern():
    """With a mean rate the gaps are the recording's times one factor (the mean gap is the
    rate's); without one the trace is replayed as recorded."""
    recorded = load_arrival_csv(arrival_trace_path("azure-llm-code", "val"))
    config = ArrivalConfig(kind="trace", csv="azure-llm-code", utilisation=None, rate_per_s=25.0)
    scaled = ArrivalProcess.from_config(config, 25.0 / 1e3).times
    assert np.isclose(np.diff(scaled).mean(), 40.0)
    assert np.allclose(np.diff(scaled), np.diff(recorded) * (scaled[-1] / recorded[-1]))
    as_recorded = ArrivalConfig(kind="trace", csv="azure-llm-code", utilisation=None)
    assert np.array_equal(ArrivalProcess.from_config(as_recorded, 0.0).times, recorded)


def test_azure_code_replays_the_split_it_is_given():
    """Training and tuning see the first half of the hour; ``on_split(config, "test")``, what the
    benchmark and the agents' held-out evaluation use, the second."""
    val = EnvConfig.scenario("azure-code", trace="synthetic:n=200")
    test = on_split(val, "test", val.trace)
    assert (val.arrivals.split, test.arrivals.split) == ("val", "test")
    first = [DistrEEEnv(c)._dyn.tables.arrivals.times for c in (val, test)]
    assert not np.array_equal(first[0][:500], first[1][:500])
    with pytest.raises(ValueError, match="arrivals.split"):
        val.replace({"arrivals.split": "train"})


def test_a_burst_cycle_shorter_than_the_gaps_is_refused_with_its_fields():
    """The generator draws every phase switch: a cycle far shorter than the mean gap between
    arrivals would take many switches per arrival (a hang as it tends to 0) and bursts nothing."""
    fine = ArrivalConfig(kind="bursty", on_ms=100.0, off_ms=300.0)
    ArrivalProcess.from_config(fine, rate_per_ms=MIN_BURST_CYCLE_GAPS / 400.0)  # at the bound
    with pytest.raises(ValueError, match=r"arrivals.on_ms=0.01, arrivals.off_ms=0.01.*poisson"):
        ArrivalProcess.from_config(ArrivalConfig(kind="bursty", on_ms=0.01, off_ms=0.01), 0.001)


def test_streams_replay_by_seed_and_isolated_has_none():
    kw = {"on_ms": 100.0, "off_ms": 300.0, "off_share": 0.1}
    assert np.array_equal(_times("bursty", 500, seed=4, **kw), _times("bursty", 500, seed=4, **kw))
    with pytest.raises(ValueError, match="isolated"):
        ArrivalStream(ArrivalProcess("isolated"), np.random.default_rng(0))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "at least 2"),
        ("5\n3\n", "previous row"),
        ("1\nx\n", "non-numeric"),
        ("nan\n1\n", "finite"),
    ],
)
def test_bad_arrival_csv(tmp_path, content, match):
    path = tmp_path / "a.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_arrival_csv(path)


def test_from_config_uses_the_resolved_rate():
    process = ArrivalProcess.from_config(ArrivalConfig(kind="bursty"), 0.02)
    assert process.rate_per_ms == 0.02 and process.on_rate > 0.02
