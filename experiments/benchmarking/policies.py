"""What the benchmark evaluates: rule sweeps, learned agents and the reference policies.

Why a spec and not a policy object: one spec is evaluated on every scenario and seed, and the
report needs to know which curve (family) each point belongs to and what kind of policy it is.
Threshold grids are placed at quantiles of each feature on the grid trace (the ``val`` split),
so a sweep covers the whole range of exit rates whatever the network's calibration is; every
grid point is reported, none is selected on the benchmark trace here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.rules import (
    ConfidenceThreshold,
    EntropyThreshold,
    FixedExit,
    LastExit,
    Oracle,
    RandomExit,
    Similarity,
)
from distree_env._core import EXIT_FEATURES, exit_features
from distree_env.trace import ExitTrace

__all__ = [
    "BASELINE",
    "LEARNED",
    "RULE",
    "AgentFile",
    "PolicySpec",
    "agent_file",
    "baseline_specs",
    "discover_agents",
    "learned_specs",
    "matched_random_spec",
    "random_exit_probability",
    "rule_specs",
    "threshold_grid",
]

#: Kinds of policy, as the report groups them.
RULE, LEARNED, BASELINE = "rule", "learned", "baseline"

#: Threshold rules: class, the feature it reads, and whether it exits above (True) or below.
_THRESHOLD_RULES: tuple[tuple[type, str, bool], ...] = (
    (ConfidenceThreshold, "max_prob", True),
    (EntropyThreshold, "entropy", False),
    (Similarity, "similarity", True),
)


@dataclass(frozen=True)
class PolicySpec:
    """One point of the benchmark: a policy, the curve it belongs to and how to build it."""

    family: str  # curve: "ConfidenceThreshold", "PPO", "RandomExit", ...
    name: str  # unique label, e.g. "ConfidenceThreshold(0.95)"
    kind: str  # RULE, LEARNED or BASELINE
    param: float | None  # threshold, exit index, latency weight or exit probability
    build: Callable[[], Any] = field(compare=False, repr=False)


def threshold_grid(trace: ExitTrace, feature: str, exits_above: bool, points: int) -> list[float]:
    """``points`` thresholds spanning exit rates 0..1 on ``trace`` (denser at low exit rates,
    where accuracy stays close to the last exit's)."""
    if points < 2:
        raise ValueError(f"points={points!r} is not allowed: at least 2 thresholds per rule")
    feats, _ = exit_features(trace)
    k = trace.num_exits
    column = feats[:, EXIT_FEATURES.index(feature)].reshape(trace.n, k)
    values = column[:, : max(k - 1, 1)].ravel().astype(np.float64)
    n_low = points // 2
    rates = np.concatenate([np.linspace(0.0, 1.0, points - n_low), np.geomspace(0.005, 0.3, n_low)])
    levels = 1.0 - rates if exits_above else rates
    grid = np.unique(np.round(np.quantile(values, np.clip(levels, 0.0, 1.0)), 4))
    return [float(t) for t in np.clip(grid, 0.0, 1.0)]


def rule_specs(grid_trace: ExitTrace, points: int) -> list[PolicySpec]:
    """Every threshold rule over its grid, plus ``FixedExit(k)`` for every exit (a static split)."""
    specs = [
        PolicySpec("FixedExit", f"FixedExit({k})", RULE, float(k), lambda k=k: FixedExit(k))
        for k in range(grid_trace.num_exits)
    ]
    for cls, feature, above in _THRESHOLD_RULES:
        for t in threshold_grid(grid_trace, feature, above, points):
            specs.append(
                PolicySpec(
                    cls.__name__, f"{cls.__name__}({t:g})", RULE, t, lambda cls=cls, t=t: cls(t)
                )
            )
    return specs


def baseline_specs() -> list[PolicySpec]:
    """The full network (accuracy reference of every saving) and the label-aware upper bound."""
    return [
        PolicySpec("LastExit", "LastExit", BASELINE, None, LastExit),
        PolicySpec("Oracle", "Oracle", BASELINE, None, Oracle),
    ]


# ---- learned agents -----------------------------------------------------------------------------
_AGENT_FILE = re.compile(r"^(?P<algo>[a-z0-9_]+?)(?:_lw(?P<lw>\d+(?:\.\d+)?))?\.zip$")


@dataclass(frozen=True)
class AgentFile:
    """A pretrained agent: its algorithm, the latency weight it was trained with, and how to
    ask ``agents.load_agent`` for it (a shipped name or a path)."""

    algo: str
    latency_weight: float
    ref: str


def agent_file(ref: str, default_latency_weight: float) -> AgentFile:
    """The agent ``ref`` (a shipped name such as ``"ppo"`` or a path): its algorithm and latency
    weight come from the file name, ``<algo>[_lw<weight>].zip``."""
    name = Path(ref).name if ref.endswith(".zip") else f"{ref}.zip"
    match = _AGENT_FILE.match(name)
    if match is None:
        return AgentFile(Path(name).stem, default_latency_weight, ref)
    lw = default_latency_weight if match["lw"] is None else float(match["lw"])
    return AgentFile(match["algo"], lw, ref)


def discover_agents(directory: Path, default_latency_weight: float) -> list[AgentFile]:
    """Agents in ``directory``: ``<algo>.zip`` (shipped, asked for by name, trained at the default
    latency weight) and ``<algo>_lw<weight>.zip`` (by path); where both give the same weight,
    the shipped ``<algo>.zip`` is kept."""
    found: dict[tuple[str, float], AgentFile] = {}
    if not directory.is_dir():
        return []
    for path in sorted(directory.glob("*.zip")):
        if _AGENT_FILE.match(path.name) is None:
            continue
        plain = "_lw" not in path.stem
        agent = agent_file(path.stem if plain else str(path), default_latency_weight)
        key = (agent.algo, agent.latency_weight)
        if plain or key not in found:
            found[key] = agent
    return sorted(found.values(), key=lambda a: (a.algo, a.latency_weight))


def learned_specs(agents: Sequence[AgentFile], load: Callable[[str], Any]) -> list[PolicySpec]:
    """One spec per agent; the family is the algorithm, the parameter its latency weight. Each
    agent is loaded once, on first use, and shared by every scenario and seed."""
    specs = []
    for agent in agents:
        cache: dict[str, Any] = {}

        def build(ref: str = agent.ref, cache: dict[str, Any] = cache) -> Any:
            if ref not in cache:
                cache[ref] = load(ref)
            return cache[ref]

        family = agent.algo.upper()
        specs.append(
            PolicySpec(
                family,
                f"{family}(lw={agent.latency_weight:g})",
                LEARNED,
                agent.latency_weight,
                build,
            )
        )
    return specs


# ---- random exit at a given compute -------------------------------------------------------------
def cumulative_flops(trace: ExitTrace) -> np.ndarray:
    """``[K]`` FLOPs spent by a request that exits at each exit (all devices, heads included)."""
    per_stage = trace.stage_flops.sum(axis=1) + trace.exit_flops
    return np.cumsum(per_stage.astype(np.float64))


def _random_saving(p: float, cum: np.ndarray) -> float:
    k = len(cum)
    stay = (1.0 - p) ** np.arange(k)
    share = np.append(p * stay[:-1], stay[-1])  # exit at k < K-1 with p, the rest at the end
    return float(1.0 - share @ cum / cum[-1])


def random_exit_probability(target_saving: float, trace: ExitTrace) -> float:
    """The ``p`` of ``RandomExit(p)`` whose expected compute saving equals ``target_saving``
    (exact, from the trace's FLOPs; clipped to what random exits can reach)."""
    cum = cumulative_flops(trace)
    lo, hi = 0.0, 1.0
    if target_saving <= 0.0:
        return 0.0
    if target_saving >= _random_saving(1.0, cum):
        return 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _random_saving(mid, cum) < target_saving:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def matched_random_spec(target: str, target_saving: float, trace: ExitTrace) -> PolicySpec:
    """``RandomExit`` spending the compute of the policy ``target``: the floor it must beat."""
    p = round(random_exit_probability(target_saving, trace), 4)
    return PolicySpec(
        "RandomExit", f"RandomExit({p:g}) ~ {target}", BASELINE, p, lambda p=p: RandomExit(p)
    )
