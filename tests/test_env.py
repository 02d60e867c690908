"""DistrEEEnv: Gymnasium and SB3 checks over every id, determinism, pickling, spec, API contract."""

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
from distree_env import DistrEEEnv, DistrEEVecEnv, EnvConfig
from distree_env.dynamics import EPISODE_METRICS, FLAG_KEYS, STEP_INFO
from distree_env.env import RESEED_WARNING_AFTER

from .conftest import ENV_IDS

# Warnings the checkers may emit that are expected here, with the reason.
ALLOWED_WARNINGS = {
    # SB3 suggests normalising observations when a Box bound differs from [0, 1]; the *_ratio
    # observations are bounded by max_elapsed_ratio (> 1) on purpose.
    "symmetric and normalized": "elapsed ratios are deliberately bounded by max_elapsed_ratio",
    # Gymnasium tells users of a v0 id that v1 exists; the v0 ids stay for reproducibility.
    "is out of date": "earlier versions (v0, v1, v2) are kept on purpose beside v3",
}
FAST = {"trace": "synthetic:n=200"}


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
        out += [obs, reward, term, trunc, info["request_latency_ms"]]
        if term or trunc:
            obs, _ = env.reset()
            out.append(obs)
    return out


def same(a, b):
    return len(a) == len(b) and all(
        np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_check_env(env_id):
    env = gym.make(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env.unwrapped, skip_render_check=True)
    assert _unexpected(caught) == []


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_sb3_check_env(env_id):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(gym.make(env_id).unwrapped, warn=True)
    assert _unexpected(caught) == []


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_seed_same_rollout(env_id):
    a = rollout(gym.make(env_id).unwrapped, 3, 200)
    b = rollout(gym.make(env_id).unwrapped, 3, 200)
    assert same(a, b)
    assert not same(a, rollout(gym.make(env_id).unwrapped, 4, 200))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_pickle_round_trip(env_id):
    env = gym.make(env_id).unwrapped
    rollout(env, 1, 57)
    blob = pickle.dumps(env)
    assert len(blob) < 1_000_000
    clone = pickle.loads(blob)
    rng = np.random.default_rng(9)
    for _ in range(80):
        a = int(rng.integers(2))
        x, y = env.step(a), clone.step(a)
        assert np.array_equal(x[0], y[0]) and x[1:4] == y[1:4]
        if x[2] or x[3]:
            assert np.array_equal(env.reset()[0], clone.reset()[0])


def test_pickle_round_trip_keeps_the_stalls_stream():
    """A pickled env with hand-over stalls goes on exactly as the original (the stalls' own
    random stream travels with it, not restarted)."""
    env = DistrEEEnv(**FAST, cluster={"stall_probability": 0.3, "stall_mean_ms": 30.0})
    rollout(env, 1, 57)
    clone = pickle.loads(pickle.dumps(env))
    for _ in range(200):
        x, y = env.step(0), clone.step(0)
        assert np.array_equal(x[0], y[0]) and x[1:4] == y[1:4]
        if x[2] or x[3]:
            assert np.array_equal(env.reset()[0], clone.reset()[0])


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_spec_json(env_id):
    env = gym.make(env_id)
    spec = gym.envs.registration.EnvSpec.from_json(env.spec.to_json())
    assert spec.id == env_id and json.loads(env.spec.to_json())["kwargs"] == spec.kwargs


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_a_users_nested_override_keeps_the_ids_own_settings(env_id):
    """``gym.make(id, reward={...})`` changes only what it names: the id's own reward settings
    (v1's timing, v3's drain weight, HardDeadline's penalty) are dotted keys, which compose."""
    own = gym.make(env_id).unwrapped.config
    changed = gym.make(env_id, reward={"latency_weight": 0.2}).unwrapped.config
    assert changed == own.replace({"reward.latency_weight": 0.2})


def test_each_version_is_what_the_env_card_says():
    """v3 adds the queue's drain cost to v2; v1 cuts the same streams into 128-request
    episodes paid on the exit step; v2 is the defaults (the card's Version History)."""
    defaults = EnvConfig()
    v1, v2, v3 = (gym.make(f"DistrEE-Bursty-v{n}").unwrapped.config for n in (1, 2, 3))
    assert v2 == EnvConfig.scenario("bursty-stream") and v2.reward.drain_weight == 0.0
    assert v3 == v2.replace({"reward.drain_weight": 1.0})
    assert (v1.requests_per_episode, v1.episode_end, v1.reward.timing) == (
        128, "truncate", "request")  # fmt: skip
    assert (v2.requests_per_episode, v2.reward.timing) == (
        defaults.requests_per_episode, defaults.reward.timing)  # fmt: skip
    assert gym.make("DistrEE-v3").unwrapped.config.reward.drain_weight == 1.0


@pytest.mark.parametrize("vector", [False, True])
def test_episode_latency_figures_are_those_of_its_requests(vector):
    """An episode's mean and p95 latency are numpy's over the latencies of the requests it
    answered (v1: 128-request episodes)."""
    if vector:
        env = gym.make_vec("DistrEE-v1", num_envs=1, vectorization_mode="vector_entry_point",
                           autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)  # fmt: skip
    else:
        env = gym.make("DistrEE-v1")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    latencies = []
    while True:
        a = rng.integers(0, 2)
        _, _, terminated, truncated, info = env.step(np.array([a]) if vector else a)
        if vector and (terminated[0] or truncated[0]):
            info = {k: v[0] for k, v in info["final_info"].items() if not k.startswith("_")}
        elif vector:
            info = {k: v[0] for k, v in info.items() if not k.startswith("_")}
        if info["request_done"]:
            latencies.append(float(info["request_latency_ms"]))
        if np.any(terminated) or np.any(truncated):
            break
    assert len(latencies) == 128
    assert info["episode_latency_mean_ms"] == pytest.approx(np.mean(latencies))
    assert info["episode_latency_p95_ms"] == pytest.approx(np.percentile(latencies, 95))


def test_the_readme_env_card_is_the_generated_one():
    from experiments.env_card import card
    from experiments.readme import README

    text = README.read_text(encoding="utf-8")
    block = text.split("<!-- BEGIN env-card -->\n", 1)[1].split("<!-- END env-card -->", 1)[0]
    assert block.strip() == card().strip()


def test_registration_fresh_interpreter_and_no_torch():
    code = (
        "import sys, gymnasium as gym\n"
        "env = gym.make('distree_env:DistrEE-v2', trace='synthetic:n=100')\n"
        "env.reset(seed=0)\n"
        "import distree_env; distree_env.register_envs()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_unknown_keyword_is_type_error_and_values_are_value_errors():
    with pytest.raises(TypeError, match="unexpected keyword argument 'frameskip'"):
        DistrEEEnv(frameskip=4)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus.x'"):
        DistrEEEnv(**{"bogus.x": 1})
    with pytest.raises(TypeError, match=r"goes to reset\(seed=\.\.\.\)"):
        DistrEEEnv(seed=0)
    with pytest.raises(ValueError, match="deadline_ms"):
        DistrEEEnv(deadline_ms=-1.0, **FAST)
    with pytest.raises(ValueError, match="render_mode='video'"):
        DistrEEEnv(render_mode="video", **FAST)
    for mode in (None, "ansi", "rgb_array", "human"):
        assert DistrEEEnv(render_mode=mode, **FAST).render_mode == mode


def test_config_forms_at_construction():
    a = DistrEEEnv(EnvConfig.scenario("isolated", **FAST))
    b = DistrEEEnv(scenario="isolated", **FAST)
    c = DistrEEEnv(EnvConfig.scenario("isolated", **FAST).to_dict())
    assert a.config == b.config == c.config
    d = DistrEEEnv(**FAST, **{"reward.latency_weight": 0.25}, queue={"capacity": 3})
    assert d.config.reward.latency_weight == 0.25 and d.config.queue.capacity == 3


@pytest.mark.parametrize("make", [DistrEEEnv, lambda **kw: gym.make("DistrEE-Bursty-v3", **kw)])
def test_a_config_and_a_scenario_together_are_refused(make):
    """A scenario on top of a given config would overwrite it (an id passes its scenario)."""
    config = EnvConfig.scenario("cellular", **FAST)
    kwargs = {"scenario": "isolated"} if make is DistrEEEnv else {}
    with pytest.raises(ValueError, match="config= and scenario="):
        make(config=config, **kwargs)


def test_observation_layout_table_and_masks_before_reset():
    env = DistrEEEnv(**FAST)
    names = env.observation_names
    assert names[:5] == ("max_prob", "margin", "entropy", "feature_diff", "progress")
    assert names[-3:] == ("elapsed_ratio", "queue_len", "oldest_wait_ratio")
    d = env.num_devices
    assert names[5 : 5 + 2 * d] == tuple(
        [f"compute_{i}" for i in range(d)] + [f"bandwidth_{i}" for i in range(d)]
    )
    table = distree_env.observation_table(names)
    assert table.count("\n") == len(names) + 1 and "`oldest_wait_ratio`" in table
    assert "| `compute_<d>` |" in (DistrEEEnv.__doc__ or "")
    assert env.action_masks().tolist() == [True, True]  # before reset (issue 12)
    env.reset(seed=0)
    while env.action_masks()[0]:
        env.step(0)
    assert env.action_masks().tolist() == [False, True]


@pytest.mark.parametrize("bad", [2, -1, 0.5, "1", None, np.array([0, 1]), np.float32(1.0)])
def test_bad_action_raises(bad):
    env = DistrEEEnv(**FAST)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="Discrete"):
        env.step(bad)


def test_bool_actions_are_the_ints_the_action_space_contains():
    """``Discrete(2).contains(True)`` holds, so True is exit in both envs, as in CartPole."""
    single, other = DistrEEEnv(**FAST), DistrEEEnv(**FAST)
    single.reset(seed=0), other.reset(seed=0)
    for flag in (True, False, np.True_, np.array(True), False, True):
        a, b = single.step(flag), other.step(int(flag))
        np.testing.assert_array_equal(a[0], b[0])
        if a[2] or a[3]:
            single.reset(), other.reset()
    venv = DistrEEVecEnv(3, **FAST)
    venv.reset(seed=0)
    clone = pickle.loads(pickle.dumps(venv))
    flags = np.array([True, False, True])
    np.testing.assert_array_equal(venv.step(flags)[0], clone.step(flags.astype(np.int64))[0])


def test_accepts_numpy_actions_and_validates_seeds():
    env = DistrEEEnv(**FAST)
    env.reset(seed=np.int64(0))
    env.step(np.array(0))
    env.step(np.int64(1))
    for bad in (True, -1, 1.5, "3", 2**64):
        with pytest.raises(ValueError, match="seed="):
            env.reset(seed=bad)


def test_info_keys_stable_numpy_and_parts_sum_to_reward():
    env = DistrEEEnv(scenario="bursty-stream", **FAST)
    _, info0 = env.reset(seed=2)
    keys = set(STEP_INFO) | set(EPISODE_METRICS) | {"episode_done", "episode_exit_fractions"}
    assert set(info0) == keys
    rng = np.random.default_rng(0)
    for _ in range(400):
        _, reward, term, trunc, info = env.step(int(rng.integers(2)))
        assert set(info) == keys
        for key, value in info.items():
            if key in FLAG_KEYS:
                assert value.shape == () and value.dtype == bool, key  # np.bool_: object arrays
            else:
                assert isinstance(value, (np.generic, np.ndarray)), key
        parts = sum(info[k] for k in ("reward_correct", "reward_latency", "reward_deadline"))
        assert np.isclose(parts + info["reward_drop"], reward)
        if not info["request_done"]:  # continue steps: what the system accrued, and drops
            assert info["reward_correct"] == 0.0
            assert info["reward_latency"] < 0.0 and info["reward_deadline"] <= 0.0
            assert info["request_latency_ms"] == 0.0 and info["request_exit"] == -1
        if term or trunc:
            env.reset()


def test_deadline_counts_from_arrival():
    env = DistrEEEnv(  # request timing: the deadline penalty is paid on the answer step
        **FAST,
        arrivals={"kind": "poisson", "utilisation": 1.5},
        queue={"capacity": 8},
        reward={"timing": "request"},
    )
    env.reset(seed=0)
    waited = 0
    for _ in range(600):
        obs, _, term, trunc, info = env.step(0)
        if info["request_done"]:
            lat, wait = info["request_latency_ms"], info["request_wait_ms"]
            assert lat >= wait >= 0.0
            assert info["request_correct"] in (True, False)
            assert (info["reward_deadline"] < 0) == (lat > env.config.deadline_ms)
            waited += wait > 0
        if term or trunc:
            env.reset()
    assert waited > 10  # overloaded: requests wait, and the wait counts


def test_truncation_continues_the_stream_and_termination_restarts():
    env = DistrEEEnv(**FAST, requests_per_episode=3, episode_end="truncate")
    env.reset(seed=0)
    done = False
    while not done:
        obs, _, term, trunc, info = env.step(1)
        done = term or trunc
    assert trunc and not term and info["episode_requests"] == 3
    again, _ = env.reset()
    assert np.array_equal(obs, again)  # the stream goes on from the next decision
    iso = DistrEEEnv(scenario="isolated", **FAST, requests_per_episode=2)
    iso.reset(seed=0)
    iso.step(1)
    _, _, term, trunc, info = iso.step(1)
    assert term and not trunc
    assert np.isclose(info["episode_return"], info["episode_reward_per_request"] * 2)
    with pytest.raises(gym.error.ResetNeeded):
        iso.step(0)
    v2 = DistrEEEnv(**FAST)  # v2: a request is an episode, terminated; the stream goes on
    v2.reset(seed=0)
    obs, _, term, trunc, info = v2.step(1)
    assert term and not trunc and info["episode_requests"] == 1
    again, _ = v2.reset()
    assert np.array_equal(obs, again)


def test_the_next_episode_starts_from_the_envs_own_observation():
    """Writing into a returned observation (frame stacking, normalising in place) must not
    change what the continuing stream's next reset() returns."""
    env = DistrEEEnv(**FAST)
    env.reset(seed=0)
    obs, _, term, _, _ = env.step(1)
    expected = obs.copy()
    obs *= 0.0
    again, _ = env.reset()
    assert term and np.array_equal(again, expected)


def test_reseeding_a_continuing_stream_warns_once():
    """Seeding every episode restarts the stream with an empty queue each time: an evaluation
    that does so measures an idle cluster. The env says so, once."""
    env = DistrEEEnv(**FAST)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env.reset(seed=0)
        for _ in range(3 * RESEED_WARNING_AFTER):  # the intended use: one seed per stream
            if env.step(1)[2]:
                env.reset()
        for _ in range(3):  # a few seeded restarts mid-stream (as checkers do) are fine
            env.reset(seed=0)
        assert not caught
        for seed in range(2 * RESEED_WARNING_AFTER):  # an evaluation loop seeding every episode
            env.reset(seed=seed)
            while not env.step(1)[2]:
                pass
    assert [str(w.message).count("restarts the request stream") for w in caught] == [1]
    fresh = DistrEEEnv(scenario="isolated", **FAST)  # episode_end='terminate': fresh streams
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in range(2 * RESEED_WARNING_AFTER):
            fresh.reset(seed=seed)
            while not any(fresh.step(1)[2:4]):
                pass
    assert not caught


def test_last_exit_saves_nothing_first_exit_is_cheapest_and_oracle_is_best():
    results = {}
    for policy in ("last", "first", "oracle"):
        env = DistrEEEnv(scenario="stable", **FAST, requests_per_episode=64)
        env.reset(seed=1)
        total, end = 0.0, False
        while not end:
            a = {"last": 0, "first": 1}.get(policy, None)
            a = env.oracle_actions() if a is None else a
            _, r, term, trunc, info = env.step(a)
            total += r
            end = term or trunc
        results[policy] = (total, info)
    assert results["last"][1]["episode_compute_saving"] == 0.0
    assert results["first"][1]["episode_compute_saving"] > 0.5
    assert results["last"][1]["episode_exit_fractions"][-1] == 1.0
    assert results["oracle"][0] >= max(results["last"][0], results["first"][0])


def test_render_modes():
    env = DistrEEEnv(render_mode="ansi", **FAST)
    env.reset(seed=0)
    assert "elapsed_ratio=" in env.render()
    env = DistrEEEnv(render_mode="rgb_array", **FAST)
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
