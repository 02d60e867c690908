"""skrl PPO on the vector env with its default trainer (not headless: it renders through
``VectorEnv.call``), as skrl's docs show (issue 12's table) and docs/libraries.md runs it: with
``SAME_STEP`` autoreset, since skrl takes a vector env's step to reset within it."""

from __future__ import annotations

import pytest

pytest.importorskip("skrl", reason="needs the test extra: pip install -e '.[test]'")

import gymnasium as gym  # noqa: E402
import torch  # noqa: E402
from skrl.agents.torch.ppo import PPO  # noqa: E402
from skrl.envs.wrappers.torch import wrap_env  # noqa: E402
from skrl.memories.torch import RandomMemory  # noqa: E402
from skrl.models.torch import CategoricalMixin, DeterministicMixin, Model  # noqa: E402
from skrl.trainers.torch import SequentialTrainer  # noqa: E402
from torch import nn  # noqa: E402

ENV_ID = "DistrEE-v3"
torch.set_num_threads(1)


class _Policy(CategoricalMixin, Model):
    def __init__(self, observation_space, action_space, device):
        Model.__init__(self, observation_space=observation_space, action_space=action_space,
                       device=device)  # fmt: skip
        CategoricalMixin.__init__(self)
        self.net = nn.Sequential(nn.Linear(self.num_observations, 32), nn.Tanh(),
                                 nn.Linear(32, self.num_actions))  # fmt: skip

    def compute(self, inputs, role=""):
        return self.net(inputs["observations"]), {}


class _Value(DeterministicMixin, Model):
    def __init__(self, observation_space, action_space, device):
        Model.__init__(self, observation_space=observation_space, action_space=action_space,
                       device=device)  # fmt: skip
        DeterministicMixin.__init__(self)
        self.net = nn.Sequential(nn.Linear(self.num_observations, 32), nn.Tanh(), nn.Linear(32, 1))

    def compute(self, inputs, role=""):
        return self.net(inputs["observations"]), {}


def test_skrl_ppo_on_the_vector_env(tmp_path):
    venv = gym.make_vec(
        ENV_ID,
        num_envs=4,
        vectorization_mode="vector_entry_point",
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    env = wrap_env(venv)
    assert env.num_envs == 4
    models = {
        "policy": _Policy(env.observation_space, env.action_space, env.device),
        "value": _Value(env.observation_space, env.action_space, env.device),
    }
    agent = PPO(
        models=models,
        memory=RandomMemory(memory_size=16, num_envs=env.num_envs, device=env.device),
        observation_space=env.observation_space,
        action_space=env.action_space,
        device=env.device,
        cfg={"rollouts": 16, "experiment": {"directory": str(tmp_path)}},
    )
    # skrl closes the env at interpreter exit, logging to a stream pytest has closed by then;
    # the test closes it itself.
    trainer = SequentialTrainer(
        env=env, agents=agent, cfg={"timesteps": 64, "close_environment_at_exit": False}
    )
    assert not trainer.cfg.headless  # the default: skrl calls env.render() every step
    trainer.train()
    env.close()
    # every stored transition is a decision: none is a NEXT_STEP reset step (reward 0, action
    # ignored) right after an episode's end, which skrl would learn from as a real step
    memory = agent.memory
    ended = memory.get_tensor_by_name("terminated").squeeze(-1)
    rewards = memory.get_tensor_by_name("rewards").squeeze(-1)
    after_end = torch.zeros_like(ended)
    after_end[1:] = ended[:-1]
    assert after_end.sum() > 0 and (rewards[after_end] != 0).all()
