"""Gymnasium ids of the DistrEE environments, registered on ``import distree_env``.

Why a module of its own (as Gymnasium keeps ``envs/registration.py`` apart from the envs): the
list of ids is data that the README, rl-zoo3 hyperparameters and tests iterate over.
``v0`` ids keep the first version's dynamics (isolated requests); ``v1`` ids are load-coupled
request streams (see ``distree_env.config.SCENARIOS`` and the env card's Version History).
"""

from __future__ import annotations

from typing import Any

from gymnasium.envs.registration import register, registry

from distree_env.config import DEFAULT_PIPELINE_TRACE

__all__ = ["ENV_IDS", "register_envs"]

#: Registered ids and their constructor kwargs (JSON-friendly, so ``spec.to_json()`` works).
ENV_IDS: dict[str, dict[str, Any]] = {
    # v0: the first version's dynamics (scenario "isolated" and its variants).
    "DistrEE-v0": {"scenario": "isolated"},
    "DistrEE-Pipeline-v0": {"scenario": "isolated", "trace": DEFAULT_PIPELINE_TRACE},
    "DistrEE-HardDeadline-v0": {
        "scenario": "isolated",
        "deadline_ms": 20.0,
        "reward": {"deadline_penalty": 2.0},
    },
    "DistrEE-Congested-v0": {"scenario": "congested"},
    "DistrEE-Stable-v0": {"scenario": "stable"},
    # v1: request streams with queues, resources in wall-clock time, per-request rewards.
    "DistrEE-v1": {"scenario": "steady-stream"},
    "DistrEE-Bursty-v1": {"scenario": "bursty-stream"},
    "DistrEE-WiFi-v1": {"scenario": "wifi-contention"},
    "DistrEE-Cellular-v1": {"scenario": "cellular"},
    "DistrEE-Pipeline-v1": {"scenario": "pipeline"},
    "DistrEE-Isolated-v1": {
        "scenario": "isolated",
        "requests_per_episode": 128,
        "episode_end": "truncate",
        "reward": {"timing": "request"},
    },
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
