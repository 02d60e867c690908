"""Environment configuration: frozen, JSON-friendly dataclasses with every field validated.

Why: people will pass odd values. A bad value must fail at construction with a ValueError that
names the field (dotted path), the value and what is allowed, never later as a NaN reward. All
defaults live here, in the dataclass fields, and nowhere else.

Use ``EnvConfig()``, ``EnvConfig.from_dict({...})`` (nested dicts, unknown keys rejected),
``EnvConfig.scenario("congested")`` and ``config.replace({"reward.latency_weight": 0.2})``
(dotted keys or nested dicts).
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from distree_env.cluster import DEVICE_PROFILES, LINK_PROFILES, RESOURCE_PROCESSES

__all__ = [
    "DEFAULT_PIPELINE_TRACE",
    "DEFAULT_TRACE",
    "SCENARIOS",
    "ClusterConfig",
    "EnvConfig",
    "ProcessConfig",
    "RewardConfig",
    "build_config",
]

#: The trace used by ``EnvConfig()``. Switch to "cifar10-val" once the exported traces are shipped.
DEFAULT_TRACE = "cifar10-val"
#: The trace used by the pipeline-topology variant.
DEFAULT_PIPELINE_TRACE = "synthetic-pipeline"
#: Named cluster presets, see :meth:`EnvConfig.scenario`.
SCENARIOS = ("stable", "fluctuating", "congested")

_PATH: contextvars.ContextVar[str] = contextvars.ContextVar("distree_config_path", default="")


def _bad(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{_PATH.get()}{name}={value!r} is not allowed: {allowed}")


def _number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """A finite real number within bounds (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(name, value, "expected a finite number")
    v = float(value)
    lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
    hi = "" if high is None else f"<= {high}"
    allowed = "a finite number " + " and ".join(x for x in (lo, hi) if x)
    if not math.isfinite(v):
        raise _bad(name, value, allowed)
    if low is not None and (v <= low if low_open else v < low):
        raise _bad(name, value, allowed)
    if high is not None and v > high:
        raise _bad(name, value, allowed)
    return v


def _integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, value, f"expected an integer in [{low}, {high}]")
    if not low <= value <= high:
        raise _bad(name, value, f"an integer in [{low}, {high}]")
    return value


def _share(name: str, value: Any) -> float:
    return _number(name, value, low=0.0, high=1.0, low_open=True)


def _tuple(value: Any) -> Any:
    """JSON lists become tuples, recursively, so configs stay hashable and frozen."""
    if isinstance(value, list):
        return tuple(_tuple(v) for v in value)
    return value


# ---- nested sections --------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcessConfig:
    """How availability (share of peak, in (0, 1]) evolves from request to request.

    kind: ``constant`` (``value``), ``iid`` (uniform in [``low``, ``high``]), ``markov``
    (states idle / busy / overloaded with availability ``levels`` and row-stochastic
    ``transition``; starts from its stationary distribution), or ``trace`` (replays ``csv``: one
    row per request, one column per device or link, values in (0, 1]; random start offset).
    """

    kind: str = "markov"
    value: float = 1.0
    low: float = 0.5
    high: float = 1.0
    levels: tuple[float, ...] = (1.0, 0.5, 0.2)
    transition: tuple[tuple[float, ...], ...] = (
        (0.90, 0.08, 0.02),
        (0.20, 0.70, 0.10),
        (0.10, 0.30, 0.60),
    )
    csv: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", _tuple(self.levels))
        object.__setattr__(self, "transition", _tuple(self.transition))
        if self.kind not in RESOURCE_PROCESSES:
            raise _bad("kind", self.kind, f"one of {', '.join(RESOURCE_PROCESSES)}")
        _share("value", self.value)
        lo, hi = _share("low", self.low), _share("high", self.high)
        if lo > hi:
            raise _bad("low", self.low, f"<= high ({self.high})")
        if not isinstance(self.levels, tuple) or len(self.levels) < 2:
            raise _bad("levels", self.levels, "a list of at least 2 availability levels in (0, 1]")
        for i, level in enumerate(self.levels):
            _share(f"levels[{i}]", level)
        s = len(self.levels)
        t = self.transition
        if (
            not isinstance(t, tuple)
            or len(t) != s
            or not all(isinstance(row, tuple) and len(row) == s for row in t)
        ):
            raise _bad("transition", t, f"a {s}x{s} matrix (one row and column per level)")
        for i, row in enumerate(t):
            for j, p in enumerate(row):
                _number(f"transition[{i}][{j}]", p, low=0.0, high=1.0)
            total = sum(float(p) for p in row)
            if abs(total - 1.0) > 1e-6:
                raise _bad(f"transition[{i}]", row, f"a row summing to 1 (sums to {total:.6g})")
        if self.kind == "trace":
            if not isinstance(self.csv, str) or not self.csv:
                raise _bad("csv", self.csv, "a path to an availability CSV when kind='trace'")
        elif self.csv is not None:
            raise _bad("csv", self.csv, "None unless kind='trace'")


def _default_bandwidth() -> ProcessConfig:
    return ProcessConfig(
        levels=(1.0, 0.4, 0.1),
        transition=((0.85, 0.12, 0.03), (0.25, 0.65, 0.10), (0.15, 0.35, 0.50)),
    )


@dataclass(frozen=True)
class ClusterConfig:
    """Devices, links and how their availability fluctuates.

    ``devices``/``links``: one entry per device (the trace fixes the count): a profile name from
    ``cluster.DEVICE_PROFILES`` / ``LINK_PROFILES`` or an explicit effective rate (FLOP/s,
    bytes/s). ``None`` repeats ``device_profile`` / ``link_profile``. Link ``d`` is device
    ``d``'s network link. ``link_latency_ms`` is the per-message latency of links given as numbers.
    """

    devices: tuple[str | float, ...] | None = None
    device_profile: str = "raspberry-pi-4"
    links: tuple[str | float, ...] | None = None
    link_profile: str = "wifi-5"
    link_latency_ms: float = 1.0
    compute: ProcessConfig = field(default_factory=ProcessConfig)
    bandwidth: ProcessConfig = field(default_factory=_default_bandwidth)

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", _tuple(self.devices))
        object.__setattr__(self, "links", _tuple(self.links))
        if self.device_profile not in DEVICE_PROFILES:
            raise _bad("device_profile", self.device_profile, f"one of {sorted(DEVICE_PROFILES)}")
        if self.link_profile not in LINK_PROFILES:
            raise _bad("link_profile", self.link_profile, f"one of {sorted(LINK_PROFILES)}")
        for name, entries, profiles, unit in (
            ("devices", self.devices, DEVICE_PROFILES, "FLOP/s"),
            ("links", self.links, LINK_PROFILES, "bytes/s"),
        ):
            if entries is None:
                continue
            if not isinstance(entries, tuple) or not entries:
                raise _bad(name, entries, "None or a non-empty list")
            for i, entry in enumerate(entries):
                if isinstance(entry, str):
                    if entry not in profiles:
                        raise _bad(f"{name}[{i}]", entry, f"a profile in {sorted(profiles)}")
                else:
                    _number(f"{name}[{i}]", entry, low=0.0, low_open=True)
                    if float(entry) > 1e18:
                        raise _bad(f"{name}[{i}]", entry, f"a plausible rate in {unit} (<= 1e18)")
        _number("link_latency_ms", self.link_latency_ms, low=0.0, high=1e5)
        for name in ("compute", "bandwidth"):
            if not isinstance(getattr(self, name), ProcessConfig):
                raise _bad(name, getattr(self, name), "a ProcessConfig or a dict")


@dataclass(frozen=True)
class RewardConfig:
    """Per-step reward: every visited stage costs ``latency_weight * stage_ms / deadline_ms``; the
    exit adds ``correct_bonus`` (or ``-wrong_penalty``) and ``-deadline_penalty`` if the request's
    total latency exceeds the deadline."""

    correct_bonus: float = 1.0
    wrong_penalty: float = 0.0
    latency_weight: float = 0.5
    deadline_penalty: float = 0.5

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _number(f.name, getattr(self, f.name), low=0.0, high=1e6)


# ---- top level --------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvConfig:
    """Everything that defines a DistrEE environment (see the env's docstring card).

    trace: ``"synthetic"``, ``"synthetic-pipeline"``, ``"synthetic:key=value,..."``, a shipped
    name (``"cifar10-val"``, ``"cifar10-test"``) or a path to an exit-trace ``.npz``.
    requests_per_episode: inference requests per episode. deadline_ms: QoS deadline of one
    request. max_latency_ratio: upper bound of the ``latency_ratio`` observation (clipped).
    """

    trace: str = DEFAULT_TRACE
    requests_per_episode: int = 32
    deadline_ms: float = 40.0
    max_latency_ratio: float = 4.0
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.trace, str) or not self.trace.strip():
            raise _bad("trace", self.trace, "a trace name or a path to an .npz file")
        _integer("requests_per_episode", self.requests_per_episode, 1, 1_000_000)
        _number("deadline_ms", self.deadline_ms, low=0.0, high=1e7, low_open=True)
        _number("max_latency_ratio", self.max_latency_ratio, low=1.0, high=1e6)
        if not isinstance(self.cluster, ClusterConfig):
            raise _bad("cluster", self.cluster, "a ClusterConfig or a dict")
        if not isinstance(self.reward, RewardConfig):
            raise _bad("reward", self.reward, "a RewardConfig or a dict")

    # ---- conversion ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvConfig:
        """Build from a (possibly partial, nested) dict; missing fields take their defaults."""
        return _build(cls, data, "")

    def replace(self, overrides: dict[str, Any] | None = None, **kwargs: Any) -> EnvConfig:
        """A copy with overrides: dotted keys (``"reward.latency_weight"``) or nested dicts."""
        merged = self.to_dict()
        for key, value in {**(overrides or {}), **kwargs}.items():
            _merge(merged, key, value)
        return EnvConfig.from_dict(merged)

    # ---- scenarios ----------------------------------------------------------------------------
    @classmethod
    def scenario(cls, name: str, **overrides: Any) -> EnvConfig:
        """Named cluster preset: ``stable`` (constant full availability), ``fluctuating`` (the
        default Markov processes), ``congested`` (links often slow, devices often overloaded)."""
        return cls().with_scenario(name).replace(overrides)

    def with_scenario(self, name: str) -> EnvConfig:
        """This config with the cluster's resource processes replaced by the preset ``name``."""
        if name not in SCENARIOS:
            raise ValueError(f"scenario={name!r} is not allowed: one of {', '.join(SCENARIOS)}")
        if name == "stable":
            compute, bandwidth = ProcessConfig(kind="constant"), ProcessConfig(kind="constant")
        elif name == "fluctuating":
            compute, bandwidth = ProcessConfig(), _default_bandwidth()
        else:
            compute = ProcessConfig(
                levels=(1.0, 0.5, 0.2),
                transition=((0.60, 0.30, 0.10), (0.15, 0.60, 0.25), (0.05, 0.25, 0.70)),
            )
            bandwidth = ProcessConfig(
                levels=(1.0, 0.3, 0.08),
                transition=((0.50, 0.35, 0.15), (0.10, 0.60, 0.30), (0.05, 0.25, 0.70)),
            )
        cluster = dataclasses.replace(self.cluster, compute=compute, bandwidth=bandwidth)
        return dataclasses.replace(self, cluster=cluster)


_NESTED: dict[type, dict[str, type]] = {
    EnvConfig: {"cluster": ClusterConfig, "reward": RewardConfig},
    ClusterConfig: {"compute": ProcessConfig, "bandwidth": ProcessConfig},
}


def _build(cls: type, data: Any, path: str) -> Any:
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        where = path.rstrip(".") or "config"
        raise ValueError(f"{where}={data!r} is not allowed: expected a dict or {cls.__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"{path}{unknown[0]} is not a known field of {cls.__name__}; allowed: {sorted(names)}"
        )
    kwargs = dict(data)
    for key, sub in _NESTED.get(cls, {}).items():
        if key in kwargs:
            kwargs[key] = _build(sub, kwargs[key], f"{path}{key}.")
    token = _PATH.set(path)
    try:
        return cls(**kwargs)
    finally:
        _PATH.reset(token)


def _merge(target: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key (or merge a nested dict) into a to_dict()-style mapping."""
    head, _, rest = key.partition(".")
    if rest:
        sub = target.get(head)
        if not isinstance(sub, dict):
            raise ValueError(f"{key} is not a known field: {head!r} is not a section")
        _merge(sub, rest, value)
        return
    if isinstance(value, dict) and isinstance(target.get(head), dict):
        for sub_key, sub_value in value.items():
            _merge(target[head], sub_key, sub_value)
        return
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = json.loads(json.dumps(dataclasses.asdict(value)))
    target[head] = value


def build_config(
    config: EnvConfig | dict[str, Any] | None = None,
    scenario: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> EnvConfig:
    """The config an environment is constructed with: ``config`` (an EnvConfig, a dict or None
    for the defaults), then the ``scenario`` preset, then keyword ``overrides`` (dotted keys or
    nested dicts)."""
    if config is None:
        cfg = EnvConfig()
    elif isinstance(config, EnvConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = EnvConfig.from_dict(config)
    else:
        raise ValueError(f"config={config!r} is not allowed: expected an EnvConfig, a dict or None")
    if scenario is not None:
        cfg = cfg.with_scenario(scenario)
    if overrides:
        cfg = cfg.replace(overrides)
    return cfg
