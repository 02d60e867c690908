"""torchrl, called the way its docs show: GymEnv by id, GymWrapper around a vector env, and the
info reader that infers specs from a rollout (issue 12's table)."""

from __future__ import annotations

import pytest

pytest.importorskip("torchrl", reason="needs the test extra: pip install -e '.[test]'")

import gymnasium as gym  # noqa: E402
import torch  # noqa: E402
from gymnasium.vector import AutoresetMode  # noqa: E402
from torchrl.envs import GymEnv, GymWrapper  # noqa: E402

ENV_ID = "DistrEE-v0"
torch.set_num_threads(1)


def test_gym_env_by_id():
    """torchrl passes keywords such as ``frameskip`` and falls back only on TypeError."""
    env = GymEnv(ENV_ID)
    td = env.rollout(40)
    assert td.batch_size[0] >= 1 and td["observation"].dtype == torch.float32


def test_info_dict_reader_infers_specs_from_a_rollout():
    """The reader needs numpy values and the same keys on every step."""
    env = GymEnv(ENV_ID)
    env.auto_register_info_dict()
    td = env.rollout(60, break_when_any_done=False)
    info_keys = set(td.keys()) - {"observation", "action", "next", "done", "terminated",
                                  "truncated"}  # fmt: skip
    assert info_keys, "no info key was read"
    assert all(torch.isfinite(td[k].float()).all() for k in info_keys if td[k].is_floating_point())


def test_gym_wrapper_on_the_vector_entry_point():
    """torchrl accepts SAME_STEP (or DISABLED) vector envs, not NEXT_STEP."""
    venv = gym.make_vec(ENV_ID, num_envs=4, vectorization_mode="vector_entry_point",
                        autoreset_mode=AutoresetMode.SAME_STEP)  # fmt: skip
    env = GymWrapper(venv)
    td = env.rollout(60, break_when_any_done=False)
    assert td.batch_size[:1] == torch.Size([4]) and td["next", "done"].any()
