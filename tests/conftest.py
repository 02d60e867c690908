"""Shared fixtures: keep thread pools small (2-core machines) and point checkpoints at a temp dir
where a test needs shipped files."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

import distree_env  # noqa: E402

ENV_IDS = sorted(distree_env.ENV_IDS)


@pytest.fixture
def checkpoints(tmp_path, monkeypatch):
    """An empty checkpoints folder used instead of the repository's."""
    root = tmp_path / "checkpoints"
    (root / "traces").mkdir(parents=True)
    monkeypatch.setenv("DISTREE_CHECKPOINTS", str(root))
    return root
