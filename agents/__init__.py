"""Exit policies for DistrEE: rules, calibration, one evaluation path, and SB3 agents.

Rules and ``evaluate`` need only numpy; ``load_agent`` imports torch and stable-baselines3 when
called.
"""

from __future__ import annotations

from typing import Any

from agents.calibrate import CALIBRATED_RULES, Calibration, calibrate, calibrate_all
from agents.evaluate import METRICS, evaluate
from agents.rules import (
    ConfidenceThreshold,
    EntropyThreshold,
    FixedExit,
    LastExit,
    Oracle,
    RandomExit,
    RulePolicy,
    Similarity,
)

__all__ = [
    "CALIBRATED_RULES",
    "METRICS",
    "Calibration",
    "ConfidenceThreshold",
    "EntropyThreshold",
    "FixedExit",
    "LastExit",
    "Oracle",
    "RandomExit",
    "RulePolicy",
    "Similarity",
    "calibrate",
    "calibrate_all",
    "evaluate",
    "load_agent",
]


def load_agent(name_or_path: str, trust: bool = False, algo: str | None = None) -> Any:
    """See :func:`agents.loading.load_agent` (imported here on first use: it needs torch)."""
    from agents.loading import load_agent as _load

    return _load(name_or_path, trust=trust, algo=algo)
