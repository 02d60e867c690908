"""Gymnasium ids of the DistrEE environments, registered on ``import distree_env``.

Why a module of its own (as Gymnasium keeps ``envs/registration.py`` apart from the envs): the
list of ids is data that the README, rl-zoo3 hyperparameters and tests iterate over.
``v0`` ids keep the first version's dynamics (isolated requests); ``v1``, ``v2`` and ``v3`` ids
are load-coupled request streams, v2 (the defaults) with one request per episode and system-wide
latency costs, v3 adding the queue's drain cost at each episode end (see
``distree_env.config.SCENARIOS`` and the env card's Version History).
"""

from __future__ import annotations

from typing import Any

from gymnasium.envs.registration import register, registry

from distree_env.config import DEFAULT_PIPELINE_TRACE

__all__ = ["ENV_IDS", "STREAMS", "V1_EPISODES", "V3_REWARD", "register_envs"]

#: How v1 ids cut a stream into episodes and pay rewards (v2 changed only these).
V1_EPISODES: dict[str, Any] = {
    "requests_per_episode": 128,
    "episode_end": "truncate",
    "reward.timing": "request",
}
#: What v3 ids add to v2's: each episode's end pays the change in the queue's drain cost.
V3_REWARD: dict[str, Any] = {"reward.drain_weight": 1.0}
#: The stream scenarios of the v2 and v3 ids, by the name in the id (``DistrEE-<name>v2``).
STREAMS: dict[str, str] = {
    "": "steady-stream",
    "Bursty-": "bursty-stream",
    "WiFi-": "wifi-contention",
    "Cellular-": "cellular",
    "AzureCode-": "azure-code",
    "Pipeline-": "pipeline",
    "Pipelined-": "pipelined-stream",
}
#: Registered ids and their constructor kwargs (JSON-friendly, so ``spec.to_json()`` works).
#: Nested settings are dotted keys, never dicts: ``gym.make(id, reward={...})`` replaces a
#: ``reward`` keyword of the spec as a whole, while dotted keys and a user's dict compose.
ENV_IDS: dict[str, dict[str, Any]] = {
    # v0: the first version's dynamics (scenario "isolated" and its variants).
    "DistrEE-v0": {"scenario": "isolated"},
    "DistrEE-Pipeline-v0": {"scenario": "isolated", "trace": DEFAULT_PIPELINE_TRACE},
    "DistrEE-HardDeadline-v0": {
        "scenario": "isolated",
        "deadline_ms": 20.0,
        "reward.deadline_penalty": 2.0,
    },
    "DistrEE-Congested-v0": {"scenario": "congested"},
    "DistrEE-Stable-v0": {"scenario": "stable"},
    # v2 (the defaults): request streams with queues, resources in wall-clock time; every
    # request is an episode and each decision pays the latency accrued by the whole system.
    **{f"DistrEE-{name}v2": {"scenario": scenario} for name, scenario in STREAMS.items()},
    # v3: v2 with the queue's drain cost at each episode end (reward.drain_weight = 1).
    **{
        f"DistrEE-{name}v3": {"scenario": scenario, **V3_REWARD}
        for name, scenario in STREAMS.items()
    },
    # v1: the same streams in 128-request truncated episodes with rewards on the exit step.
    "DistrEE-v1": {"scenario": "steady-stream", **V1_EPISODES},
    "DistrEE-Bursty-v1": {"scenario": "bursty-stream", **V1_EPISODES},
    "DistrEE-WiFi-v1": {"scenario": "wifi-contention", **V1_EPISODES},
    "DistrEE-Cellular-v1": {"scenario": "cellular", **V1_EPISODES},
    "DistrEE-Pipeline-v1": {"scenario": "pipeline", **V1_EPISODES},
    "DistrEE-Isolated-v1": {"scenario": "isolated", **V1_EPISODES},
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
