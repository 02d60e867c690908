"""What an exit policy is (:class:`Policy`), and a trained SB3 model wrapped as one.

Why: callers (``evaluate``, the benchmark, users) should not have to know whether an agent was
trained with ``VecNormalize`` or with MaskablePPO. Normalisation statistics are stored as a plain
``.npz`` (read with ``allow_pickle=False``), not as SB3's pickled ``VecNormalize``, so loading
them can never run code.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from distree_env.io import atomic_write, read_npz

__all__ = [
    "BindablePolicy",
    "MismatchedStatistics",
    "ObsNormalizer",
    "Policy",
    "SB3Policy",
    "as_policy",
    "files_sha256",
    "find_vecnormalize",
    "load_vecnormalize",
    "read_obs_normalizer",
    "save_vecnormalize",
    "sidecar",
]


@runtime_checkable
class Policy(Protocol):
    """Anything that maps a batch of observations to actions the way SB3 models do: rules,
    baselines, the Oracle, :class:`SB3Policy`. ``observation`` is ``[n, obs_dim]`` (or one
    ``[obs_dim]`` row); the result is ``([n] int actions, 0 = continue / 1 = exit; state)``."""

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """Actions for ``observation``; ``state`` is passed back (recurrent policies use it)."""


@runtime_checkable
class BindablePolicy(Policy, Protocol):
    """A :class:`Policy` that must learn the environment's layout before acting:
    ``bind(env)`` reads ``env.observation_names`` and ``env.num_exits`` (the Oracle also keeps
    the env) and returns the policy. ``agents.evaluate`` calls it when present."""

    def bind(self, env: Any) -> BindablePolicy:
        """Adopt ``env``'s observation layout and exit count; returns the policy."""


_NORM_KEYS = (
    "obs_mean",
    "obs_var",
    "obs_count",
    "ret_mean",
    "ret_var",
    "ret_count",
    "clip_obs",
    "clip_reward",
    "epsilon",
    "gamma",
    "norm_obs",
)
#: The statistics that are vectors (one entry per observation column); the others are numbers.
_NORM_VECTORS = ("obs_mean", "obs_var")
#: The key under which statistics name the sha256 of the archive they were saved with.
_MODEL_SHA256 = "model_sha256"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class MismatchedStatistics(ValueError):
    """Normalisation statistics saved with another archive than the one beside them (a save
    stopped between writing the two files): the model would see observations scaled wrongly."""


@dataclass(frozen=True)
class ObsNormalizer:
    """VecNormalize's observation transform: ``clip((obs - mean) / sqrt(var + eps), +-clip)``."""

    mean: np.ndarray
    var: np.ndarray
    clip_obs: float
    epsilon: float

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Normalised ``obs`` as float32, what the network was trained on."""
        scaled = (obs - self.mean) / np.sqrt(self.var + self.epsilon)
        return np.clip(scaled, -self.clip_obs, self.clip_obs).astype(np.float32)


def save_vecnormalize(path: str | os.PathLike, venv: Any, model_sha256: str | None = None) -> None:
    """Write a ``VecNormalize``'s statistics to ``path`` (``.npz``) atomically.

    :param model_sha256: the sha256 of the archive saved with them, which loading then checks.
    """
    arrays = {
        "obs_mean": venv.obs_rms.mean, "obs_var": venv.obs_rms.var,
        "obs_count": np.float64(venv.obs_rms.count),
        "ret_mean": np.float64(venv.ret_rms.mean), "ret_var": np.float64(venv.ret_rms.var),
        "ret_count": np.float64(venv.ret_rms.count),
        "clip_obs": np.float64(venv.clip_obs), "clip_reward": np.float64(venv.clip_reward),
        "epsilon": np.float64(venv.epsilon), "gamma": np.float64(venv.gamma),
        "norm_obs": np.float64(venv.norm_obs),
    }  # fmt: skip
    if model_sha256 is not None:
        arrays[_MODEL_SHA256] = np.array(model_sha256)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _check_model(path: str | os.PathLike, arrays: dict, model_path: str | os.PathLike) -> None:
    """Refuse statistics that name another archive than ``model_path`` (statistics without a
    name, from :func:`save_vecnormalize` called by hand, are taken as they are)."""
    if _MODEL_SHA256 not in arrays:
        return
    named = arrays[_MODEL_SHA256]
    if named.shape != () or named.dtype.kind != "U" or not _HEX64.fullmatch(str(named)):
        raise ValueError(
            f"normalisation statistics {str(path)!r}: {_MODEL_SHA256} must be one sha256 "
            "(64 lowercase hex digits)"
        )
    from distree_env.manifest import sha256_of

    if sha256_of(model_path) != str(named):
        raise MismatchedStatistics(
            f"normalisation statistics {str(path)!r} were saved with another model than "
            f"{str(model_path)!r} (a save stopped between the two files); the model would see "
            "wrongly scaled observations"
        )


def _read_norm(
    path: str | os.PathLike, model_path: str | os.PathLike | None = None
) -> dict[str, np.ndarray]:
    arrays = read_npz(path, "normalisation statistics", 1 << 20)  # sizes checked, no pickles
    if model_path is not None:
        _check_model(path, arrays, model_path)
    missing = [key for key in _NORM_KEYS if key not in arrays]
    if missing:
        raise ValueError(f"normalisation statistics {str(path)!r}: incomplete, missing {missing}")
    values = {key: arrays[key] for key in _NORM_KEYS}
    for key, value in values.items():
        if value.dtype.kind != "f" or not np.isfinite(value).all():
            raise ValueError(f"normalisation statistics {str(path)!r}: {key} must be finite floats")
        if key not in _NORM_VECTORS and value.shape != ():
            raise ValueError(
                f"normalisation statistics {str(path)!r}: {key} has shape {value.shape}; it is "
                "a single number (shape ())"
            )
    if values["obs_mean"].shape != values["obs_var"].shape or values["obs_mean"].ndim != 1:
        raise ValueError(
            f"normalisation statistics {str(path)!r}: obs_mean {values['obs_mean'].shape} and "
            f"obs_var {values['obs_var'].shape} must be vectors of one length"
        )
    if (values["obs_var"] < 0).any() or values["ret_var"] < 0:
        raise ValueError(f"normalisation statistics {str(path)!r}: variances must be >= 0")
    return values


def load_vecnormalize(
    path: str | os.PathLike, venv: Any, model_path: str | os.PathLike | None = None
) -> None:
    """Restore statistics saved by :func:`save_vecnormalize` into a ``VecNormalize``.

    :param model_path: the archive they belong to; raises :class:`MismatchedStatistics` where
        they name another one.
    """
    v = _read_norm(path, model_path)
    if v["obs_mean"].shape != venv.obs_rms.mean.shape:
        raise ValueError(
            f"normalisation statistics {str(path)!r}: shape {v['obs_mean'].shape} does not match "
            f"the observation {venv.obs_rms.mean.shape}"
        )
    venv.obs_rms.mean, venv.obs_rms.var = v["obs_mean"], v["obs_var"]
    venv.obs_rms.count = float(v["obs_count"])
    venv.ret_rms.mean, venv.ret_rms.var = v["ret_mean"], v["ret_var"]
    venv.ret_rms.count = float(v["ret_count"])


def read_obs_normalizer(
    path: str | os.PathLike, model_path: str | os.PathLike | None = None
) -> ObsNormalizer | None:
    """The inference-time observation transform stored at ``path`` (None: obs not normalised).

    :param model_path: the archive they belong to; raises :class:`MismatchedStatistics` where
        they name another one.
    """
    v = _read_norm(path, model_path)
    if not v["norm_obs"]:
        return None
    return ObsNormalizer(v["obs_mean"], v["obs_var"], float(v["clip_obs"]), float(v["epsilon"]))


def find_vecnormalize(model: Any) -> Any:
    """The ``VecNormalize`` wrapper in ``model``'s env chain, or None."""
    env = model.get_env()
    while env is not None:
        if hasattr(env, "obs_rms") and hasattr(env, "normalize_obs"):
            return env
        env = getattr(env, "venv", None)
    return None


class SB3Policy:
    """An SB3 model behind the common ``predict``, normalising observations first if needed."""

    def __init__(self, model: Any, normalizer: ObsNormalizer | None = None) -> None:
        self.model = model
        self.normalizer = normalizer
        self.uses_action_masks = type(model).__name__ == "MaskablePPO"

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, Any]:
        """SB3's ``predict`` on normalised observations; ``action_masks`` reach MaskablePPO only."""
        obs = np.asarray(observation, dtype=np.float32)
        if self.normalizer is not None:
            obs = self.normalizer(obs)
        kwargs = {"action_masks": action_masks} if self.uses_action_masks else {}
        return self.model.predict(obs, state, episode_start, deterministic, **kwargs)

    def __repr__(self) -> str:
        norm = ", normalised" if self.normalizer is not None else ""
        return f"SB3Policy({type(self.model).__name__}{norm})"


def _is_sb3_model(obj: Any) -> bool:
    return any(
        c.__module__ == "stable_baselines3.common.base_class" and c.__name__ == "BaseAlgorithm"
        for c in type(obj).__mro__
    )


def as_policy(obj: Any) -> Any:
    """``obj`` itself if it is already a policy; a bare SB3 model wrapped in :class:`SB3Policy`."""
    if _is_sb3_model(obj):
        norm = find_vecnormalize(obj)
        if norm is None or not norm.norm_obs:
            return SB3Policy(obj)
        rms = norm.obs_rms
        return SB3Policy(
            obj, ObsNormalizer(rms.mean.copy(), rms.var.copy(), norm.clip_obs, norm.epsilon)
        )
    if not callable(getattr(obj, "predict", None)):
        raise ValueError(f"{obj!r} is not a policy: it has no predict(obs, ...) method")
    return obj


def sidecar(path: str | os.PathLike) -> Path:
    """Where an agent's normalisation statistics live: ``NAME.vecnormalize.npz`` beside it."""
    p = Path(path)
    return p.with_name(p.stem + ".vecnormalize.npz")


def files_sha256(path: str | os.PathLike) -> tuple[str, str | None]:
    """The sha256 of an agent's archive and of its normalisation statistics (None where it has
    none): what its figures depend on."""
    from distree_env.manifest import sha256_of

    stats = sidecar(path)
    return sha256_of(path), sha256_of(stats) if stats.is_file() else None
