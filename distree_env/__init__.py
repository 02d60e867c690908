"""distree-env: DistrEE (distributed early-exit inference on edge devices) as a Gymnasium env.

Importing the package registers the environments (idempotently); it imports only numpy and
gymnasium, never torch (the network lives in ``distree_env.model``, imported on demand).

    import gymnasium as gym
    env = gym.make("distree_env:DistrEE-v1")                 # works without importing first
    venv = gym.make_vec("DistrEE-v1", num_envs=64, vectorization_mode="vector_entry_point")
"""

from __future__ import annotations

from distree_env.config import (
    DEFAULT_PIPELINE_TRACE,
    DEFAULT_TRACE,
    SCENARIO_SOURCES,
    SCENARIOS,
    ArrivalConfig,
    ClusterConfig,
    EnvConfig,
    ProcessConfig,
    QueueConfig,
    RewardConfig,
)
from distree_env.env import DistrEEEnv, observation_table
from distree_env.registration import ENV_IDS, register_envs
from distree_env.traces import ExitTrace, resolve_trace, synthetic_trace
from distree_env.vector_env import DistrEEVecEnv

__version__ = "0.2.0"

__all__ = [
    "DEFAULT_PIPELINE_TRACE",
    "DEFAULT_TRACE",
    "ENV_IDS",
    "SCENARIOS",
    "SCENARIO_SOURCES",
    "ArrivalConfig",
    "ClusterConfig",
    "DistrEEEnv",
    "DistrEEVecEnv",
    "EnvConfig",
    "ExitTrace",
    "ProcessConfig",
    "QueueConfig",
    "RewardConfig",
    "observation_table",
    "register_envs",
    "resolve_trace",
    "synthetic_trace",
]

register_envs()
