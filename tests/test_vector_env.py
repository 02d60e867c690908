"""DistrEEVecEnv: make_vec, equivalence with the single env, determinism, autoreset, infos."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from distree_env import DistrEEEnv, DistrEEVecEnv, EnvConfig

from .conftest import ENV_IDS


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_make_vec_entry_point(env_id):
    venv = gym.make_vec(env_id, num_envs=8, vectorization_mode="vector_entry_point")
    assert isinstance(venv, DistrEEVecEnv)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (8, len(venv.observation_names))
    assert venv.observation_space.contains(obs)
    assert venv.unwrapped.config == gym.make(env_id).unwrapped.config
    assert venv.spec.to_json()


def _vec_rollout(venv, seed, steps, action_seed=0):
    rng = np.random.default_rng(action_seed)
    obs, _ = venv.reset(seed=seed)
    out = [obs]
    for _ in range(steps):
        obs, rew, term, trunc, info = venv.step(rng.integers(0, 2, venv.num_envs))
        out += [obs, rew, term, trunc]
        if "final_info" in info:
            out.append(info["final_info"]["accuracy"])
    return out


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_vector_same_seed_same_rollout(env_id):
    make = lambda: gym.make_vec(env_id, num_envs=5, vectorization_mode="vector_entry_point")  # noqa: E731
    assert _same(_vec_rollout(make(), 3, 200), _vec_rollout(make(), 3, 200))
    assert not _same(_vec_rollout(make(), 3, 50), _vec_rollout(make(), 4, 50))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_single_and_vector_identical(env_id):
    """A vector env with one sub-env replays the single env exactly (same seed, same actions)."""
    env = gym.make(env_id).unwrapped
    venv = gym.make_vec(env_id, num_envs=1, vectorization_mode="vector_entry_point")
    rng = np.random.default_rng(0)
    o1, _ = env.reset(seed=11)
    o2, _ = venv.reset(seed=11)
    assert np.array_equal(o1, o2[0])
    episodes = 0
    for _ in range(600):
        a = int(rng.integers(2))
        assert np.array_equal(env.action_masks(), venv.action_masks()[0])
        assert np.array_equal(env.request_latencies_ms, venv.request_latencies_ms[0])
        assert env.oracle_actions() == venv.oracle_actions()[0]
        o1, r1, t1, _, i1 = env.step(a)
        o2, r2, t2, _, i2 = venv.step(np.array([a]))
        assert r1 == r2[0] and t1 == t2[0]
        if t1:
            episodes += 1
            assert np.array_equal(o1, i2["final_obs"][0])
            for key in (
                "accuracy",
                "compute_saving",
                "latency_mean_ms",
                "latency_p95_ms",
                "qos_rate",
                "exit_fractions",
            ):
                assert np.allclose(i1[key], i2["final_info"][key][0]), key
            o1, _ = env.reset()
        assert np.array_equal(o1, o2[0])
    assert episodes >= 3


def test_autoreset_same_step_and_final_info():
    venv = DistrEEVecEnv(4, EnvConfig(requests_per_episode=3))
    venv.reset(seed=0)
    # always exit: every sub-env finishes after exactly 3 steps
    ones = np.ones(4, dtype=np.int64)
    for _ in range(2):
        _, _, term, trunc, info = venv.step(ones)
        assert not term.any() and not trunc.any() and info == {}
    obs, _, term, _, info = venv.step(ones)
    assert term.all()
    assert info["_final_info"].all() and info["_final_obs"].all()
    assert info["final_info"]["exit_fractions"].shape == (4, venv.num_exits)
    assert np.all(info["final_info"]["exit_fractions"][:, 0] == 1.0)
    assert np.all(info["final_info"]["compute_saving"] > 0)
    assert np.all(obs[:, 4] == 0.0)  # first exit of the next episode
    assert all(o.shape == (len(venv.observation_names),) for o in info["final_obs"])


def test_partial_termination_masks():
    venv = DistrEEVecEnv(3, requests_per_episode=1)
    venv.reset(seed=0)
    obs, _, term, _, info = venv.step(np.array([1, 0, 1]))
    assert term.tolist() == [True, False, True]
    assert info["_final_info"].tolist() == [True, False, True]
    assert info["_final_obs"].tolist() == [True, False, True]
    assert info["final_obs"].shape == (3, len(venv.observation_names))


@pytest.mark.parametrize(
    "bad",
    [
        np.array([0, 2, 1]),
        np.array([0, -1, 1]),
        np.array([0, 1]),
        np.array([0.0, 1.0, 0.0]),
        [[0, 1, 0]],
        "010",
    ],
)
def test_bad_actions_raise(bad):
    venv = DistrEEVecEnv(3)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="outside MultiDiscrete"):
        venv.step(bad)


def test_masks_and_oracle_shapes():
    venv = DistrEEVecEnv(6)
    venv.reset(seed=0)
    assert venv.action_masks().shape == (6, 2)
    assert venv.request_latencies_ms.shape == (6, venv.num_exits)
    assert venv.request_correct.dtype == bool
    assert set(np.unique(venv.oracle_actions())) <= {0, 1}
    venv.step(np.zeros(6, dtype=np.int64))
    assert venv.action_masks()[:, 0].all()


def test_vector_pickle_round_trip():
    venv = DistrEEVecEnv(4)
    _vec_rollout(venv, 2, 30)
    clone = pickle.loads(pickle.dumps(venv))
    rng = np.random.default_rng(5)
    for _ in range(80):
        a = rng.integers(0, 2, 4)
        x, y = venv.step(a), clone.step(a)
        for u, v in zip(x[:4], y[:4], strict=True):
            assert np.array_equal(u, v)


def test_num_envs_validated():
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="num_envs"):
            DistrEEVecEnv(bad)


def test_vector_uses_single_env_dynamics():
    """Statistics of many vector sub-envs match the single env's (same model, different draws)."""
    venv = DistrEEVecEnv(256)
    venv.reset(seed=0)
    lat_v = venv.request_latencies_ms[:, -1].mean()
    env = DistrEEEnv()
    env.reset(seed=1)
    lats = []
    for _ in range(512):
        lats.append(env.request_latencies_ms[-1])
        *_, term, _, _ = env.step(1)
        if term:
            env.reset()
    assert lat_v == pytest.approx(np.mean(lats), rel=0.15)


def _equivalent(config, steps=400, seed=5):
    env, venv = DistrEEEnv(config), DistrEEVecEnv(1, config)
    rng = np.random.default_rng(0)
    o1, _ = env.reset(seed=seed)
    o2, _ = venv.reset(seed=seed)
    assert np.array_equal(o1, o2[0])
    for _ in range(steps):
        a = int(rng.integers(2))
        o1, r1, t1, _, i1 = env.step(a)
        o2, r2, t2, _, i2 = venv.step(np.array([a]))
        assert r1 == r2[0] and t1 == t2[0]
        if t1:
            assert np.array_equal(o1, i2["final_obs"][0])
            assert i1["accuracy"] == i2["final_info"]["accuracy"][0]
            o1, _ = env.reset()
        assert np.array_equal(o1, o2[0])


def test_single_and_vector_identical_continuous_resources(tmp_path):
    """The non-tabulated path (iid / trace processes) also matches exactly."""
    csv = tmp_path / "avail.csv"
    rows = np.random.default_rng(0).uniform(0.1, 1.0, (50, 4))
    csv.write_text("\n".join(",".join(f"{v:.3f}" for v in row) for row in rows))
    config = EnvConfig.from_dict(
        {
            "trace": "synthetic",  # 4 devices, one CSV column each
            "requests_per_episode": 8,
            "cluster": {
                "compute": {"kind": "trace", "csv": str(csv)},
                "bandwidth": {"kind": "iid", "low": 0.2, "high": 0.9},
            },
        }
    )
    _equivalent(config)
    venv = DistrEEVecEnv(16, config)
    obs, _ = venv.reset(seed=0)
    for _ in range(300):  # several ring refills
        obs, *_ = venv.step(np.random.default_rng(1).integers(0, 2, 16))
        assert venv.observation_space.contains(obs)
    table = np.round(rows, 3).astype(np.float32)
    seen = obs[:, 5:9]  # compute shares replay rows of the CSV
    assert all(np.any(np.all(row == table, axis=1)) for row in seen)


def test_ring_refills_keep_vector_env_consistent():
    """Many episodes through a small vector env (the episode ring wraps several times) still
    replay a single env exactly."""
    _equivalent(EnvConfig(requests_per_episode=2), steps=3000, seed=9)


_METRICS_CODE = (
    "import numpy as np\n"
    "from distree_env import DistrEEVecEnv\n"
    "v = DistrEEVecEnv(8); v.reset(seed=123); rng = np.random.default_rng(0); out = []\n"
    "for _ in range(200):\n"
    "    *_, info = v.step(rng.integers(0, 2, 8))\n"
    "    if 'final_info' in info:\n"
    "        out += info['final_info']['latency_mean_ms'][info['_final_info']].tolist()\n"
    "print(repr(out))\n"
)


def test_metrics_identical_across_processes(capsys):
    """The same seed gives the same evaluation metrics in another process."""
    import subprocess
    import sys

    other = subprocess.run(
        [sys.executable, "-c", _METRICS_CODE], capture_output=True, text=True, check=True
    ).stdout
    exec(compile(_METRICS_CODE, "<metrics>", "exec"), {})
    here = capsys.readouterr().out
    assert here == other and len(here) > 10


@pytest.mark.parametrize("num_envs", [3, 70, 4100])
def test_episode_ring_never_overruns(num_envs):
    """Half the sub-envs always continue (longest episodes), half always exit (shortest): the
    ring of pre-generated episodes must never be refilled under a running episode."""
    venv = DistrEEVecEnv(num_envs, requests_per_episode=4)
    venv.reset(seed=0)
    actions = (np.arange(num_envs) % 2).astype(np.int64)
    steps = 60 if num_envs > 1000 else 400
    finished = 0
    for _ in range(steps):
        _, _, term, _, _ = venv.step(actions)
        finished += int(term.sum())
    assert finished > num_envs
