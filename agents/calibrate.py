"""Calibrate rule thresholds on the ``val`` trace: best mean reward, and cheapest within a budget.

Why: a rule is only a fair baseline with its best threshold, and "best" has two readings: the
threshold with the highest mean reward (the RL objective), and the cheapest threshold whose
accuracy stays within ``max_accuracy_loss`` of last-exit (how early-exit papers report). Both are
found on ``val``; asking for a test trace is an error, raised before the trace is read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.evaluate import evaluate
from agents.rules import (
    ConfidenceThreshold,
    EntropyThreshold,
    FixedExit,
    LastExit,
    RandomExit,
    RulePolicy,
    Similarity,
)
from agents.splits import check_not_test, trace_split
from distree_env.config import EnvConfig, build_config
from distree_env.trace import resolve_trace

__all__ = ["CALIBRATED_RULES", "Calibration", "calibrate", "calibrate_all"]

_UNIT_GRID = tuple(float(x) for x in np.round(np.linspace(0.0, 1.0, 41), 3))


def _fixed_grid(num_exits: int) -> tuple[float, ...]:
    return tuple(float(k) for k in range(num_exits))


#: Rule name -> (factory from one parameter, grid of that parameter or a function of K).
CALIBRATED_RULES: dict[str, tuple[Callable[[float], RulePolicy], Any]] = {
    "FixedExit": (lambda k: FixedExit(int(k)), _fixed_grid),
    "RandomExit": (RandomExit, _UNIT_GRID),
    "ConfidenceThreshold": (ConfidenceThreshold, _UNIT_GRID),
    "EntropyThreshold": (EntropyThreshold, _UNIT_GRID),
    "Similarity": (Similarity, _UNIT_GRID),
}


@dataclass(frozen=True)
class Calibration:
    """Result of one rule's sweep: the chosen parameters and every point of the sweep."""

    rule: str
    best_reward_param: float
    cheapest_param: float | None  # None when no parameter meets the accuracy budget
    last_exit_accuracy: float
    max_accuracy_loss: float
    sweep: tuple[tuple[float, dict[str, Any]], ...]

    def policy(self, which: str = "reward") -> RulePolicy:
        """The rule at its best-reward (``"reward"``) or cheapest (``"cheapest"``) parameter."""
        param = self.best_reward_param if which == "reward" else self.cheapest_param
        if param is None:
            raise ValueError(f"{self.rule}: no parameter within the accuracy budget")
        return CALIBRATED_RULES[self.rule][0](param)


def calibrate(
    rule: str,
    config: EnvConfig | dict[str, Any] | None = None,
    max_accuracy_loss: float = 0.01,
    grid: Sequence[float] | None = None,
    n_requests: int = 4096,
    seed: int = 0,
    num_envs: int = 64,
) -> Calibration:
    """Sweep ``rule``'s parameter on ``config``'s (val) trace; see the module docstring."""
    if rule not in CALIBRATED_RULES:
        raise ValueError(f"rule={rule!r} is not allowed: one of {', '.join(CALIBRATED_RULES)}")
    if not (isinstance(max_accuracy_loss, (int, float)) and 0.0 <= max_accuracy_loss <= 1.0):
        raise ValueError(f"max_accuracy_loss={max_accuracy_loss!r}: expected a number in [0, 1]")
    config = build_config(config)
    check_not_test(config, "calibrate")
    if trace_split(config.trace) == "test":
        raise ValueError(f"calibrate: trace {config.trace!r} is marked split='test' in metadata")
    factory, default_grid = CALIBRATED_RULES[rule]
    if grid is None:
        num_exits = resolve_trace(config.trace).num_exits
        grid = default_grid(num_exits) if callable(default_grid) else default_grid
    run = dict(config=config, n_requests=n_requests, seed=seed, num_envs=num_envs)
    reference = evaluate(LastExit(), **run)["accuracy"]
    sweep = tuple((float(p), evaluate(factory(p), **run)) for p in grid)
    best = max(sweep, key=lambda pm: pm[1]["mean_reward"])[0]
    within = [pm for pm in sweep if pm[1]["accuracy"] >= reference - max_accuracy_loss]
    cheapest = max(within, key=lambda pm: pm[1]["compute_saving"])[0] if within else None
    return Calibration(rule, best, cheapest, reference, float(max_accuracy_loss), sweep)


def calibrate_all(
    config: EnvConfig | dict[str, Any] | None = None, **kwargs: Any
) -> dict[str, Calibration]:
    """:func:`calibrate` for every rule in :data:`CALIBRATED_RULES`."""
    return {rule: calibrate(rule, config, **kwargs) for rule in CALIBRATED_RULES}
