"""Load a trained agent as a ready policy, but only from a file the project vouches for.

Why: an SB3 ``.zip`` holds cloudpickled objects, so loading one can run arbitrary code. A shipped
agent (``"ppo"`` -> ``checkpoints/agents/ppo.zip``) must match its sha256 in
``checkpoints/MANIFEST.json``; any other file needs ``trust=True`` from the caller. Even then
nothing is unpickled: every pickled entry of the archive's JSON header is replaced by an object
built here (policy class, spaces from their JSON fields, placeholders for training-only
schedules), and the weights are read by SB3 with ``torch.load(weights_only=True)``. The loaded
model is for inference; continuing its training would use default schedules.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from agents.policy import SB3Policy, read_obs_normalizer, sidecar
from agents.training import ALGOS, algo_class
from distree_env.manifest import checkpoints_dir, verify

__all__ = ["agent_path", "infer_algo", "load_agent"]


def agent_path(name_or_path: str | os.PathLike) -> Path:
    """``"ppo"`` -> ``<checkpoints>/agents/ppo.zip``; anything with a suffix or ``/`` is a path."""
    text = os.fspath(name_or_path)
    if text.endswith(".zip") or "/" in text or os.sep in text:
        return Path(text).expanduser()
    return checkpoints_dir() / "agents" / f"{text}.zip"


def _header(path: Path) -> dict:
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("data"))
    except (zipfile.BadZipFile, KeyError, OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"agent {str(path)!r}: not a readable stable-baselines3 archive ({type(e).__name__}: "
            f"{e}); it is truncated, corrupt or not an agent"
        ) from None


def infer_algo(path: str | os.PathLike) -> str:
    """The algorithm of an SB3 archive, from its JSON header (policy class and fields)."""
    data = _header(Path(path))
    module = str(data.get("policy_class", {}).get("__module__", ""))
    if "qrdqn" in module:
        return "qrdqn"
    if "maskable" in module:
        return "maskable_ppo"
    if "dqn" in module:
        return "dqn"
    if "n_epochs" in data:
        return "ppo"
    if "n_steps" in data:
        return "a2c"
    raise ValueError(
        f"agent {str(path)!r}: cannot tell the algorithm; pass algo= one of {list(ALGOS)}"
    )


def _policy_kwargs(entry: dict, path: Path) -> dict[str, Any]:
    """Rebuild a pickled ``policy_kwargs`` from its JSON fields; classes from a short allow-list."""
    import torch  # noqa: PLC0415

    allowed = (
        torch.nn.ReLU,
        torch.nn.Tanh,
        torch.nn.ELU,
        torch.nn.LeakyReLU,
        torch.nn.SiLU,
        torch.nn.GELU,
        torch.optim.Adam,
        torch.optim.AdamW,
        torch.optim.RMSprop,
        torch.optim.SGD,
    )
    by_repr = {f"<class '{c.__module__}.{c.__qualname__}'>": c for c in allowed}
    kwargs = {}
    for key, value in entry.items():
        if key in (":type:", ":serialized:"):
            continue
        if isinstance(value, str):
            if value not in by_repr:
                raise ValueError(
                    f"agent {str(path)!r}: policy_kwargs.{key}={value!r} is not an "
                    "allowed class (it could only be restored by unpickling)"
                )
            value = by_repr[value]
        kwargs[key] = value
    return kwargs


def _pickle_free(data: dict, cls: type, path: Path) -> dict[str, Any]:
    """``custom_objects`` for SB3's ``load`` that replace every cloudpickled header entry."""
    from gymnasium import spaces  # noqa: PLC0415
    from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit  # noqa: PLC0415

    obs, act = data.get("observation_space", {}), data.get("action_space", {})
    if "Box" not in str(obs.get(":type:")) or "Discrete" not in str(act.get(":type:")):
        raise ValueError(
            f"agent {str(path)!r}: not a DistrEE agent (needs Box observations and "
            f"Discrete actions, got {obs.get(':type:')} / {act.get(':type:')})"
        )
    try:
        raw = obs["_shape"]
        shape = tuple(int(x) for x in (json.loads(raw) if isinstance(raw, str) else raw))
        n = int(act["n"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"agent {str(path)!r}: unreadable space description ({exc})") from None
    replacements = {
        "policy_class": cls.policy_aliases["MlpPolicy"],
        "observation_space": spaces.Box(-np.inf, np.inf, shape, np.float32),
        "action_space": spaces.Discrete(n),
        "clip_range": 0.2,
        "train_freq": TrainFreq(1, TrainFrequencyUnit.STEP),
    }
    if isinstance(data.get("policy_kwargs"), dict) and ":serialized:" in data["policy_kwargs"]:
        replacements["policy_kwargs"] = _policy_kwargs(data["policy_kwargs"], path)
    return {
        key: replacements.get(key)
        for key, value in data.items()
        if isinstance(value, dict) and ":serialized:" in value
    }


def load_agent(
    name_or_path: str | os.PathLike, trust: bool = False, algo: str | None = None
) -> SB3Policy:
    """A shipped agent by name (``"ppo"``, ``"dqn"``) or a path, as a policy with ``predict``.

    Raises ValueError when the file is missing, fails its manifest check, is not listed and
    ``trust`` is False, or is not a valid archive. Normalisation statistics beside the archive
    (``NAME.vecnormalize.npz``) are applied to observations.
    """
    path = agent_path(name_or_path)
    if not path.is_file():
        shipped = sorted(p.stem for p in (checkpoints_dir() / "agents").glob("*.zip"))
        raise ValueError(
            f"agent {os.fspath(name_or_path)!r}: file {str(path)!r} not found "
            f"(shipped agents: {shipped or 'none'})"
        )
    listed = verify(path)
    if not listed and not trust:
        raise ValueError(
            f"agent {str(path)!r} is not listed in checkpoints/MANIFEST.json; SB3 archives can run "
            "code when loaded, so pass trust=True (--trust) only for files you made yourself"
        )
    algo = algo or infer_algo(path)
    norm_path = sidecar(path)
    normalizer = None
    if norm_path.is_file():
        if listed:
            verify(norm_path, required=True)
        normalizer = read_obs_normalizer(norm_path)
    cls = algo_class(algo)
    custom = _pickle_free(_header(path), cls, path)
    try:
        model = cls.load(path, device="cpu", custom_objects=custom)
    except (zipfile.BadZipFile, RuntimeError, KeyError, EOFError) as exc:
        raise ValueError(f"agent {str(path)!r}: cannot be loaded as {algo} ({exc})") from None
    return SB3Policy(model, normalizer)
