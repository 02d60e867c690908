"""distree-env: DistrEE (distributed early-exit inference on edge devices) as a Gymnasium env.

Importing the package registers the environments (idempotently); it imports only numpy and
gymnasium, never torch (the network lives in ``distree_env.model``, imported on demand).

    import gymnasium as gym
    env = gym.make("distree_env:DistrEE-v0")                 # works without importing first
    venv = gym.make_vec("DistrEE-v0", num_envs=64, vectorization_mode="vector_entry_point")
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from distree_env.config import (
    DEFAULT_PIPELINE_TRACE,
    DEFAULT_TRACE,
    SCENARIOS,
    ClusterConfig,
    EnvConfig,
    ProcessConfig,
    RewardConfig,
)
from distree_env.env import DistrEEEnv
from distree_env.trace import ExitTrace, resolve_trace, synthetic_trace
from distree_env.vector_env import DistrEEVecEnv

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PIPELINE_TRACE",
    "DEFAULT_TRACE",
    "ENV_IDS",
    "ClusterConfig",
    "DistrEEEnv",
    "DistrEEVecEnv",
    "EnvConfig",
    "ExitTrace",
    "ProcessConfig",
    "RewardConfig",
    "SCENARIOS",
    "register_envs",
    "resolve_trace",
    "synthetic_trace",
]

#: Registered ids and their constructor kwargs (JSON-friendly, so ``spec.to_json()`` works).
ENV_IDS: dict[str, dict] = {
    # The default: parallel topology (DistrEE), fluctuating (Markov) resources.
    "DistrEE-v0": {},
    # Pipeline topology (MDI-Exit): one backbone cut across devices in sequence.
    "DistrEE-Pipeline-v0": {"config": {"trace": DEFAULT_PIPELINE_TRACE}},
    # A tight QoS requirement: half the deadline, four times the miss penalty.
    "DistrEE-HardDeadline-v0": {
        "config": {"deadline_ms": 20.0, "reward": {"deadline_penalty": 2.0}}
    },
    # Links often slow, devices often overloaded.
    "DistrEE-Congested-v0": {"scenario": "congested"},
    # Constant, full availability: the exit decision only trades accuracy for compute.
    "DistrEE-Stable-v0": {"scenario": "stable"},
}


def register_envs() -> None:
    """Register every id in :data:`ENV_IDS` (idempotent: existing ids are left alone)."""
    for env_id, kwargs in ENV_IDS.items():
        if env_id in registry:
            continue
        register(
            id=env_id,
            entry_point="distree_env.env:DistrEEEnv",
            vector_entry_point="distree_env.vector_env:DistrEEVecEnv",
            kwargs=kwargs,
            disable_env_checker=False,
        )


register_envs()
