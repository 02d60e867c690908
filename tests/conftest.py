"""Shared fixtures: keep thread pools small (2-core machines), point checkpoints at a temp dir
where a test needs shipped files, and run the tests that change the host's network one at a
time across pytest-xdist workers."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

import distree_env  # noqa: E402

ENV_IDS = sorted(distree_env.ENV_IDS)


@pytest.fixture
def host_network():
    """Held while a test shapes links in the kernel: its namespaces share one fixed subnet and
    are checked by name in the host-wide ``ip netns list``, so two such tests on two workers
    would collide."""
    name = f"distree-env-host-network-{os.getuid()}.lock"  # another user's file is not ours
    with open(Path(tempfile.gettempdir()) / name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture
def checkpoints(tmp_path, monkeypatch):
    """An empty checkpoints folder used instead of the repository's."""
    root = tmp_path / "checkpoints"
    (root / "traces").mkdir(parents=True)
    monkeypatch.setenv("DISTREE_CHECKPOINTS", str(root))
    return root
