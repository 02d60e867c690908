"""Gymnasium's own tools on DistrEE: vector wrappers, make_vec keywords, the unknown-keyword
TypeError other libraries fall back on, and one meaning per info key in every vectorization mode
(issue 12's table)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.wrappers import vector as vw

from distree_env.dynamics import FLAG_KEYS

ENV_ID = "DistrEE-v0"
#: The first version and the default scenario of v1, v2 and v3 (request streams).
VERSIONS = ("DistrEE-v0", "DistrEE-v1", "DistrEE-v2", "DistrEE-v3")
MODES = ("sync", "async", "vector_entry_point")
NUMPY = (np.generic, np.ndarray)


def _reward_parts(info: dict) -> dict:
    """The step's reward parts (``reward_*``): they add up to the step's reward."""
    return {k: v for k, v in info.items() if k.startswith("reward_")}


@pytest.mark.parametrize(
    "wrap",
    [
        vw.NormalizeObservation,
        vw.FlattenObservation,
        lambda v: vw.DtypeObservation(v, np.float64),
        lambda v: vw.TransformObservation(v, lambda o: 2 * o, None),
    ],
    ids=["NormalizeObservation", "FlattenObservation", "DtypeObservation", "TransformObservation"],
)
def test_vector_observation_wrappers_on_the_entry_point(wrap):
    venv = wrap(gym.make_vec(ENV_ID, num_envs=4, vectorization_mode="vector_entry_point"))
    obs, _ = venv.reset(seed=0)
    venv.action_space.seed(0)
    ended = 0
    for _ in range(120):
        obs, _, term, trunc, _ = venv.step(venv.action_space.sample())
        ended += int((term | trunc).sum())
        assert obs.shape[0] == 4 and np.isfinite(obs).all()
    assert ended >= 1  # the wrappers saw episode ends (the autoreset mode matters there)
    venv.close()


@pytest.mark.parametrize("mode", MODES)
def test_make_vec_max_episode_steps_in_every_mode(mode):
    venv = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode=mode, max_episode_steps=20)
    venv.reset(seed=0)
    for step in range(1, 21):
        _, _, term, trunc, _ = venv.step(np.zeros(2, dtype=np.int64))  # always continue
        assert not term.any()  # an episode has 32 requests: at least 32 steps
        assert trunc.all() == (step == 20)
    venv.close()


@pytest.mark.parametrize("mode", MODES)
def test_make_vec_render_mode_in_every_mode(mode):
    venv = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode=mode, render_mode="rgb_array")
    assert venv.render_mode == "rgb_array"
    venv.close()


def test_unknown_keyword_is_a_type_error_and_a_bad_value_a_value_error():
    """Libraries (SB3, torchrl) try extra keywords and fall back only on TypeError."""
    with pytest.raises(TypeError, match="unexpected keyword argument 'frameskip'"):
        gym.make(ENV_ID, frameskip=4)
    with pytest.raises(TypeError, match="unexpected keyword argument 'frameskip'"):
        gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="vector_entry_point", frameskip=4)
    with pytest.raises(ValueError, match="deadline_ms"):
        gym.make(ENV_ID, deadline_ms=-1.0)


# ---- one meaning per info key ----------------------------------------------------------------
def _flat(info: dict, prefix: str = "") -> dict:
    """Nested info dicts as ``a/b`` keys; Gymnasium's ``_key`` masks left out."""
    out = {}
    for key, value in info.items():
        if key.startswith("_"):
            continue
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _single_infos(env_id: str, steps: int) -> list[dict]:
    env = gym.make(env_id)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    infos = []
    for _ in range(steps):
        _, reward, term, trunc, info = env.step(int(rng.integers(0, 2)))
        infos.append((reward, info))
        if term or trunc:
            env.reset()
    return infos


def _vector_infos(env_id: str, mode: str, steps: int) -> list[dict]:
    venv = gym.make_vec(env_id, num_envs=2, vectorization_mode=mode)
    venv.reset(seed=0)
    rng = np.random.default_rng(0)
    infos = []
    for _ in range(steps):
        _, rewards, _, _, info = venv.step(rng.integers(0, 2, 2))
        infos.append((rewards, info))
    venv.close()
    return infos


@pytest.mark.parametrize("env_id", VERSIONS)
def test_single_env_info_is_numpy_with_the_same_keys_every_step(env_id):
    """torchrl infers info specs from one step: keys must not come and go, values are numpy
    (flags 0-d bool arrays: Gymnasium's sync vector env batches np.bool_ into object arrays)."""
    infos = _single_infos(env_id, 150)
    keys = set(_flat(infos[0][1]))
    for _, info in infos:
        flat = _flat(info)
        assert set(flat) == keys
        bad = {
            k: type(v).__name__
            for k, v in flat.items()
            if not isinstance(v, NUMPY) or (k in FLAG_KEYS and v.shape != ())
        }
        assert not bad, f"info values that are not numpy: {bad}"


@pytest.mark.parametrize("mode", MODES)
def test_vector_info_values_are_typed_arrays_in_every_mode(mode):
    """No object arrays (they break torch.as_tensor and boolean indexing); flags are bool."""
    for _, info in _vector_infos("DistrEE-v3", mode, 40):
        for key, value in _flat(info).items():
            assert isinstance(value, np.ndarray) and value.dtype != object, key
            if key in FLAG_KEYS:
                assert value.dtype == bool, key


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("env_id", VERSIONS)
def test_info_keys_and_meaning_equal_across_modes(env_id, mode):
    """The same keys in the single env and every vector mode, and the reward parts are step
    values in all of them: they add up to the step's reward."""
    single_keys = set()
    for reward, info in _single_infos(env_id, 150):
        single_keys |= set(_flat(info))
        parts = sum(float(v) for v in _reward_parts(info).values())
        assert parts == pytest.approx(float(reward), abs=1e-5)
    vector_keys = set()
    for rewards, info in _vector_infos(env_id, mode, 150):
        vector_keys |= set(_flat(info))
        assert len(_reward_parts(info)) >= 3 or not rewards.any()  # a reset step pays nothing
        for i in range(2):
            parts = sum(float(v[i]) for v in _reward_parts(info).values())
            assert parts == pytest.approx(float(rewards[i]), abs=1e-5)
    assert vector_keys == single_keys
