"""Hand-made exit rules, behind SB3's ``predict`` interface so one evaluation path serves all.

Why: learned agents are only worth their cost if they beat the classic rules. Each rule reads the
features it needs by name (``observation_names``), so it keeps working if the observation layout
grows. ``bind(env)`` tells a rule the layout and exit count of the environment it will act in;
``agents.evaluate`` calls it. The stronger, calibrated baselines live in ``agents.baselines``, the
per-request hindsight Oracle in ``agents.oracle``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from distree_env.dynamics import POLICY_SPAWN_KEY

__all__ = [
    "CONTINUE",
    "EXIT",
    "ConfidenceThreshold",
    "EntropyThreshold",
    "FeatureDifference",
    "FixedExit",
    "LastExit",
    "RandomExit",
    "RulePolicy",
]

#: The confidence features every DistrEE observation starts with (resources, time and queue
#: follow); the layout of an unbound rule.
DEFAULT_FEATURES = ("max_prob", "margin", "entropy", "feature_diff", "progress")
CONTINUE, EXIT = 0, 1


def check_number(name: str, value: Any, low: float = 0.0, high: float = 1.0) -> float:
    """``value`` as a float if it is a finite number in [low, high], else a ValueError naming
    ``name``, the value and the range (a policy parameter; bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}={value!r}: expected a number in [{low:g}, {high:g}]")
    if not (math.isfinite(float(value)) and low <= float(value) <= high):
        raise ValueError(f"{name}={value!r} is outside [{low:g}, {high:g}]")
    return float(value)


def check_integer(name: str, value: Any, low: int) -> int:
    """``value`` as an int if it is an integer >= ``low`` (numpy's too; bools refused), else a
    ValueError naming ``name`` (``"evaluate: n_requests"``: the function and its argument)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}={value!r}; expected an integer >= {low}")
    return int(value)


class RulePolicy:
    """Base of the rules: feature look-up by name and SB3's ``predict`` signature."""

    def __init__(self) -> None:
        self.observation_names: tuple[str, ...] = DEFAULT_FEATURES
        self.num_exits: int | None = None

    def bind(self, env: Any) -> RulePolicy:
        """Adopt ``env``'s observation layout and exit count; returns self for chaining."""
        self.observation_names = tuple(env.observation_names)
        self.num_exits = int(env.num_exits)
        return self

    def feature(self, obs: np.ndarray, name: str) -> np.ndarray:
        """Column ``name`` of a batch of observations, ``[n]``."""
        try:
            idx = self.observation_names.index(name)
        except ValueError:
            raise ValueError(
                f"{type(self).__name__}: observation has no feature {name!r}; "
                f"it has {list(self.observation_names)}"
            ) from None
        return obs[:, idx]

    def exit_index(self, obs: np.ndarray) -> np.ndarray:
        """0-based index of the current exit, from ``progress`` = k / (K - 1)."""
        if self.num_exits is None:
            raise ValueError(f"{type(self).__name__}: call bind(env) first (needs the exit count)")
        last = self.num_exits - 1
        k = np.rint(self.feature(obs, "progress") * last).astype(np.int64)
        return np.clip(k, 0, last)

    def decide(self, obs: np.ndarray) -> np.ndarray:
        """Boolean ``[n]``: True where the rule exits."""
        raise NotImplementedError

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """SB3's ``predict`` over :meth:`decide`: a row or a batch in, ``EXIT``/``CONTINUE`` out."""
        obs = np.asarray(observation, dtype=np.float32)
        single = obs.ndim == 1
        batch = obs[None, :] if single else obs
        actions = np.where(self.decide(batch), EXIT, CONTINUE).astype(np.int64)
        return (actions[0] if single else actions), state

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LastExit(RulePolicy):
    """Never exit early: the full network, the accuracy reference of compute saving."""

    def decide(self, obs: np.ndarray) -> np.ndarray:
        """Never exit (the env answers at the last exit by itself)."""
        return np.zeros(len(obs), dtype=bool)


class FixedExit(RulePolicy):
    """Always answer at exit ``k`` (0-based): the static split of a multi-exit network."""

    def __init__(self, k: int) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"FixedExit.k: expected an integer >= 0, got {k!r}")
        self.k = int(k)

    def bind(self, env: Any) -> FixedExit:
        """Adopt ``env``'s layout; refuses a ``k`` past its last exit."""
        super().bind(env)
        if self.k >= self.num_exits:
            raise ValueError(
                f"FixedExit.k: {self.k} but the environment has exits 0..{self.num_exits - 1}"
            )
        return self

    def decide(self, obs: np.ndarray) -> np.ndarray:
        """Exit once the request has reached exit ``k``."""
        return self.exit_index(obs) >= self.k

    def __repr__(self) -> str:
        return f"FixedExit({self.k})"


class RandomExit(RulePolicy):
    """Exit with probability ``p`` at each exit: the floor any informed rule must beat."""

    def __init__(self, p: float, seed: int = 0) -> None:
        super().__init__()
        self.p = check_number("RandomExit.p", p)
        self.seed(seed)

    def seed(self, seed: int) -> None:
        """Restart the rule's own generator (``evaluate`` does this, for reproducible runs),
        spawned from ``seed`` apart from the environment's draws (``POLICY_SPAWN_KEY``)."""
        self.rng = np.random.default_rng(
            np.random.SeedSequence(seed, spawn_key=(POLICY_SPAWN_KEY,))
        )

    def decide(self, obs: np.ndarray) -> np.ndarray:
        """Exit each row independently with probability ``p``."""
        return self.rng.random(len(obs)) < self.p

    def __repr__(self) -> str:
        return f"RandomExit({self.p:g})"


class _Threshold(RulePolicy):
    def __init__(self, t: float) -> None:
        super().__init__()
        self.t = check_number(f"{type(self).__name__}.t", t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.t:g})"


class ConfidenceThreshold(_Threshold):
    """Exit when the top-1 probability reaches ``t`` (SDN, Kaya et al. 2019)."""

    def decide(self, obs: np.ndarray) -> np.ndarray:
        """Exit where ``max_prob >= t``."""
        return self.feature(obs, "max_prob") >= self.t


class EntropyThreshold(_Threshold):
    """Exit when the normalised entropy is ``t`` or below (BranchyNet, Teerapittayanon 2016)."""

    def decide(self, obs: np.ndarray) -> np.ndarray:
        """Exit where ``entropy <= t``."""
        return self.feature(obs, "entropy") <= self.t


class FeatureDifference(_Threshold):
    """Exit at exit k >= 1 when consecutive exits agree, ``feature_diff <= t`` (DistrEE's
    criterion: half the distance between the normalised embeddings of exits k-1 and k)."""

    def decide(self, obs: np.ndarray) -> np.ndarray:
        """Exit where ``feature_diff <= t``, never at exit 0 (nothing to agree with there)."""
        return (self.feature(obs, "feature_diff") <= self.t) & (self.feature(obs, "progress") > 0)
