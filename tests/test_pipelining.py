"""Pipelining (``cluster.pipelining``): devices of the pipeline topology work on different
requests at once. Checked against a hand-written FIFO tandem queue, against the Oracle's
outlook, and for the errors of configs it cannot serve."""

from __future__ import annotations

import numpy as np
import pytest

from distree_env import DistrEEEnv, DistrEEVecEnv, EnvConfig
from distree_env.dynamics import describe
from tests import last_exit_latencies

PIPELINED = {
    "trace": "synthetic:topology=pipeline,n=200",
    "cluster": {
        "pipelining": True,
        "compute": {"kind": "constant"},
        "bandwidth": {"kind": "constant"},
    },
    "reward": {"timing": "stage"},
}


def _tandem(arrivals, depth, stage_ms, capacity, handover=0.0, cold_ms=None, tau_ms=40.0):
    """The reference: a FIFO tandem of K devices with a bounded queue before device 0 and
    unbounded buffers between devices; a request starts ``handover`` ms after device 0 can take
    it, and each of its stages k lasts ``cold_ms[k] * (1 - exp(-idle / tau_ms))`` longer, idle
    being how long device 0 waited for it. Returns per served request its arrival, device-0
    start and latency, and the arrivals refused."""
    cold_ms = cold_ms or [0.0] * len(stage_ms)
    starts, colds, served, refused, f0 = [], [], [], 0, 0.0
    for a in arrivals:  # device 0 serves in arrival order whatever happens downstream
        if sum(s > a for s in starts) >= capacity:
            refused += 1
            continue
        s0 = max(a, f0) + handover
        cold = 1.0 - np.exp(-(s0 - f0) / tau_ms)
        f0 = s0 + (stage_ms[0] + cold * cold_ms[0])
        starts.append(s0)
        colds.append(cold)
        served.append(a)
    free = [0.0] * len(stage_ms)
    latency = []
    for a, s0, cold, d in zip(served, starts, colds, depth, strict=False):
        t = s0 + (stage_ms[0] + cold * cold_ms[0])
        for k in range(1, d + 1):  # stage k waits for device k to finish the requests ahead
            t = max(t, free[k]) + (stage_ms[k] + cold * cold_ms[k])
            free[k] = t
        latency.append(t - a)
    return np.array(served), np.array(starts), np.array(latency), refused


@pytest.mark.parametrize(
    "extra",
    [{}, {"handover_ms": 0.3, "cold_start_ms": [1.5, 0.5, 0.3, 0.2], "cold_start_tau_ms": 20.0}],
    ids=["plain", "handover-and-cold-starts"],
)
def test_latencies_waits_and_drops_match_a_fifo_tandem_computed_by_hand(extra):
    """Periodic arrivals faster than device 0 (a backlog downstream, drops at the input) and
    random exit depths: every request's latency, wait and the drops are the reference's."""
    # the env keeps stage times in float32; a gap that no sum of stage times meets exactly
    stage_ms = np.float32(describe(EnvConfig.from_dict(PIPELINED))["full_speed_stage_ms"])
    stage_ms = stage_ms.astype(np.float64).tolist()
    gap = 0.9137 * stage_ms[0]
    periodic = {"kind": "periodic", "rate_per_s": 1e3 / gap, "utilisation": None}
    cfg = EnvConfig.from_dict({**PIPELINED, "arrivals": periodic, "queue": {"capacity": 3}})
    cfg = cfg.replace({f"cluster.{key}": value for key, value in extra.items()})
    depth = np.random.default_rng(0).integers(0, len(stage_ms), 300)
    env = DistrEEEnv(cfg)
    env.reset(seed=1)
    a0 = env._dyn.arrival[0]
    got, waits, answered, dropped = [], [], 0, 0
    while answered < 300:
        k = int(env._dyn.k[0])
        _, _, term, _, info = env.step(int(k == depth[answered]))
        dropped += int(info["dropped"])
        if info["request_done"]:
            assert info["request_exit"] == depth[answered]
            got.append(info["request_latency_ms"])
            waits.append(info["request_wait_ms"])
            answered += 1
        if term:
            env.reset()
    horizon = float(env._dyn.horizon[0])
    arrivals = a0 + gap * np.arange(int((horizon - a0) / gap) + 1)
    served, starts, latency, refused = _tandem(
        arrivals,
        depth,
        stage_ms,
        capacity=3,
        handover=extra.get("handover_ms", 0.0),
        cold_ms=extra.get("cold_start_ms"),
        tau_ms=extra.get("cold_start_tau_ms", 40.0),
    )
    assert np.allclose(got, latency[:300])
    assert np.allclose(waits, (starts - served)[:300])
    assert refused > 10  # the case is one with drops
    assert dropped == refused


def test_observed_queue_is_the_requests_waiting_for_device_0_at_the_decision():
    """At each decision (time t) the info's queue_len counts requests that had arrived by t
    and that device 0 had not started, although later arrivals may already be admitted."""
    cfg = EnvConfig.from_dict(
        {**PIPELINED, "arrivals": {"kind": "poisson", "utilisation": 0.9}}
    )  # fmt: skip
    env = DistrEEEnv(cfg)
    env.reset(seed=4)
    dyn = env._dyn
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(3000):
        _, _, term, _, info = env.step(int(rng.random() < 0.3))
        q, t = dyn.queue, dyn.t[0]
        rows = (q.head[0] + np.arange(q.size[0])) % q.slots
        waiting = (q.time[rows] <= t) & (dyn.q_start[rows] > t)
        assert info["queue_len"] == waiting.sum()
        seen.add(int(info["queue_len"]))
        if term:
            env.reset()
    assert len(seen) >= 3  # the queue did build up


def test_the_outlook_predicts_the_latency_a_request_gets():
    """The Oracle's hindsight: with time-varying resources, the latency the outlook gives at a
    request's first decision for its final exit is the one it gets (earlier requests fixed when
    each device is free, later ones cannot delay it)."""
    env = DistrEEEnv(scenario="pipelined-stream", trace="synthetic:topology=pipeline,n=200")
    env.reset(seed=2)
    rng = np.random.default_rng(3)
    predicted = None
    checked = 0
    for _ in range(2000):
        if predicted is None:
            predicted = env.request_latencies_ms.copy()
        _, _, term, _, info = env.step(int(rng.random() < 0.4))
        if info["request_done"]:
            assert np.isclose(predicted[info["request_exit"]], info["request_latency_ms"])
            predicted, checked = None, checked + 1
        if term:
            env.reset()
    assert checked > 500


def test_pipelining_serves_more_than_one_request_at_a_time():
    """At the same arrival rate (88% of what one request at a time can serve), the
    pipelined cluster answers with far lower latency, the last exit every time: its devices
    work on several requests at once, so requests queue less."""
    base = {**PIPELINED, "arrivals": {"kind": "poisson", "rate_per_s": 28.0, "utilisation": None}}
    mean = {}
    for pipelining in (False, True):
        env = DistrEEEnv(EnvConfig.from_dict(base), **{"cluster.pipelining": pipelining})
        env.reset(seed=0)
        mean[pipelining] = last_exit_latencies(env, 400).mean()
    assert mean[True] < 0.8 * mean[False]


def test_rollouts_are_deterministic():
    """(single == vector(1) for the registered id is checked with every id in test_vector_env.)"""
    actions = np.random.default_rng(0).integers(0, 2, 400)
    runs = []
    for _ in range(2):
        env = DistrEEEnv(scenario="pipelined-stream", trace="synthetic:topology=pipeline,n=200")
        obs, _ = env.reset(seed=7)
        run = [obs]
        for a in actions:
            obs, reward, term, _, info = env.step(int(a))
            run += [obs, reward, info["queue_len"], info["request_latency_ms"]]
            if term:
                obs, _ = env.reset()
                run.append(obs)
        runs.append(run)
    for x, y in zip(*runs, strict=True):
        assert np.array_equal(x, y)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"trace": "synthetic:n=50"}, "'parallel'"),
        ({"arrivals": {"kind": "isolated"}}, "arrivals.kind"),
        ({"reward": {"timing": "system"}}, "reward.timing"),
        ({"cluster": {"clock": "request"}}, "cluster.clock"),
        ({"cluster": {"pipelining": "yes"}}, "cluster.pipelining"),
    ],
)
def test_configs_pipelining_cannot_serve_are_refused_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        DistrEEEnv(EnvConfig.from_dict(PIPELINED).replace(overrides))


def test_next_wait_is_the_wait_the_request_gets_at_the_next_device():
    """With pipelining the observation shows how long device k + 1 stays busy with the
    requests ahead: continuing from exit k moves the request's clock by exactly that wait plus
    stage k + 1 (constant resources, no cold starts), and the wait is often not zero."""
    cfg = EnvConfig.from_dict({**PIPELINED, "arrivals": {"kind": "poisson", "utilisation": 0.9}})
    stage_ms = describe(cfg)["full_speed_stage_ms"]
    env = DistrEEEnv(cfg)
    obs, _ = env.reset(seed=5)
    column = env.observation_names.index("next_wait_ratio")
    assert column == len(env.observation_names) - 1
    dyn, last = env._dyn, len(stage_ms) - 1
    rng = np.random.default_rng(2)
    waits = []
    for _ in range(3000):
        k, t = int(dyn.k[0]), float(dyn.t[0])
        wait = float(obs[column]) * cfg.deadline_ms
        if k == last:
            assert wait == 0.0
        go_on = (
            k < last and rng.random() < 0.7 and wait < 0.9 * cfg.max_elapsed_ratio * cfg.deadline_ms
        )
        obs, _, term, _, _ = env.step(0 if go_on else 1)
        if go_on:
            assert np.isclose(float(dyn.t[0]) - t, wait + stage_ms[k + 1], rtol=1e-5, atol=1e-3)
            waits.append(wait)
        if term:
            obs, _ = env.reset()
    assert np.mean(np.array(waits) > 0) > 0.1  # devices downstream did build a backlog


def test_only_pipelining_adds_the_next_wait_to_the_layout():
    plain = DistrEEEnv(trace="synthetic:topology=pipeline,n=200")
    piped = DistrEEEnv(EnvConfig.from_dict(PIPELINED))
    assert "next_wait_ratio" not in plain.observation_names
    assert piped.observation_names == (*plain.observation_names, "next_wait_ratio")
    assert piped.observation_space.shape == (len(piped.observation_names),)


def test_queue_prefix_search_equals_a_walk_on_growing_values():
    """``_queue_prefix`` (a binary search, for queues a thousand long under overload) gives the
    position a walk from ``lo`` gives, for values that grow along each ring-stored queue."""
    dyn = DistrEEVecEnv(6, EnvConfig.from_dict(PIPELINED))._dyn
    rng = np.random.default_rng(0)
    slots = dyn.slots
    values = np.full(6 * slots, np.inf)
    base = np.arange(6) * slots
    head = rng.integers(0, slots, 6)
    size = rng.integers(0, slots + 1, 6)
    for i in range(6):  # non-decreasing along the queue, with ties
        grow = np.cumsum(rng.integers(0, 3, size[i])).astype(float)
        values[base[i] + (head[i] + np.arange(size[i])) % slots] = grow
    lo = np.minimum(rng.integers(0, 4, 6), size)
    bound = rng.uniform(0, 2 * slots, 6)
    walk = lo.copy()
    for i in range(6):
        while walk[i] < size[i] and values[base[i] + (head[i] + walk[i]) % slots] <= bound[i]:
            walk[i] += 1
    assert np.array_equal(dyn._queue_prefix(values, base, head, lo, size, bound), walk)


def test_a_saturated_device_0_refuses_the_same_arrivals_whatever_the_exits():
    """Device 0 serves the arrivals in order whatever the requests ahead decide, so where it is
    the bottleneck one stream refuses the same arrivals under any policy, and each admitted
    request reports the same drops before it (``request_drops_before``) once answered; until
    a policy that sends requests on to slower devices fills the stream's system to
    ``QUEUE_HARD_CAP`` (after some 1,000 requests here), which this stream stops short of."""
    config = EnvConfig.scenario("pipelined-stream").replace({"arrivals.utilisation": 3.5})
    seen = []
    for action in (1, 0):  # exit at once; continue to the last exit
        env = DistrEEEnv(config)
        env.reset(seed=5)
        dyn, drops = env.unwrapped._dyn, {}
        while len(drops) < 1500:
            arrival = float(dyn.arrival[0])
            *_, terminated, truncated, info = env.step(action)
            if info["request_done"]:
                drops[arrival] = int(info["request_drops_before"])
            if terminated or truncated:
                env.reset()  # without a seed: the same stream goes on
        seen.append(drops)
    both = seen[0].keys() & seen[1].keys()
    assert len(both) > 1000 and sum(seen[0][a] for a in both) > 50
    assert all(seen[0][a] == seen[1][a] for a in both)
