"""What the benchmark evaluates, as specs: rule sweeps, baselines, agents, last exit, Oracle.

Why a spec and not a policy object: one spec is evaluated on every seed of both splits, and the
report needs to know which curve (family) each point belongs to and what kind of policy it is.
Threshold grids are placed at quantiles of each feature on the ``val`` trace, and the baselines
are calibrated on val (``agents.calibrate_baselines``); nothing here reads the test trace.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.calibration import BaselineFit
from agents.oracle import Oracle
from agents.rules import (
    ConfidenceThreshold,
    EntropyThreshold,
    FeatureDifference,
    FixedExit,
    LastExit,
)
from distree_env import SCENARIOS
from distree_env.dynamics import EXIT_FEATURES, exit_features
from distree_env.traces import ExitTrace

__all__ = [
    "BASELINE",
    "LEARNED",
    "NON_LEARNED",
    "REFERENCE",
    "RULE",
    "AgentFile",
    "PolicySpec",
    "agent_file",
    "baseline_specs",
    "discover_agents",
    "learned_specs",
    "reference_specs",
    "rule_specs",
    "threshold_grid",
]

#: Kinds of policy, as the report groups them: classic rules (see the confidence features only),
#: calibrated baselines (see the whole observation), learned agents, and the references.
RULE, BASELINE, LEARNED, REFERENCE = "rule", "baseline", "learned", "reference"
#: The kinds a learned agent is compared with: policies that decide from the observation alone.
NON_LEARNED = (RULE, BASELINE)

#: Threshold rules: class, the feature it reads, and whether it exits above (True) or below.
_THRESHOLD_RULES: tuple[tuple[type, str, bool], ...] = (
    (ConfidenceThreshold, "max_prob", True),
    (EntropyThreshold, "entropy", False),
    (FeatureDifference, "feature_diff", False),
)


@dataclass(frozen=True)
class PolicySpec:
    """One point of the benchmark: a policy, the curve it belongs to and how to build it."""

    family: str  # curve: "ConfidenceThreshold", "PPO", "Planner", ...
    name: str  # unique label, e.g. "ConfidenceThreshold(0.95)"
    kind: str  # RULE, BASELINE, LEARNED or REFERENCE
    param: float | None  # threshold or exit index of a rule; None otherwise
    build: Callable[[], Any] = field(compare=False, repr=False)


def threshold_grid(trace: ExitTrace, feature: str, exits_above: bool, points: int) -> list[float]:
    """``points`` thresholds at exit rates strictly between 0 and 1 on ``trace`` (denser at low
    exit rates, where accuracy stays close to the last exit's). Why not 0 and 1: at a rate of 1
    the rule exits at its first exit on every request and is only ``FixedExit`` again (it showed
    up as the best-reward point of ``FeatureDifference``); at 0 it nearly never exits early."""
    if points < 2:
        raise ValueError(f"points={points!r} is not allowed: at least 2 thresholds per rule")
    feats, _ = exit_features(trace)
    k = trace.num_exits
    column = feats[:, EXIT_FEATURES.index(feature)].reshape(trace.n, k)
    first = 1 if feature == "feature_diff" else 0  # feature_diff is 1.0 at exit 0 by definition
    values = column[:, first : max(k - 1, first + 1)].ravel().astype(np.float64)
    n_low = points // 2
    spread = np.linspace(0.0, 1.0, points - n_low + 2)[1:-1]
    rates = np.concatenate([spread, np.geomspace(0.005, 0.3, n_low)])
    levels = 1.0 - rates if exits_above else rates
    grid = np.unique(np.round(np.quantile(values, np.clip(levels, 0.0, 1.0)), 4))
    return [float(t) for t in np.clip(grid, 0.0, 1.0)]


def rule_specs(grid_trace: ExitTrace, points: int) -> list[PolicySpec]:
    """Every threshold rule over its grid, plus ``FixedExit(k)`` for every exit but the last
    (a static split; the last is :class:`LastExit`)."""
    specs = [
        PolicySpec("FixedExit", f"FixedExit({k})", RULE, float(k), lambda k=k: FixedExit(k))
        for k in range(grid_trace.num_exits - 1)
    ]
    for cls, feature, above in _THRESHOLD_RULES:
        for t in threshold_grid(grid_trace, feature, above, points):
            specs.append(
                PolicySpec(
                    cls.__name__, f"{cls.__name__}({t:g})", RULE, t, lambda cls=cls, t=t: cls(t)
                )
            )
    return specs


def reference_specs() -> list[PolicySpec]:
    """The full network (accuracy reference of every saving) and the per-request Oracle."""
    return [
        PolicySpec("LastExit", "LastExit", REFERENCE, None, LastExit),
        PolicySpec("Oracle", "Oracle", REFERENCE, None, Oracle),
    ]


def baseline_specs(fits: dict[str, BaselineFit]) -> list[PolicySpec]:
    """The calibrated baselines (``agents.calibrate_baselines`` on val), one point each."""
    return [
        PolicySpec(name.split("[")[0], name, BASELINE, None, lambda fit=fit: fit.policy)
        for name, fit in fits.items()
    ]


# ---- learned agents -----------------------------------------------------------------------------
_AGENT_FILE = re.compile(r"^(?P<algo>[a-z0-9_]+?)(?:-(?P<scenario>[a-z0-9-]+))?\.zip$")


@dataclass(frozen=True)
class AgentFile:
    """A pretrained agent: its algorithm, the scenario it was trained for (None: a generalist,
    evaluated on every scenario), and how to ask ``agents.load_agent`` for it."""

    algo: str
    scenario: str | None
    ref: str


def agent_file(ref: str) -> AgentFile:
    """The agent ``ref`` (a shipped name such as ``"ppo-steady-stream"`` or a path): algorithm
    and scenario come from the file name, ``<algo>-<scenario>[-<variant>].zip`` with a scenario
    of ``SCENARIOS`` (the variant joins the algorithm in the row name: ``PPO-W1[steady-stream]``);
    any other name is an agent of no scenario, named by its whole stem."""
    name = Path(ref).name if ref.endswith(".zip") else f"{ref}.zip"
    match = _AGENT_FILE.match(name)
    if match is None or match["scenario"] is None:
        return AgentFile(Path(name).stem, None, ref)
    rest = match["scenario"]
    for scenario in sorted(SCENARIOS, key=len, reverse=True):  # the longest name that fits
        if rest == scenario:
            return AgentFile(match["algo"], scenario, ref)
        if rest.startswith(scenario + "-"):
            return AgentFile(f"{match['algo']}-{rest[len(scenario) + 1 :]}", scenario, ref)
    return AgentFile(Path(name).stem, None, ref)


def agent_name(agent: AgentFile) -> str:
    """The agent's row name: ``PPO[bursty-stream]``, or the stem in capitals."""
    family = agent.algo.upper()
    return family if agent.scenario is None else f"{family}[{agent.scenario}]"


def check_distinct_names(agents: Sequence[AgentFile]) -> None:
    """ValueError when two agents would share a row name (``best_model.zip`` of two runs): the
    table would pool them as if they were one agent's seeds."""
    refs: dict[str, list[str]] = {}
    for agent in agents:
        refs.setdefault(agent_name(agent), []).append(agent.ref)
    shared = {name: paths for name, paths in refs.items() if len(paths) > 1}
    if shared:
        name, paths = next(iter(shared.items()))
        raise ValueError(
            f"--agents {' and '.join(paths)} would share the row name {name} (the benchmark "
            "names an agent by its file name): copy them to distinct names, e.g. "
            "ppo-run1.zip, ppo-run2.zip, or ALGO-SCENARIO.zip"
        )


def discover_agents(directory: Path) -> list[AgentFile]:
    """Agents shipped in ``directory`` (``<algo>[-<scenario>].zip``), by name."""
    if not directory.is_dir():
        return []
    return [
        agent_file(path.stem)
        for path in sorted(directory.glob("*.zip"))
        if _AGENT_FILE.match(path.name) is not None
    ]


def learned_specs(agents: Sequence[AgentFile], load: Callable[[str], Any]) -> list[PolicySpec]:
    """One spec per agent, family = the algorithm; each agent is loaded once, on first use."""
    specs = []
    for agent in agents:
        cache: dict[str, Any] = {}

        def build(ref: str = agent.ref, cache: dict[str, Any] = cache) -> Any:
            if ref not in cache:
                cache[ref] = load(ref)
            return cache[ref]

        specs.append(PolicySpec(agent.algo.upper(), agent_name(agent), LEARNED, None, build))
    return specs
