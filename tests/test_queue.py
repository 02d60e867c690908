"""Queueing dynamics against hand-computed examples: D/D/1 waits, M/D/1 (Pollaczek-Khinchine),
conservation of requests with drops, and overflow admission."""

from __future__ import annotations

import numpy as np
import pytest

from distree_env import DistrEEEnv, DistrEEVecEnv, EnvConfig
from distree_env.cluster.queue import WaitingQueue
from distree_env.dynamics import describe
from tests import last_exit_latencies

# Constant, full resources: every request that runs to the last exit takes exactly S ms.
CONSTANT = {
    "trace": "synthetic:n=200",
    "cluster": {"compute": {"kind": "constant"}, "bandwidth": {"kind": "constant"}},
}


def test_ring_is_fifo_across_the_wrap():
    q = WaitingQueue(2, 3)
    envs, first = np.array([0]), np.array([True, False])
    for t in (1.0, 2.0, 3.0):
        q.push(envs, np.array([t]), np.array([int(t)]))
    assert q.pop(first)[0][0] == 1.0
    q.push(envs, np.array([4.0]), np.array([4]))  # wraps around
    assert [q.pop(first)[0][0] for _ in range(3)] == [2.0, 3.0, 4.0]
    assert q.size.tolist() == [0, 0]


def test_deterministic_overload_waits_grow_as_computed_by_hand():
    """D/D/1 with arrivals every T = 0.75 S: request i waits i (S - T), latency S + i (S - T)."""
    cfg = EnvConfig.from_dict(
        {**CONSTANT, "arrivals": {"kind": "periodic", "utilisation": 1 / 0.75}}
    )
    service = describe(cfg)["mean_service_ms"]
    assert np.isclose(service, sum(describe(cfg)["full_speed_stage_ms"]))
    gap = 0.75 * service
    env = DistrEEEnv(cfg)
    env.reset(seed=0)
    latencies = last_exit_latencies(env, 20)
    expected = service + np.arange(20) * (service - gap)
    assert np.allclose(latencies, expected)


@pytest.mark.parametrize("vector", [False, True])
def test_the_queue_columns_of_the_observation_as_computed_by_hand(vector):
    """D/D/1 with arrivals every T = 0.75 S, every request to the last exit. At exit 0, request
    i has waited i (S - T) and run stage 0 (S0 ms): ``elapsed_ratio`` = (i (S - T) + S0) / D;
    the arrivals by then number floor((i S + S0) / T) + 1, of which i + 1 have been served or
    are in service, so the rest wait; the oldest of them arrived at (i + 1) T."""
    cfg = EnvConfig.from_dict(
        {**CONSTANT, "arrivals": {"kind": "periodic", "utilisation": 1 / 0.75},
         "queue": {"capacity": 8}}
    )  # fmt: skip
    service, s0 = describe(cfg)["mean_service_ms"], describe(cfg)["full_speed_stage_ms"][0]
    gap, deadline, cap = 0.75 * service, cfg.deadline_ms, cfg.max_elapsed_ratio
    env = DistrEEVecEnv(1, config=cfg, autoreset_mode="SameStep") if vector else DistrEEEnv(cfg)
    names = env.unwrapped.observation_names if not vector else env.observation_names
    col = {n: names.index(n) for n in ("elapsed_ratio", "queue_len", "oldest_wait_ratio")}
    obs, _ = env.reset(seed=0)
    seen = []
    while len(seen) < 12:
        row = np.asarray(obs).reshape(-1)
        if row[names.index("progress")] == 0:  # at exit 0
            seen.append([row[col[n]] for n in col])
        obs, _, terminated, truncated, _ = env.step(np.zeros(1, np.int64) if vector else 0)
        if not vector and (terminated or truncated):  # v2: an episode per request
            obs, _ = env.reset()
    i = np.arange(12)
    waiting = np.floor((i * service + s0) / gap + 1e-9) + 1 - (i + 1)
    expected = np.stack(
        [
            np.minimum((i * (service - gap) + s0) / deadline, cap),
            np.minimum(waiting / 8, 1.0),
            np.where(
                waiting > 0, np.minimum((i * service + s0 - (i + 1) * gap) / deadline, cap), 0
            ),
        ],
        axis=1,
    )
    assert waiting.max() >= 3  # the queue builds up
    np.testing.assert_allclose(np.array(seen), expected, atol=1e-6)


@pytest.mark.parametrize("requests_per_episode", [1, 4])
def test_utilisation_is_the_busy_share_between_answers_as_computed_by_hand(requests_per_episode):
    """D/D/1 at load 0.5, last exit: each request is served S ms of every 2 S, so an episode's
    busy share is 1/2 (its window opens at the previous answer), in the single env and the
    vector env alike."""
    cfg = EnvConfig.from_dict(
        {**CONSTANT, "arrivals": {"kind": "periodic", "utilisation": 0.5},
         "requests_per_episode": requests_per_episode}
    )  # fmt: skip
    env, venv = DistrEEEnv(cfg), DistrEEVecEnv(1, cfg)
    env.reset(seed=0)
    venv.reset(seed=0)
    single, vector = [], []
    while len(single) < 6:
        *_, term, trunc, info = env.step(0)
        if term or trunc:
            single.append(float(info["episode_utilisation"]))
            env.reset()
    while len(vector) < 6:  # NEXT_STEP autoreset: the step after an end only resets
        *_, term, trunc, info = venv.step(np.zeros(1, dtype=np.int64))
        if term[0] or trunc[0]:
            vector.append(float(info["episode_utilisation"][0]))
    assert single == vector
    # the first window opens at 0, before the first (random-phase) arrival: idle a while longer
    assert single[0] < 0.5
    np.testing.assert_allclose(single[1:], 0.5, rtol=1e-6)  # float32 stage times


def test_drops_while_a_fresh_stream_serves_its_first_stage_are_paid():
    """A fresh stream serves its first request's stage 0 before the first decision: what drops
    meanwhile is paid at the next step, so an episode pays for every drop it counts."""
    cfg = EnvConfig.from_dict(
        {**CONSTANT, "queue": {"capacity": 1}, "requests_per_episode": 4,
         "arrivals": {"kind": "poisson", "utilisation": 8.0}, "episode_end": "terminate"}
    )  # fmt: skip
    env = DistrEEEnv(cfg)
    cost = env.unwrapped._dyn.drop_cost
    paid = []
    for seed in range(12):
        env.reset(seed=seed)
        dropped_at_reset = env.unwrapped._dyn.carried_drops.item()
        total = 0
        while True:
            *_, term, trunc, info = env.step(0)
            total += int(info["dropped"])
            if term or trunc:
                break
        rate = info["episode_drop_rate"]
        assert np.isclose(total, rate * (4 + total) if rate < 1 else total)
        assert np.isclose(info["episode_reward_drop"], -cost * total)
        paid.append(dropped_at_reset)
    assert sum(paid) > 0  # the case arose


@pytest.mark.parametrize("pipelining", [False, True])
def test_a_vector_env_pays_carried_drops_inside_the_episode(pipelining):
    """With NEXT_STEP autoreset the step after an episode's end only resets that sub-env: what
    its fresh stream dropped is paid at its first real step, so every episode's step rewards
    sum to its return (the reset step pays nothing)."""
    cluster = {**CONSTANT["cluster"], "pipelining": pipelining}
    cfg = EnvConfig.from_dict(
        {**CONSTANT, "cluster": cluster, "queue": {"capacity": 1}, "requests_per_episode": 3,
         "arrivals": {"kind": "poisson", "utilisation": 8.0}, "episode_end": "terminate"}
        | ({"trace": "synthetic:n=200,topology=pipeline,exits=3,devices=3",
            "reward": {"timing": "stage"}} if pipelining else {})
    )  # fmt: skip
    venv = DistrEEVecEnv(2, cfg)
    venv.reset(seed=3)
    running, resetting = np.zeros(2), np.zeros(2, dtype=bool)
    ends = 0
    rng = np.random.default_rng(0)
    while ends < 12:
        _, reward, term, trunc, info = venv.step(rng.integers(0, 2, 2))
        assert np.all(reward[resetting] == 0.0)
        running += np.where(resetting, 0.0, reward)
        done = term | trunc
        for i in np.flatnonzero(done):
            assert np.isclose(running[i], info["episode_return"][i])
            running[i], ends = 0.0, ends + 1
        resetting = done


def test_requests_are_conserved_with_drops():
    """Every arrival is in service, waiting, answered or dropped; the queue never passes its
    capacity; arrivals by time t of a periodic stream are floor((t - a0) / T) + 1."""
    cfg = EnvConfig.from_dict(
        {
            **CONSTANT,
            "arrivals": {"kind": "periodic", "utilisation": 2.0},
            "queue": {"capacity": 2},
        }
    )
    gap = 1e3 / describe(cfg)["rate_per_s"]
    env = DistrEEEnv(cfg)
    env.reset(seed=3)
    a0 = env._dyn.arrival[0]
    answered = dropped = 0
    rng = np.random.default_rng(0)
    for _ in range(400):
        _, reward, term, trunc, info = env.step(int(rng.random() < 0.2))
        answered += int(info["request_done"])
        dropped += int(info["dropped"])
        assert info["queue_len"] <= 2
        assert np.isclose(info["reward_drop"], -0.5 * info["dropped"])
        periods = (env._dyn.t[0] - a0) / gap
        if abs(periods - round(periods)) > 1e-6:  # not at an arrival instant (float ties)
            assert answered + 1 + info["queue_len"] + dropped == np.floor(periods) + 1
        if term or trunc:
            env.reset()
    assert dropped > 20


def test_md1_mean_wait_matches_pollaczek_khinchine():
    """Poisson arrivals at load rho with deterministic service S: W = rho S / (2 (1 - rho))."""
    rho = 0.5
    cfg = EnvConfig.from_dict(
        {
            **CONSTANT,
            "requests_per_episode": 200,
            "arrivals": {"kind": "poisson", "utilisation": rho},
            "queue": {"capacity": 1024},
        }
    )
    service = describe(cfg)["mean_service_ms"]
    venv = DistrEEVecEnv(64, cfg)
    venv.reset(seed=0)
    waits = []
    zeros = np.zeros(64, dtype=np.int64)
    while len(waits) < 64 * 150:
        _, _, _, _, info = venv.step(zeros)
        waits.extend(info["request_wait_ms"][info["request_done"]].tolist())
    expected = rho * service / (2 * (1 - rho))
    assert abs(np.mean(waits) / expected - 1) < 0.1


def test_admit_overflow_keeps_requests_and_counts_them():
    cfg = EnvConfig.from_dict(
        {
            **CONSTANT,
            "requests_per_episode": 40,
            "episode_end": "truncate",
            "arrivals": {"kind": "periodic", "utilisation": 1.5},
            "queue": {"capacity": 1, "overflow": "admit"},
        }
    )
    env = DistrEEEnv(cfg)
    obs, _ = env.reset(seed=0)
    q = env.observation_names.index("queue_len")
    most = 0
    done = False
    while not done:
        obs, _, _, done, info = env.step(0)
        most = max(most, int(info["queue_len"]))
        assert obs[q] <= 1.0
    assert most > 1 and info["episode_overflow_rate"] > 0 and info["episode_drop_rate"] == 0


def test_early_exits_free_the_devices_for_waiting_requests():
    cfg = EnvConfig.from_dict(
        {**CONSTANT, "arrivals": {"kind": "poisson", "utilisation": 0.9}, "queue": {"capacity": 64}}
    )
    waits = {}
    for action in (0, 1):
        venv = DistrEEVecEnv(16, cfg)
        venv.reset(seed=1)
        acts, total = np.full(16, action), []
        while len(total) < 2000:
            _, _, _, _, info = venv.step(acts)
            total.extend(info["request_wait_ms"][info["request_done"]].tolist())
        waits[action] = np.mean(total)
    assert waits[1] < 0.5 * waits[0]


@pytest.mark.parametrize("vector", [False, True])
def test_system_timing_charges_the_wait_of_the_queue_as_computed_by_hand(vector):
    """D/D/1, arrivals every T = 0.73 S, every request to the last exit: with ``system`` timing
    the latency costs paid up to the n-th answer (at t_n = a_0 + (n + 1) S) are
    c * (sum of the answered latencies (i + 1) S - i T, plus t_n - a_j for every request j
    waiting at t_n), c = latency_weight / deadline; with ``request`` timing only the first sum."""
    base = {**CONSTANT, "arrivals": {"kind": "periodic", "utilisation": 1 / 0.73}}
    service = describe(EnvConfig.from_dict(base))["mean_service_ms"]
    gap = 0.73 * service
    paid = {}
    for timing in ("system", "request"):
        cfg = EnvConfig.from_dict({**base, "reward": {"timing": timing}})
        a0, paid[timing] = _paid_by_answer(cfg, "reward_latency", 20, vector)
    c = cfg.reward.latency_weight / cfg.deadline_ms
    for n in range(20):
        answered = sum((i + 1) * service - i * gap for i in range(n + 1))
        t_n = a0 + (n + 1) * service
        waiting = [t_n - (a0 + j * gap) for j in range(n + 1, int((t_n - a0) / gap) + 1)]
        assert np.isclose(paid["request"][n], -c * answered)
        assert np.isclose(paid["system"][n], -c * (answered + sum(waiting)))


def test_handover_and_stalls_delay_the_next_start():
    """Idle devices start a request ``handover_ms`` after it arrives and never stall; a request
    that was waiting starts ``handover_ms`` plus, with probability ``stall_probability``, an
    exponential pause of mean ``stall_mean_ms`` after the previous one's answer."""
    light = EnvConfig.from_dict({**CONSTANT, "arrivals": {"kind": "periodic", "utilisation": 0.5}})
    stalls = {"handover_ms": 0.7, "stall_probability": 1.0, "stall_mean_ms": 3.0}
    for cluster, expected in (({}, 0.0), ({"handover_ms": 0.7}, 0.7), (stalls, 0.7)):
        waits = [w for w, _, _ in _served(light.replace({"cluster": cluster}), 50)]
        assert np.allclose(waits, expected)  # half-loaded: nobody waits, nothing stalls
    heavy = EnvConfig.from_dict(
        {**CONSTANT, "arrivals": {"kind": "periodic", "utilisation": 2.0},
         "queue": {"capacity": 1024, "overflow": "admit"}, "cluster": stalls}
    )  # fmt: skip
    served = _served(heavy, 400)
    gaps = [start - end for (_, _, end), (_, start, _) in zip(served, served[1:], strict=False)]
    pauses = np.asarray(gaps[1:]) - 0.7  # from the second on, every request had waited
    assert pauses.min() >= 0.0 and abs(pauses.mean() / 3.0 - 1) < 0.15


def test_stalls_do_not_replay_the_resource_pools_draws():
    """The resource pool is drawn from the seed's generator, the stalls from one spawned apart
    (a generator seeded ``[seed, 0]`` is the seed's own, so at ``stall_seed=0`` the stalls
    replayed the pool's draws); every ``stall_seed`` gives another."""
    base = EnvConfig.from_dict({**CONSTANT, "cluster": {"stall_probability": 0.2}})
    firsts = []
    for stall_seed in (0, 1):
        env = DistrEEEnv(base.replace({"cluster.stall_seed": stall_seed}))
        env.reset(seed=5)
        firsts.append(env.unwrapped._dyn.stall_rng.random(8))
    pool = np.random.default_rng(5).random(8)
    assert not np.isin(firsts[0], pool).any() and not np.isin(firsts[0], firsts[1]).any()


def _served(cfg: EnvConfig, n: int) -> list[tuple[float, float, float]]:
    """(wait, start, answer time) of the first ``n`` requests, each run to the last exit."""
    env = DistrEEEnv(cfg)
    env.reset(seed=0)
    dyn, out = env.unwrapped._dyn, []
    while len(out) < n:
        arrival = float(dyn.arrival[0])
        _, _, _, _, info = env.step(0)
        if info["request_done"]:
            wait, latency = float(info["request_wait_ms"]), float(info["request_latency_ms"])
            out.append((wait, arrival + wait, arrival + latency))
            env.reset()
    return out


def test_stalls_have_their_own_random_stream():
    """Stalls change when requests start, never which requests arrive when: arrivals stay
    those of the env's seed (what a live run driven by that seed replays), whatever
    ``stall_seed`` picks."""
    base = EnvConfig.from_dict({**CONSTANT, "arrivals": {"kind": "poisson", "utilisation": 0.6}})
    seen = {}
    for name, cluster in (
        ("none", {}),
        ("stalls", {"stall_probability": 0.2, "stall_mean_ms": 20.0}),
        ("other", {"stall_probability": 0.2, "stall_mean_ms": 20.0, "stall_seed": 1}),
    ):
        env = DistrEEEnv(base.replace({"cluster": cluster}))
        env.reset(seed=5)
        arrivals, waits = [], []
        while len(arrivals) < 200:
            arrivals.append(float(env.unwrapped._dyn.arrival[0]))
            _, _, _, _, info = env.step(1)
            waits.append(float(info["request_wait_ms"]))
            env.reset()
        seen[name] = (arrivals, waits)
    assert seen["stalls"][0] == seen["none"][0] == seen["other"][0]
    assert seen["stalls"][1] != seen["other"][1] and sum(seen["stalls"][1]) > sum(seen["none"][1])


@pytest.mark.parametrize("vector", [False, True])
def test_system_timing_charges_each_missed_deadline_once_when_it_passes(vector):
    """D/D/1 overloaded (arrivals every T = 0.6 S, every request to the last exit): by the n-th
    answer, at t_n = a_0 + (n + 1) S, ``system`` timing has charged ``deadline_penalty`` once
    for every request that missed its deadline by then: the answered ones that were late
    ((i + 1) S - i T > D) and the waiting ones whose deadline passed (a_j + D < t_n, j > n);
    ``request`` timing only the answered late ones."""
    base = {**CONSTANT, "arrivals": {"kind": "periodic", "utilisation": 1 / 0.6},
            "queue": {"capacity": 1024, "overflow": "admit"}}  # fmt: skip
    service = describe(EnvConfig.from_dict(base))["mean_service_ms"]
    gap, deadline = 0.6 * service, 3.3 * service
    charged = {}
    for timing in ("system", "request"):
        cfg = EnvConfig.from_dict({**base, "deadline_ms": deadline, "reward": {"timing": timing}})
        a0, charged[timing] = _paid_by_answer(cfg, "reward_deadline", 30, vector)
    penalty = cfg.reward.deadline_penalty
    for n in range(30):
        t_n = a0 + (n + 1) * service
        late_answered = sum(1 for i in range(n + 1) if (i + 1) * service - i * gap > deadline)
        waiting_late = sum(1 for j in range(n + 1, 200) if a0 + j * gap + deadline < t_n)
        assert np.isclose(charged["system"][n], -penalty * (late_answered + waiting_late))
        assert np.isclose(charged["request"][n], -penalty * late_answered)
    assert charged["system"][-1] < charged["request"][-1]  # the queue's misses come sooner


def _paid_by_answer(
    cfg: EnvConfig, part: str, n: int, vector: bool = False
) -> tuple[float, list[float]]:
    """First arrival time, and the running sum of reward ``part`` at each of the first ``n``
    answers, every request run to the last exit (each v2 episode is one request and ends with
    its answer; the stream goes on across ``reset()``). ``vector``: the same on the batched
    path (``DistrEEVecEnv`` of one, SAME_STEP autoreset), which training and evaluation use."""
    env = DistrEEVecEnv(1, cfg, autoreset_mode="SameStep") if vector else DistrEEEnv(cfg)
    env.reset(seed=0)
    a0 = float(env.unwrapped._dyn.arrival[0])
    total, sums = 0.0, []
    while len(sums) < n:
        _, _, terminated, _, info = env.step(np.zeros(1, np.int64) if vector else 0)
        if vector:  # an ended episode's values are in final_info
            ended = bool(terminated[0])
            info = {k: np.asarray(v)[0] for k, v in (info["final_info"] if ended else info).items()}
        total += float(info[part])
        assert bool(np.all(terminated)) == bool(info["request_done"])
        if info["request_done"]:
            sums.append(total)
            if not vector:
                env.reset()
    return a0, sums


def test_cold_starts_add_their_time_by_the_idle_time_before_each_request():
    """With ``cold_start_ms`` every stage of a request that starts after ``idle`` ms of idle
    devices takes ``cold_start_ms[k] (1 - exp(-idle / tau)) / share`` longer (at half compute
    here); a half-loaded periodic stream never queues, so each latency shows it exactly."""
    cold, tau, share = [2.0, 1.0, 0.5, 0.25], 30.0, 0.5
    base = EnvConfig.from_dict(
        {**CONSTANT, "arrivals": {"kind": "periodic", "utilisation": 0.5},
         "cluster": {"compute": {"kind": "constant", "value": share},
                     "bandwidth": {"kind": "constant"}}}
    )  # fmt: skip
    warm = _served(base, 40)
    cooled = _served(
        base.replace({"cluster.cold_start_ms": cold, "cluster.cold_start_tau_ms": tau}), 40
    )
    ends = [0.0] + [end for _, _, end in cooled[:-1]]
    for (w_wait, w_start, w_end), (wait, start, end), before in zip(
        warm, cooled, ends, strict=True
    ):
        assert wait == w_wait == 0.0
        idle = start - before
        expected = sum(cold) * (1.0 - np.exp(-idle / tau)) / share
        assert np.isclose((end - start) - (w_end - w_start), expected, rtol=1e-9, atol=1e-9)
    assert min(start - before for (_, start, _), before in zip(cooled, ends, strict=True)) > 1.0


def _bursty_synthetic(**overrides) -> EnvConfig:
    """Bursty arrivals on the synthetic trace: a queue builds when every request runs long."""
    return EnvConfig.scenario("bursty-stream", trace="synthetic").replace(overrides)


def test_queue_drain_cost_prices_the_waiting_requests_at_the_mean_service():
    """n waiting requests served one after another at the mean last-exit service s wait
    s x n(n+1)/2 in all, charged at latency_weight / deadline per ms."""
    config = _bursty_synthetic()
    venv = DistrEEVecEnv(4, config)
    venv.reset(seed=0)
    per_ms = config.reward.latency_weight / config.deadline_ms * describe(config)["mean_service_ms"]
    seen = set()
    for _ in range(300):
        _, _, _, _, info = venv.step(np.zeros(4, dtype=np.int64))  # always continue: a queue
        n = info["queue_len"].astype(np.float64)
        np.testing.assert_allclose(venv.queue_drain_cost(), per_ms * n * (n + 1) / 2)
        seen.update(info["queue_len"].tolist())
    assert max(seen) >= 3 and 0 in seen


@pytest.mark.parametrize("requests_per_episode", [1, 4])
def test_drain_weight_pays_only_at_episode_ends_and_telescopes(requests_per_episode):
    """The same rollout with and without ``reward.drain_weight``: rewards differ only where an
    episode ends, by ``reward_queue`` = weight x (queue cost at the episode's start - at its
    end); summed, weight x (the first cost - the cost at the last episode end)."""
    envs = [
        DistrEEVecEnv(3, _bursty_synthetic(requests_per_episode=requests_per_episode,
                                           reward={"drain_weight": w}))
        for w in (0.0, 2.0)
    ]  # fmt: skip
    for env in envs:
        env.reset(seed=5)
    first = envs[1].queue_drain_cost()
    last = first.copy()
    rng = np.random.default_rng(1)
    total, paid_at_ends = np.zeros(3), 0
    for _ in range(400):
        actions = (rng.random(3) < 0.2).astype(np.int64)  # mostly continue: queues build
        _, plain, term, trunc, info_plain = envs[0].step(actions)
        _, shaped, term_s, trunc_s, info = envs[1].step(actions)
        ends = term | trunc
        assert np.array_equal(ends, term_s | trunc_s)
        assert not info_plain["reward_queue"].any()
        diff = shaped - plain
        np.testing.assert_allclose(diff, info["reward_queue"], atol=1e-12)
        assert np.all(diff[~ends] == 0)
        paid_at_ends += int(np.count_nonzero(diff[ends]))
        np.testing.assert_allclose(
            info["episode_reward_queue"][ends], 2.0 * (last - envs[1].queue_drain_cost())[ends]
        )
        last = np.where(ends, envs[1].queue_drain_cost(), last)
        total += diff
    np.testing.assert_allclose(total, 2.0 * (first - last), rtol=1e-9, atol=1e-9)
    assert paid_at_ends > 10


@pytest.mark.parametrize("weight", [-0.5, float("nan"), 1e9, "1", True])
def test_drain_weight_out_of_range_is_refused(weight):
    with pytest.raises(ValueError, match=r"reward\.drain_weight=.* is not allowed: a number in"):
        EnvConfig(reward={"drain_weight": weight})


def _waiting_arrivals(dyn) -> np.ndarray:
    """Arrival times of the requests waiting in a single stream's queue (read off the ring)."""
    q = dyn.queue
    slots = (q.head[0] + np.arange(q.size[0])) % q.slots
    return q.time[q.base[0] + slots]


@pytest.mark.parametrize("vector", [False, True])
def test_system_timing_has_charged_every_request_whose_deadline_passed(vector):
    """Under bursts with random exits, after every decision the deadline penalties ``system``
    timing has charged are one per request whose deadline had passed when it was made: the
    answered late ones and those waiting or in service then that were late (counted from their
    arrival times, read off the queue)."""
    cfg = EnvConfig.from_dict(
        {**CONSTANT, "arrivals": {"kind": "poisson", "utilisation": 1.3},
         "queue": {"capacity": 1024, "overflow": "admit"}, "reward": {"timing": "system"}}
    )  # fmt: skip
    env = DistrEEVecEnv(1, cfg, autoreset_mode="SameStep") if vector else DistrEEEnv(cfg)
    env.reset(seed=4)
    dyn, deadline = env.unwrapped._dyn, cfg.deadline_ms
    penalty = cfg.reward.deadline_penalty
    rng = np.random.default_rng(0)
    charged, answered_late, checked = 0.0, 0, 0
    for _ in range(3000):
        in_system = np.append(_waiting_arrivals(dyn), dyn.arrival[0])  # at the decision time
        late = answered_late + int(np.sum(float(dyn.t[0]) - in_system > deadline))
        action = int(rng.random() < 0.3)
        _, _, terminated, _, info = env.step(np.array([action]) if vector else action)
        if vector:
            ended = bool(terminated[0])
            info = {k: np.asarray(v)[0] for k, v in (info["final_info"] if ended else info).items()}
        elif terminated:
            env.reset()
        charged += float(info["reward_deadline"])
        assert np.isclose(charged, -penalty * late)
        answered_late += bool(info["request_done"]) and info["request_latency_ms"] > deadline
        checked += late > answered_late  # a late request was still in the system
    assert checked > 100 and answered_late > 100  # the cases arose


def test_wrong_answers_pay_the_wrong_penalty_in_the_env_and_in_evaluate():
    """With ``wrong_penalty`` set, a wrong answer's ``reward_correct`` is ``-wrong_penalty`` and
    a right one's ``correct_bonus``; the evaluator's per-request reward (``request_reward``) is
    the env's reward of that request."""
    from agents import LastExit, evaluate

    cfg = EnvConfig.from_dict(
        {**CONSTANT, "reward": {"wrong_penalty": 0.7, "correct_bonus": 1.0},
         "arrivals": {"kind": "periodic", "utilisation": 0.5}}
    )  # fmt: skip
    env = DistrEEEnv(cfg)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    seen, parts = {True: 0, False: 0}, ("reward_correct", "reward_latency", "reward_deadline")
    for _ in range(400):
        *_, terminated, _, info = env.step(int(rng.random() < 0.4))
        if info["request_done"]:
            right = bool(info["request_correct"])
            assert info["reward_correct"] == (1.0 if right else -0.7)
            request = cfg.reward.request_reward(
                np.array([right]), np.array([info["request_latency_ms"]]), cfg.deadline_ms
            )[0]
            if cfg.reward.timing == "request":
                assert np.isclose(request, sum(float(info[p]) for p in parts))
            seen[right] += 1
        if terminated:
            env.reset()
    assert min(seen.values()) > 20
    wrong = 1 - evaluate(LastExit(), cfg, 512)["accuracy"]
    no_penalty = EnvConfig.from_dict(
        {**CONSTANT, "arrivals": {"kind": "periodic", "utilisation": 0.5}}
    )
    drop = (
        evaluate(LastExit(), no_penalty, 512)["mean_reward"]
        - evaluate(LastExit(), cfg, 512)["mean_reward"]
    )
    assert np.isclose(drop, 0.7 * wrong)


def test_utilisation_is_the_busy_share_under_random_arrivals():
    """Poisson arrivals at load 0.9, last exit: episodes are busy about 90% of their time, and
    never more than all of it (the busy time runs from a request's start, not its arrival)."""
    cfg = EnvConfig.from_dict(
        {**CONSTANT, "arrivals": {"kind": "poisson", "utilisation": 0.9},
         "queue": {"capacity": 1024}, "requests_per_episode": 256}
    )  # fmt: skip
    venv = DistrEEVecEnv(8, cfg)
    venv.reset(seed=0)
    shares = []
    while len(shares) < 24:
        *_, terminated, truncated, info = venv.step(np.zeros(8, np.int64))
        shares.extend(info["episode_utilisation"][terminated | truncated].tolist())
    assert 0.8 < np.mean(shares) < 0.97 and max(shares) <= 1.0 + 1e-9


@pytest.mark.parametrize("requests_per_episode", [1, 16])
def test_episode_rates_count_the_dropped_requests(requests_per_episode):
    """In overload with a small queue an episode's rates are over its answered and dropped
    requests: ``qos_rate`` = met / (R + dropped), ``reward_per_request`` = return / (R +
    dropped), ``drop_rate`` = dropped / (R + dropped)."""
    cfg = EnvConfig.from_dict(
        {**CONSTANT, "arrivals": {"kind": "poisson", "utilisation": 3.0},
         "queue": {"capacity": 2}, "requests_per_episode": requests_per_episode,
         "episode_end": "terminate"}
    )  # fmt: skip
    env = DistrEEEnv(cfg)
    dropping = 0
    for seed in range(12):
        env.reset(seed=seed)
        dropped = met = 0
        while True:
            *_, terminated, truncated, info = env.step(0)
            dropped += int(info["dropped"])
            met += bool(info["request_done"]) and info["request_latency_ms"] <= cfg.deadline_ms
            if terminated or truncated:
                break
        total = requests_per_episode + dropped
        dropping += dropped > 0
        assert np.isclose(info["episode_drop_rate"], dropped / total)
        assert np.isclose(info["episode_qos_rate"], met / total)
        assert np.isclose(info["episode_reward_per_request"], info["episode_return"] / total)
    assert dropping >= 3  # the case arose


def test_admissions_beyond_the_capacity_are_counted_one_by_one():
    """D/D/1 with arrivals every T = S / 1.37, every request to the last exit, ``overflow=
    "admit"`` at capacity 1: request i starts at max(a_i, start_(i-1) + S), and arrival j is an
    overflow when a request that arrived before it has not started by a_j (one already waits);
    counted by hand over the arrivals up to the episode's last step."""
    cfg = EnvConfig.from_dict(
        {**CONSTANT, "requests_per_episode": 40, "episode_end": "truncate",
         "arrivals": {"kind": "periodic", "utilisation": 1.37},
         "queue": {"capacity": 1, "overflow": "admit"}}
    )  # fmt: skip
    service = describe(cfg)["mean_service_ms"]
    gap = service / 1.37
    env = DistrEEEnv(cfg)
    env.reset(seed=0)
    dyn = env.unwrapped._dyn
    a0 = float(dyn.arrival[0])
    done = False
    while not done:
        *_, done, info = env.step(0)
    arrivals = a0 + gap * np.arange(int((float(dyn.t[0]) - a0) / gap) + 1)
    starts = [a0]
    for a in arrivals[1:]:
        starts.append(max(a, starts[-1] + service))
    by_hand = sum(any(start > a for start in starts[:j]) for j, a in enumerate(arrivals))
    assert by_hand > 20 and round(info["episode_overflow_rate"] * 40) == by_hand


@pytest.mark.parametrize("path", ["single", "vector", "pipelined"])
def test_every_drop_belongs_to_the_next_admitted_request(path):
    """Periodic arrivals numbered i = 0, 1, ...: an admitted request's ``request_drops_before``
    is the number of arrivals between it and the request admitted before it (all of them were
    refused), whether it waited in the queue or went straight to idle devices, in whatever
    order the requests are answered; and every drop is counted once: by an answered request, a
    request still in the system, or the queue's count of refusals since its last admission.
    The single env's scalar path and the vector env's are both checked (one sub-env)."""
    pipelining = path == "pipelined"
    cluster = {**CONSTANT["cluster"], "pipelining": pipelining}
    cfg = EnvConfig.from_dict(
        {**CONSTANT, "cluster": cluster, "queue": {"capacity": 1}, "requests_per_episode": 1000,
         "arrivals": {"kind": "periodic", "utilisation": 6.0 if pipelining else 2.5}}
        | ({"trace": "synthetic:n=200,topology=pipeline,exits=3,devices=3",
            "reward": {"timing": "stage"}} if pipelining else {})
    )  # fmt: skip
    gap = 1e3 / describe(cfg)["rate_per_s"]
    if path == "vector":
        env = DistrEEVecEnv(1, cfg)
        env.reset(seed=3)
        dyn = env._dyn
    else:
        env = DistrEEEnv(cfg)
        env.reset(seed=3)
        dyn = env.unwrapped._dyn
    first = dyn.arrival[0]
    index = lambda at: int(np.rint((at - first) / gap))  # noqa: E731
    drops_before, dropped, straight = {}, 0, 0
    rng = np.random.default_rng(0)
    for _ in range(800):
        serving = index(dyn.arrival[0])
        action = int(rng.random() < 0.5)
        *_, info = env.step(np.array([action]) if path == "vector" else action)
        info = {key: np.asarray(value).reshape(-1)[0] for key, value in info.items()}
        dropped += int(info["dropped"])
        if info["request_done"]:
            drops_before[serving] = int(info["request_drops_before"])
            straight += drops_before[serving] > 0 and info["request_wait_ms"] < 1e-9
    q = dyn.queue
    ring = (q.head[0] + np.arange(q.size[0])) % q.slots
    waiting = zip(q.time[ring], q.drops_before[ring], strict=True)
    in_system = {index(at): int(n) for at, n in waiting}
    in_system[index(dyn.arrival[0])] = int(dyn.drops_before[0])
    admitted = sorted(drops_before | in_system)
    assert admitted[0] == 0 and drops_before.get(0, 0) == 0
    for before, request in zip(admitted, admitted[1:], strict=False):
        if request in drops_before:
            assert drops_before[request] == request - before - 1, request
    assert sum(drops_before.values()) > 50
    if not pipelining:  # refusals, then an idle device: the next arrival goes straight in
        assert straight > 5
    assert dropped == sum(drops_before.values()) + sum(in_system.values()) + q.refused[0]
