"""DistrEEEnv: Gymnasium and SB3 checks, determinism, pickling, spec, contract details."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

import distree_env
from distree_env import DistrEEEnv, EnvConfig

from .conftest import ENV_IDS

# Warnings the checkers may emit that are expected here, with the reason.
ALLOWED_WARNINGS = {
    # SB3 suggests normalising observations when a Box bound differs from [-1, 1] / [0, 1]
    # symmetric ranges; latency_ratio's upper bound is max_latency_ratio (> 1) on purpose.
    "symmetric and normalized": "latency_ratio is deliberately bounded by max_latency_ratio",
}


def _unexpected(caught):
    return [
        str(w.message) for w in caught if not any(key in str(w.message) for key in ALLOWED_WARNINGS)
    ]


def rollout(env, seed, steps, action_seed=0):
    rng = np.random.default_rng(action_seed)
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for _ in range(steps):
        obs, reward, term, trunc, info = env.step(int(rng.integers(2)))
        out += [obs, reward, term]
        if term or trunc:
            obs, _ = env.reset()
            out.append(obs)
    return out


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_check_env(env_id):
    env = gym.make(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env.unwrapped, skip_render_check=True)
    assert _unexpected(caught) == []


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_sb3_check_env(env_id):
    sb3_checker = pytest.importorskip("stable_baselines3.common.env_checker")
    env = gym.make(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_checker.check_env(env.unwrapped, warn=True)
    assert _unexpected(caught) == []


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_seed_same_rollout(env_id):
    a = rollout(gym.make(env_id), seed=7, steps=150)
    b = rollout(gym.make(env_id), seed=7, steps=150)
    c = rollout(gym.make(env_id), seed=8, steps=150)
    assert same(a, b)
    assert not same(a, c)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_pickle_round_trip(env_id):
    env = gym.make(env_id)
    rollout(env, seed=3, steps=37)
    clone = pickle.loads(pickle.dumps(env))
    rng = np.random.default_rng(1)
    for _ in range(100):
        action = int(rng.integers(2))
        x, y = env.step(action), clone.step(action)
        assert np.array_equal(x[0], y[0]) and x[1:4] == y[1:4]
        if x[2]:
            assert np.array_equal(env.reset()[0], clone.reset()[0])


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_spec_json(env_id):
    env = gym.make(env_id)
    text = env.spec.to_json()
    assert json.loads(text)["id"] == env_id
    again = gym.make(gym.envs.registration.EnvSpec.from_json(text))
    assert again.unwrapped.config == env.unwrapped.config


def test_registration_fresh_interpreter_and_no_torch():
    """``gym.make("distree_env:DistrEE-v0")`` works from a fresh interpreter, and neither that
    nor importing the env modules imports torch."""
    distree_env.register_envs()
    distree_env.register_envs()  # idempotent
    code = (
        "import gymnasium as gym, sys\n"
        "env = gym.make('distree_env:DistrEE-v0')\n"
        "env.reset(seed=0)\n"
        "import distree_env.env, distree_env.vector_env, distree_env.trace\n"
        "gym.make_vec('DistrEE-v0', num_envs=2, vectorization_mode='vector_entry_point')\n"
        "print(type(env.unwrapped).__name__, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["DistrEEEnv", "False"]


def test_config_forms_at_construction():
    by_obj = gym.make("DistrEE-v0", config=EnvConfig(deadline_ms=30.0)).unwrapped.config
    by_dict = gym.make("DistrEE-v0", config={"deadline_ms": 30.0}).unwrapped.config
    by_kw = gym.make("DistrEE-v0", deadline_ms=30.0).unwrapped.config
    assert by_obj == by_dict == by_kw
    dotted = gym.make("DistrEE-v0", **{"reward.latency_weight": 0.2}).unwrapped.config
    assert dotted.reward.latency_weight == 0.2
    with pytest.raises(ValueError, match="deadline_ms"):
        gym.make("DistrEE-v0", deadline_ms=-1)
    with pytest.raises(ValueError, match="render_mode"):
        DistrEEEnv(render_mode="human")


def test_observation_layout_and_masks():
    env = DistrEEEnv(trace="synthetic")  # 4 devices
    names = env.observation_names
    assert names[:5] == ("max_prob", "margin", "entropy", "similarity", "progress")
    assert names[-1] == "latency_ratio"
    assert names[5:9] == tuple(f"compute_{d}" for d in range(4))
    assert names[9:13] == tuple(f"bandwidth_{d}" for d in range(4))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (len(names),) and obs.dtype == np.float32
    for k in range(env.num_exits):
        assert obs[4] == pytest.approx(k / (env.num_exits - 1))
        mask = env.action_masks()
        assert mask.tolist() == [k < env.num_exits - 1, True]
        obs, *_ = env.step(0)
    assert obs[4] == 0.0  # the last exit ended the request whatever the action


@pytest.mark.parametrize("bad", [2, -1, 0.5, "1", None, np.array([0, 1]), np.float32(1.0)])
def test_bad_action_raises(bad):
    env = DistrEEEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside Discrete"):
        env.step(bad)


def test_accepts_numpy_actions():
    env = DistrEEEnv()
    env.reset(seed=0)
    for a in (np.int64(0), np.array(1), True, np.int8(0)):
        env.step(a)


def test_rewards_records_and_episode_metrics():
    cfg = EnvConfig(requests_per_episode=16)
    env = DistrEEEnv(cfg)
    env.reset(seed=5)
    rng = np.random.default_rng(0)
    records, total = [], 0.0
    while True:
        lat = env.request_latencies_ms.copy()
        k = int(round(env._k))
        obs, reward, term, trunc, info = env.step(int(rng.integers(2)))
        parts = info["reward_correct"] + info["reward_latency"] + info["reward_deadline"]
        assert reward == pytest.approx(parts)
        total += reward
        if "request" in info:
            rec = info["request"]
            assert rec["exit"] == k and rec["latency_ms"] == pytest.approx(lat[k])
            assert rec["deadline_met"] == (rec["latency_ms"] <= cfg.deadline_ms)
            assert info["reward_deadline"] == (0.0 if rec["deadline_met"] else -0.5)
            records.append(rec)
        if term:
            break
    assert not trunc and len(records) == 16
    assert [r["index"] for r in records] == list(range(16))
    lat = np.array([r["latency_ms"] for r in records])
    assert info["accuracy"] == pytest.approx(np.mean([r["correct"] for r in records]))
    assert info["latency_mean_ms"] == pytest.approx(lat.mean())
    assert info["latency_p95_ms"] == pytest.approx(np.percentile(lat, 95))
    assert info["qos_rate"] == pytest.approx((lat <= cfg.deadline_ms).mean())
    fractions = np.bincount([r["exit"] for r in records], minlength=env.num_exits) / 16
    assert np.allclose(info["exit_fractions"], fractions)
    flops = sum(r["flops"] for r in records)
    last = env._dyn.cum_flops[-1] * 16
    assert info["compute_saving"] == pytest.approx(1 - flops / last)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(0)


def test_last_exit_policy_saves_nothing_and_first_exit_is_cheapest():
    env = DistrEEEnv()
    results = {}
    for name, action in (("last", 0), ("first", 1)):
        env.reset(seed=1)
        while True:
            *_, term, _, info = env.step(action)
            if term:
                results[name] = info
                break
    assert results["last"]["compute_saving"] == pytest.approx(0.0)
    assert results["last"]["exit_fractions"][-1] == 1.0
    assert results["first"]["compute_saving"] > 0.5
    assert results["first"]["latency_mean_ms"] < results["last"]["latency_mean_ms"]


def test_oracle_beats_simple_policies():
    def episode_return(policy, seed):
        env = DistrEEEnv()
        env.reset(seed=seed)
        total = 0.0
        while True:
            obs, r, term, _, _ = env.step(policy(env))
            total += r
            if term:
                return total

    for seed in range(3):
        oracle = episode_return(lambda e: e.oracle_actions(), seed)
        for other in (lambda e: 0, lambda e: 1, lambda e: int(e._k >= 1)):
            assert oracle >= episode_return(other, seed) - 1e-9


def test_render_ansi():
    env = DistrEEEnv(render_mode="ansi")
    env.reset(seed=0)
    assert "max_prob=" in env.render()
    assert DistrEEEnv().render() is None
