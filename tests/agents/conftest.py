"""Fixtures of the agents' tests."""

from __future__ import annotations

import pytest

import distree_env.traces.registry as registry
from distree_env.manifest import record
from distree_env.traces import synthetic_trace


@pytest.fixture
def shipped(checkpoints, monkeypatch):
    """cifar10-val / cifar10-test look-alikes; records every trace file that is read."""
    for split, seed in (("val", 0), ("test", 1)):
        path = checkpoints / "traces" / f"cifar10-{split}.npz"
        synthetic_trace(n=600, seed=seed).save(path)
        record(path, "test")
    reads: list[str] = []
    original = registry.read_trace_bytes

    def spy(path):
        reads.append(str(path))
        return original(path)

    monkeypatch.setattr(registry, "read_trace_bytes", spy)
    return reads
