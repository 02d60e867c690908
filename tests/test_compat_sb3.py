"""Stable-Baselines3 and sb3-contrib, called the way their docs show (issue 12's table)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("stable_baselines3", reason="needs the train extra: pip install -e '.[train]'")

import gymnasium as gym  # noqa: E402
import torch  # noqa: E402
from sb3_contrib import MaskablePPO  # noqa: E402
from sb3_contrib.common.maskable.utils import get_action_masks  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402

ENV_ID = "DistrEE-v0"
#: The first version and the default scenario of v1, v2 and v3 (request streams).
VERSIONS = ("DistrEE-v0", "DistrEE-v1", "DistrEE-v2", "DistrEE-v3")
torch.set_num_threads(1)


@pytest.mark.parametrize("env_id", VERSIONS)
def test_make_vec_env_eight_envs_and_ppo_defaults(env_id):
    """SB3 asks for render_mode='rgb_array' and falls back only on TypeError."""
    venv = make_vec_env(env_id, n_envs=8, seed=0)
    assert venv.num_envs == 8 and venv.render_mode == "rgb_array"
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    frames = venv.get_images()
    assert len(frames) == 8 and all(f.ndim == 3 and f.dtype == np.uint8 for f in frames)


def test_action_masks_before_reset_and_maskable_ppo():
    """sb3-contrib's get_action_masks works on a fresh env (MaskablePPO asks before reset)."""
    env = gym.make(ENV_ID)
    masks = get_action_masks(env)
    assert masks.dtype == bool and masks.shape == (2,) and masks.any()
    venv = make_vec_env(ENV_ID, n_envs=2, seed=0)
    assert get_action_masks(venv).shape == (2, 2)
    MaskablePPO("MlpPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0,
                device="cpu").learn(64)  # fmt: skip
