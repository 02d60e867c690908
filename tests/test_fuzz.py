"""Hypothesis fuzzing: random valid configs (arrivals, queues, clocks, processes, rewards,
pipelining) and random actions never raise, never produce NaN, and keep every observation inside
its space."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from distree_env import DistrEEEnv, DistrEEVecEnv, EnvConfig
from distree_env.config import EPISODE_ENDS, REWARD_TIMINGS

share = st.floats(min_value=0.01, max_value=1.0, allow_nan=False)


@st.composite
def process(draw):
    kind = draw(st.sampled_from(["constant", "iid", "markov"]))
    if kind == "constant":
        return {"kind": kind, "value": draw(share)}
    if kind == "iid":
        a, b = sorted((draw(share), draw(share)))
        return {"kind": kind, "low": a, "high": b}
    s = draw(st.integers(2, 4))
    levels = [draw(share) for _ in range(s)]
    rows = []
    for _ in range(s):
        w = np.array([draw(st.floats(0.0, 1.0)) for _ in range(s)]) + 1e-3
        row = (w / w.sum()).tolist()
        row[-1] = 1.0 - sum(row[:-1])
        rows.append([max(0.0, x) for x in row])
    for row in rows:  # re-normalise exactly after clipping
        total = sum(row)
        row[:] = [x / total for x in row]
    return {"kind": kind, "levels": levels, "transition": rows}


@st.composite
def arrivals(draw):
    kind = draw(st.sampled_from(["isolated", "poisson", "bursty", "periodic"]))
    out = {"kind": kind}
    if draw(st.booleans()):
        out.update(rate_per_s=draw(st.floats(0.1, 1e4)), utilisation=None)
    else:
        out["utilisation"] = draw(st.floats(0.05, 3.0))
    if kind == "bursty":
        out.update(
            on_ms=draw(st.floats(1.0, 5000.0)),
            off_ms=draw(st.floats(1.0, 5000.0)),
            off_share=draw(st.floats(0.0, 1.0)),
        )
    return out


@st.composite
def configs(draw):
    topology = draw(st.sampled_from(["parallel", "pipeline"]))
    exits = draw(st.integers(1, 5))
    devices = exits if topology == "pipeline" else draw(st.integers(1, 5))
    trace = (
        f"synthetic:n=200,exits={exits},devices={devices},topology={topology},"
        f"classes={draw(st.integers(2, 12))},seed={draw(st.integers(0, 3))}"
    )
    profiles = st.sampled_from(["raspberry-pi-4", "jetson-nano", "raspberry-pi-5"])
    pipelining = topology == "pipeline" and draw(st.booleans())
    clock = "time" if pipelining else draw(st.sampled_from(["time", "request"]))
    stream = draw(arrivals())
    if pipelining and stream["kind"] == "isolated":  # pipelining needs a request stream
        stream["kind"] = "poisson"
    timings = ("request", "stage") if pipelining else REWARD_TIMINGS
    tick = draw(st.floats(0.1, 50.0))
    compute, bandwidth = draw(process()), draw(process())
    for proc in (compute, bandwidth):
        proc["step_ms"] = tick * draw(st.floats(1.0, 100.0))
    return EnvConfig.from_dict(
        {
            "trace": trace,
            "requests_per_episode": draw(st.integers(1, 12)),
            "deadline_ms": draw(st.floats(0.001, 1e4)),
            "max_elapsed_ratio": draw(st.floats(1.0, 100.0)),
            "episode_end": draw(st.sampled_from(EPISODE_ENDS)),
            "arrivals": stream,
            "queue": {
                "capacity": draw(st.integers(1, 40)),
                "overflow": draw(st.sampled_from(["drop", "admit"])),
            },
            "cluster": {
                "device_profile": draw(profiles),
                "link_profile": draw(st.sampled_from(["wifi-4", "wifi-5", "ethernet-1g"])),
                "clock": clock,
                "pipelining": pipelining,
                "tick_ms": tick,
                "measurement_period_ms": draw(st.sampled_from([0.0, 1.0, 3.7, 100.0])) * tick,
                "stage_overhead_ms": draw(st.floats(0.0, 5.0)),
                "handover_ms": draw(st.sampled_from([0.0, 0.3])),
                "stall_probability": draw(st.sampled_from([0.0, 0.05, 1.0])),
                "stall_mean_ms": draw(st.floats(0.0, 50.0)),
                "cold_start_ms": draw(st.sampled_from([[], [1.5] * exits, [0.0] * exits])),
                "cold_start_tau_ms": draw(st.floats(0.1, 500.0)),
                "compute": compute,
                "bandwidth": bandwidth,
            },
            "reward": {
                "correct_bonus": draw(st.floats(0, 10)),
                "wrong_penalty": draw(st.floats(0, 10)),
                "latency_weight": draw(st.floats(0, 10)),
                "deadline_penalty": draw(st.floats(0, 10)),
                "timing": draw(st.sampled_from(timings)),
            },
        }
    )


def built(make, *args):
    """``make(*args)``, skipping (``assume``) the one valid-looking config the env refuses only
    once its rate is known: an MMPP cycle shorter than MIN_BURST_CYCLE_GAPS mean gaps."""
    try:
        return make(*args)
    except ValueError as exc:
        assume("on/off cycle" not in str(exc))
        raise


#: The same 10 examples on every run (derandomized): CI under ``pytest -x`` must not fail at
#: random on an example a new draw happens to find. For a wider search, run these tests by
#: hand with ``derandomize=False`` and more examples (kept at 10 for the suite's 5 minutes).
FUZZ = settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(cfg=configs(), seed=st.integers(0, 2**31 - 1))
def test_single_env_fuzz(cfg, seed):
    env = built(DistrEEEnv, cfg)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    for _ in range(100):
        assert env.observation_space.contains(obs) and np.isfinite(obs).all()
        obs, reward, term, trunc, info = env.step(int(rng.integers(2)))
        assert np.isfinite(reward)
        assert all(np.isfinite(v).all() for v in info.values())
        if term or trunc:
            assert 0.0 <= info["episode_accuracy"] <= 1.0 and info["episode_done"]
            assert np.isfinite(info["episode_latency_p95_ms"])
            obs, _ = env.reset()


@FUZZ
@given(cfg=configs(), seed=st.integers(0, 2**31 - 1), n=st.integers(1, 9))
def test_vector_env_fuzz(cfg, seed, n):
    venv = built(DistrEEVecEnv, n, cfg)
    rng = np.random.default_rng(seed)
    obs, _ = venv.reset(seed=seed)
    for _ in range(40):
        assert venv.observation_space.contains(obs) and np.isfinite(obs).all()
        obs, reward, term, trunc, info = venv.step(rng.integers(0, 2, n))
        assert np.isfinite(reward).all()
        if "final_obs" in info:
            for o in info["final_obs"][info["_final_obs"]]:
                assert venv.single_observation_space.contains(o)


@FUZZ
@given(cfg=configs(), seed=st.integers(0, 2**31 - 1))
def test_single_env_fast_path_equals_vector_of_one(cfg, seed):
    """The single env's scalar path and the batched step give bit-identical episodes."""
    env, venv = built(DistrEEEnv, cfg), built(DistrEEVecEnv, 1, cfg)
    obs, _ = env.reset(seed=seed)
    assert np.array_equal(obs, venv.reset(seed=seed)[0][0])
    rng = np.random.default_rng(seed)
    ended = False
    for a in rng.integers(0, 2, 60):
        if ended:
            obs, info = env.reset()
            reward, term, trunc = 0.0, False, False
        else:
            obs, reward, term, trunc, info = env.step(int(a))
        v_obs, v_reward, v_term, v_trunc, v_info = venv.step(np.array([a]))
        assert np.array_equal(obs, v_obs[0]) and reward == v_reward[0]
        assert (term, trunc) == (v_term[0], v_trunc[0])
        for key, value in info.items():
            assert np.array_equal(value, v_info[key][0]), key
        ended = term or trunc
