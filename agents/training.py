"""Training machinery shared by ``experiments.train_agent`` and the tests: algorithms, resumable
atomic checkpoints, and the model/normalisation/replay-buffer files of a run.

Why: a killed run must resume from its last complete checkpoint, and a kill during a write must
never leave a half-written file that looks complete. Every file goes through ``atomic_write``;
the model ``.zip`` of a checkpoint is written last, so its presence marks a complete checkpoint.
Replay buffers and normalisation statistics are plain ``.npz`` (no pickle).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import CheckpointCallback

from agents.policy import find_vecnormalize, save_vecnormalize, sidecar
from distree_env.io import atomic_write

__all__ = [
    "ALGOS",
    "AtomicCheckpointCallback",
    "algo_class",
    "latest_checkpoint",
    "load_replay_buffer",
    "save_model",
]

#: Algorithm name -> (module, class).
ALGOS: dict[str, tuple[str, str]] = {
    "ppo": ("stable_baselines3", "PPO"),
    "a2c": ("stable_baselines3", "A2C"),
    "dqn": ("stable_baselines3", "DQN"),
    "qrdqn": ("sb3_contrib", "QRDQN"),
    "maskable_ppo": ("sb3_contrib", "MaskablePPO"),
}
_CKPT = re.compile(r"^ckpt_(\d+)_steps\.zip$")
_REPLAY_KEYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def algo_class(name: str) -> type:
    if name not in ALGOS:
        raise ValueError(f"algo={name!r} is not allowed: one of {', '.join(ALGOS)}")
    module, cls = ALGOS[name]
    return getattr(importlib.import_module(module), cls)


def save_model(model: Any, path: str | Path) -> None:
    """Save ``model`` (and its normalisation statistics, if any, beside it) atomically."""
    norm = find_vecnormalize(model)
    if norm is not None:
        save_vecnormalize(sidecar(path), norm)
    atomic_write(path, lambda f: model.save(f))


def _replay_path(zip_path: Path) -> Path:
    return zip_path.with_name(zip_path.stem + ".replay.npz")


def save_replay_buffer(model: Any, path: Path) -> None:
    buf = model.replay_buffer
    arrays = {key: getattr(buf, key) for key in _REPLAY_KEYS if hasattr(buf, key)}
    arrays["pos"], arrays["full"] = np.int64(buf.pos), np.bool_(buf.full)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_replay_buffer(model: Any, zip_path: Path) -> bool:
    """Fill ``model.replay_buffer`` from the checkpoint's ``.replay.npz``; False if none."""
    path = _replay_path(zip_path)
    if not path.is_file() or getattr(model, "replay_buffer", None) is None:
        return False
    buf = model.replay_buffer
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in _REPLAY_KEYS:
                if key in data.files:
                    value = data[key]
                    if value.shape != getattr(buf, key).shape:
                        raise ValueError(
                            f"{key} has shape {value.shape}, expected {getattr(buf, key).shape}"
                        )
                    setattr(buf, key, value)
            buf.pos, buf.full = int(data["pos"]), bool(data["full"])
    except (OSError, KeyError, EOFError) as exc:
        raise ValueError(f"replay buffer {str(path)!r}: unreadable ({exc})") from exc
    except ValueError as exc:
        raise ValueError(f"replay buffer {str(path)!r}: {exc}") from exc
    return True


def latest_checkpoint(folder: str | Path) -> tuple[int, Path] | None:
    """The complete checkpoint with the most steps in ``folder`` (its ``.zip``), or None."""
    found = [
        (int(m.group(1)), p)
        for p in Path(folder).glob("ckpt_*_steps.zip")
        if (m := _CKPT.match(p.name))
    ]
    return max(found) if found else None


class AtomicCheckpointCallback(CheckpointCallback):
    """SB3's ``CheckpointCallback``, written atomically, with the replay buffer as ``.npz`` and
    normalisation statistics; keeps the ``keep`` newest checkpoints."""

    def __init__(self, save_freq: int, save_path: str | Path, keep: int = 2) -> None:
        super().__init__(save_freq, str(save_path), name_prefix="ckpt")
        self.keep = keep

    def _on_step(self) -> bool:
        if self.n_calls % self.save_freq == 0:
            self.save_now()
        return True

    def save_now(self) -> Path:
        folder = Path(self.save_path)
        path = folder / f"ckpt_{self.num_timesteps}_steps.zip"
        if getattr(self.model, "replay_buffer", None) is not None:
            save_replay_buffer(self.model, _replay_path(path))
        save_model(self.model, path)
        self._prune(folder)
        return path

    def _prune(self, folder: Path) -> None:
        ckpts = sorted(
            (int(m.group(1)), p)
            for p in folder.glob("ckpt_*_steps.zip")
            if (m := _CKPT.match(p.name))
        )
        for _, old in ckpts[: -self.keep]:
            for f in (old, _replay_path(old), sidecar(old)):  # un-mark first
                f.unlink(missing_ok=True)
