"""Shared helpers of the test suite."""

from __future__ import annotations

import numpy as np


def last_exit_latencies(env, n: int) -> np.ndarray:
    """Latencies of the next ``n`` requests of a single env's stream, each run to its last exit
    (``reset`` without a seed after every episode: the stream goes on)."""
    latencies = []
    while len(latencies) < n:
        _, _, terminated, truncated, info = env.step(0)
        if info["request_done"]:
            latencies.append(float(info["request_latency_ms"]))
        if terminated or truncated:
            env.reset()
    return np.array(latencies)
