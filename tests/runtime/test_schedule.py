"""The live scenario replays the environment's own requests, arrivals and resource levels."""

from __future__ import annotations

import numpy as np
import pytest

from distree_env.cluster import ResourceTimeline
from distree_env.config import EnvConfig
from distree_env.env import DistrEEEnv
from distree_env.runtime.aggregator import confidence_features
from distree_env.runtime.schedule import live_scenario

TRACE = "synthetic:n=64,exits=3,devices=2"


@pytest.mark.parametrize("scenario", ["steady-stream", "isolated", "bursty-stream"])
def test_live_scenario_is_the_envs_episode(scenario):
    config = EnvConfig.scenario(scenario, trace=TRACE)
    env = DistrEEEnv(config)
    obs, _ = env.reset(seed=7)
    dyn = env.unwrapped._dyn
    live = live_scenario(config, 7, 40)
    timeline = ResourceTimeline(dyn.tables.paths, 7, dyn.pool_steps)
    served_arrival, served_sample, starts = [], [], []
    for _ in range(20):  # exit at once: the queue never fills, every arrival is served
        served_arrival.append(float(dyn.arrival[0]))
        served_sample.append(int(dyn.sample[0]))
        starts.append(float(dyn.service_start[0]))
        c = [live.compute[d].at(len(starts) - 1, starts[-1]) for d in range(2)]
        b = [live.bandwidth[d].at(len(starts) - 1, starts[-1]) for d in range(2)]
        true_c, true_b = timeline.levels(starts[-1], len(starts) - 1)
        assert c == pytest.approx(true_c) and b == pytest.approx(true_b)
        seen_c, seen_b = live.measured(len(starts) - 1, float(dyn.t[0]))  # at the decision
        names = env.observation_names
        assert seen_c == pytest.approx(obs[[names.index(f"compute_{d}") for d in range(2)]])
        assert seen_b == pytest.approx(obs[[names.index(f"bandwidth_{d}") for d in range(2)]])
        obs, _, term, trunc, _ = env.step(1)
        if term or trunc:
            obs, _ = env.reset()  # the stream goes on (v2: every request is an episode)
    assert served_sample == live.samples[:20].tolist()
    if scenario == "isolated":
        assert live.arrivals_ms is None
    else:
        assert served_arrival == pytest.approx(live.arrivals_ms[:20].tolist())
    assert live.observation_names == env.observation_names


@pytest.mark.parametrize("overflow", ["drop", "admit"])
def test_the_live_queue_and_observation_bounds_are_the_envs(overflow):
    """The live queue holds what the simulated one holds (its capacity when drops are the
    rule, the hard cap when late admission is), and a live observation is clipped to the
    env's observation space, as the simulator's never leaves it."""
    config = EnvConfig.scenario("steady-stream", trace=TRACE).replace(
        {"queue.capacity": 4, "queue.overflow": overflow}
    )
    env = DistrEEEnv(config)
    env.reset(seed=0)
    live = live_scenario(config, 0, 8)
    assert live.queue_slots == env.unwrapped._dyn.slots and live.queue_capacity == 4
    high = env.observation_space.high
    np.testing.assert_array_equal(live.obs_high, high)
    far = {name: 9.0 for name in live.observation_names}
    np.testing.assert_array_equal(live.observation(far), np.minimum(9.0, high))


def test_confidence_features_match_the_trace_definition():
    probs = np.array([0.7, 0.2, 0.1, 0.0])
    a, b = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    f = confidence_features(probs, a, b)
    assert f["max_prob"] == pytest.approx(0.7) and f["margin"] == pytest.approx(0.5)
    entropy = -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1)) / np.log(4)
    assert f["entropy"] == pytest.approx(entropy)
    assert f["feature_diff"] == pytest.approx(0.5 * np.sqrt(2.0))
    assert confidence_features(probs, a, None)["feature_diff"] == 1.0


def test_the_simulator_observes_the_features_the_live_runtime_computes():
    """Each exit-feature column of the simulator holds the measure its name says: what the live
    aggregator (checked by hand above) computes from the same exit's probabilities."""
    from distree_env.dynamics import EXIT_FEATURES, exit_features
    from distree_env.traces import resolve_trace

    trace = resolve_trace("synthetic:seed=1")
    feats, correct = exit_features(trace)
    n, num_exits, _ = trace.probs.shape
    for s in range(0, n, n // 8):
        for k in range(num_exits):
            row = dict(zip(EXIT_FEATURES, feats[s * num_exits + k].tolist(), strict=True))
            live = confidence_features(trace.probs[s, k], np.ones(1), None)
            for name in ("max_prob", "margin", "entropy"):
                assert row[name] == pytest.approx(live[name], abs=1e-6), (s, k, name)
            diff = min(float(trace.feature_diff[s, k]), 1.0)
            assert row["feature_diff"] == pytest.approx(diff, abs=1e-6)
            assert row["progress"] == pytest.approx(k / (num_exits - 1))
            assert correct[s * num_exits + k] == (trace.probs[s, k].argmax() == trace.labels[s])


def test_pipelining_is_refused_naming_the_field():
    config = EnvConfig.scenario("pipelined-stream", trace="synthetic:topology=pipeline,n=64")
    with pytest.raises(ValueError, match=r"cluster\.pipelining=True is not allowed"):
        live_scenario(config, 0, 10)
