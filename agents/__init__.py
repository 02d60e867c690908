"""Exit policies for DistrEE, their calibration on val, and the one path that evaluates them.

Rules, strong baselines, the Oracle and SB3 agents. Rules, baselines and ``evaluate`` need only
numpy; ``load_agent`` imports torch and stable-baselines3 when called.
"""

from __future__ import annotations

from typing import Any

from agents.baselines import DeadlineAware, LoadAware, PerExitThreshold, Planner
from agents.calibration import (
    BASELINES,
    CALIBRATED_RULES,
    BaselineFit,
    Calibration,
    calibrate,
    calibrate_all,
    calibrate_baselines,
)
from agents.evaluation import METRICS, EvalResult, evaluate
from agents.oracle import Oracle
from agents.policy import Policy
from agents.rules import (
    ConfidenceThreshold,
    EntropyThreshold,
    FeatureDifference,
    FixedExit,
    LastExit,
    RandomExit,
    RulePolicy,
)

__all__ = [
    "BASELINES",
    "CALIBRATED_RULES",
    "METRICS",
    "BaselineFit",
    "Calibration",
    "ConfidenceThreshold",
    "DeadlineAware",
    "EntropyThreshold",
    "EvalResult",
    "FeatureDifference",
    "FixedExit",
    "LastExit",
    "LoadAware",
    "Oracle",
    "PerExitThreshold",
    "Planner",
    "Policy",
    "RandomExit",
    "RulePolicy",
    "calibrate",
    "calibrate_all",
    "calibrate_baselines",
    "evaluate",
    "load_agent",
]


def load_agent(name_or_path: str, trust: bool = False, algo: str | None = None) -> Any:
    """See :func:`agents.loading.load_agent` (imported here on first use: it needs torch)."""
    from agents.loading import load_agent as _load

    return _load(name_or_path, trust=trust, algo=algo)
