"""Agent-training machinery: algorithms, resumable atomic checkpoints, TensorBoard callbacks.

Shared by ``experiments.train_agent`` and the tests; it owns the model, normalisation and
replay-buffer files of a run.

Why: a killed run must resume from its last complete checkpoint, and a kill during a write must
never leave a half-written file that looks complete. Every file goes through ``atomic_write``;
the model ``.zip`` of a checkpoint is written last, so its presence marks a complete checkpoint.
Replay buffers and normalisation statistics are plain ``.npz`` (no pickle).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback

from agents.evaluation import METRICS, evaluate
from agents.policy import (
    MismatchedStatistics,
    as_policy,
    files_sha256,
    find_vecnormalize,
    save_vecnormalize,
    sidecar,
)
from distree_env.io import atomic_write, atomic_write_text, read_npz, read_text_capped

__all__ = [
    "ALGOS",
    "METRIC_GUIDE",
    "AtomicCheckpointCallback",
    "RunTextCallback",
    "ValEvalCallback",
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
    "recurrent_ppo": ("sb3_contrib", "RecurrentPPO"),
}
_CKPT = re.compile(r"^ckpt_(\d+)_steps\.zip$")
#: The replay buffers and normalisation statistics that belong to a checkpoint.
_REPLAY_GLOB, _SIDECAR_GLOB = "ckpt_*_steps.replay.npz", "ckpt_*_steps.vecnormalize.npz"
_REPLAY_KEYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def algo_class(name: str) -> type:
    """The SB3 / sb3-contrib class of an :data:`ALGOS` name, imported only when asked for."""
    if name not in ALGOS:
        raise ValueError(f"algo={name!r} is not allowed: one of {', '.join(ALGOS)}")
    module, cls = ALGOS[name]
    return getattr(importlib.import_module(module), cls)


def save_model(model: Any, path: str | Path) -> None:
    """Save ``model`` and its normalisation statistics (if any) beside it, each atomically.

    The statistics name the sha256 of the archive, and go first (where the model has none, an
    earlier model's go last), so a save stopped between the two files leaves a pair that
    loading refuses (:class:`~agents.policy.MismatchedStatistics`), never one it would use.
    """
    buffer = io.BytesIO()
    model.save(buffer)
    archive = buffer.getvalue()
    norm = find_vecnormalize(model)
    if norm is not None:
        save_vecnormalize(sidecar(path), norm, hashlib.sha256(archive).hexdigest())
    atomic_write(path, lambda f: f.write(archive))
    if norm is None:  # statistics of an earlier model saved at this path must not apply to this
        sidecar(path).unlink(missing_ok=True)


def _replay_path(zip_path: Path) -> Path:
    return zip_path.with_name(zip_path.stem + ".replay.npz")


def save_replay_buffer(model: Any, path: Path) -> None:
    """Write an off-policy model's replay buffer as a plain ``.npz`` (SB3 would pickle it)."""
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
    expected = {key: getattr(buf, key) for key in _REPLAY_KEYS if hasattr(buf, key)}
    limit = sum(value.nbytes for value in expected.values()) + (1 << 20)
    data = read_npz(path, "replay buffer", limit)  # no pickles; sizes checked before reading
    missing = sorted(set(expected) - set(data))
    if missing:
        raise ValueError(f"replay buffer {str(path)!r}: no {', '.join(missing)} arrays")
    for key, current in expected.items():
        if data[key].shape != current.shape or data[key].dtype != current.dtype:
            raise ValueError(
                f"replay buffer {str(path)!r}: {key} is {data[key].dtype}{data[key].shape}, "
                f"expected {current.dtype}{current.shape}"
            )
        setattr(buf, key, data[key])
    pos, full = data.get("pos"), data.get("full")
    if pos is None or full is None or pos.shape or not 0 <= int(pos) < buf.buffer_size:
        raise ValueError(f"replay buffer {str(path)!r}: pos / full missing or out of range")
    buf.pos, buf.full = int(pos), bool(full)
    return True


def _checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """The complete checkpoints in ``folder`` as (steps, ``.zip``), fewest steps first."""
    return sorted(
        (int(m.group(1)), p)
        for p in Path(folder).glob("ckpt_*_steps.zip")
        if (m := _CKPT.match(p.name))
    )


def latest_checkpoint(folder: str | Path) -> tuple[int, Path] | None:
    """The complete checkpoint with the most steps in ``folder`` (its ``.zip``), or None."""
    found = _checkpoints(folder)
    return found[-1] if found else None


class _AfterUpdate:
    """When a callback that acts every ``freq`` calls is due: at the first rollout start after
    each multiple of ``freq`` calls, i.e. after the update of the steps collected so far.

    Why not on the step itself, as SB3's ``CheckpointCallback`` does: PPO's step that completes
    a rollout comes before that rollout's update, so a checkpoint labelled N steps would have
    learned from N minus one rollout, and a resumed run would silently lose that update."""

    def __init__(self, freq: int) -> None:
        self.freq, self.due = freq, freq

    def __call__(self, n_calls: int) -> bool:
        if self.freq <= 0 or n_calls < self.due:
            return False
        self.due = (n_calls // self.freq + 1) * self.freq
        return True


class AtomicCheckpointCallback(CheckpointCallback):
    """SB3's ``CheckpointCallback``, written atomically, with the replay buffer as ``.npz`` and
    normalisation statistics, after the update of the steps it is named for; keeps the ``keep``
    newest checkpoints."""

    def __init__(self, save_freq: int, save_path: str | Path, keep: int = 2) -> None:
        super().__init__(save_freq, str(save_path), name_prefix="ckpt")
        self.keep = keep
        self._due = _AfterUpdate(save_freq)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if self._due(self.n_calls):
            self.save_now()

    def save_now(self) -> Path:
        """Write a checkpoint at the current step (also called at the end of a run); its path."""
        folder = Path(self.save_path)
        path = folder / f"ckpt_{self.num_timesteps}_steps.zip"
        if getattr(self.model, "replay_buffer", None) is not None:
            save_replay_buffer(self.model, _replay_path(path))
        save_model(self.model, path)
        self._prune(folder)
        return path

    def _prune(self, folder: Path) -> None:
        """Delete all but the ``keep`` newest checkpoints, and the replay buffers and
        statistics a run killed while saving left without their checkpoint."""
        for _, old in _checkpoints(folder)[: -self.keep]:
            for f in (old, _replay_path(old), sidecar(old)):  # un-mark first
                f.unlink(missing_ok=True)
        for pattern, part in ((_REPLAY_GLOB, _replay_path), (_SIDECAR_GLOB, sidecar)):
            for f in folder.glob(pattern):
                zip_path = f.with_name(f.name.split(".", 1)[0] + ".zip")
                if part(zip_path) == f and not zip_path.exists():
                    f.unlink(missing_ok=True)


#: What the TensorBoard tags of a run mean (logged as text with every run).
METRIC_GUIDE = """\
- `distree_val/per_request/*`: `agents.evaluate` of the current model on the val config (the
  same function and metrics as the benchmark): means over requests (`mean_reward` is reward per
  request; `exit_<k>_share` the share of requests answered at exit k).
- `distree_train/per_request/*`: the same quantities over the last 100 training episodes that
  ended (means over their requests; `latency_p95_ms` over the last 1000 answered requests).
- `distree_train/per_episode/*`: sums over one training episode (`return`, reward parts,
  `requests` answered): a per-episode total, not comparable with per-request figures.
- `rollout/ep_rew_mean` (SB3): sums over what the learner sees as one episode: one request
  when it trains on request-episodes, else a whole env episode.
"""


def _text_block(data: Any) -> str:
    return "```\n" + json.dumps(data, indent=2, default=str) + "\n```"


class RunTextCallback(BaseCallback):
    """Log the run's hyperparameters, environment config and :data:`METRIC_GUIDE` as
    TensorBoard text at the start of training (``run/*``)."""

    def __init__(self, hyperparameters: dict[str, Any], env_config: dict[str, Any]) -> None:
        super().__init__()
        self.texts = {
            "run/hyperparameters": _text_block(hyperparameters),
            "run/env_config": _text_block(env_config),
            "run/metric_guide": METRIC_GUIDE,
        }

    def _on_training_start(self) -> None:
        for key, text in self.texts.items():
            self.logger.record(key, text, exclude=("stdout", "log", "json", "csv"))
        self.logger.dump(self.num_timesteps)

    def _on_step(self) -> bool:
        return True


class ValEvalCallback(BaseCallback):
    """Every ``eval_freq`` calls (after the update of the steps collected by then):
    :func:`agents.evaluate` of the current model on the val ``config``, logged as
    ``distree_val/per_request/*``; the model with the best val reward per request is saved at
    ``best_path`` (the run's choice is made on val).

    :param config: the val environment.
    :param eval_freq: callback calls (vector steps) between evaluations.
    :param n_requests: requests per evaluation; ``seed``: its seed (fixed, so evaluations
        along the run are comparable).
    :param best_path: where the best model goes (None: not saved).
    :param history_path: where the ``(steps, val reward)`` history is kept (None: in memory),
        so that a resumed run reports its evaluations from before the kill too.
    """

    def __init__(
        self,
        config: Any,
        eval_freq: int,
        n_requests: int = 2048,
        seed: int = 0,
        best_path: str | Path | None = None,
        history_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.config, self.eval_freq = config, eval_freq
        self.n_requests, self.seed = n_requests, seed
        self.best_path = None if best_path is None else Path(best_path)
        self.history_path = None if history_path is None else Path(history_path)
        #: Whether the best model on disk was removed (saved with another model's statistics).
        self.dropped_best = False
        self.best_reward = self._recorded_best()
        self.history: list[tuple[int, float]] = []
        self._due = _AfterUpdate(eval_freq)

    def resume_history(self, steps: int) -> None:
        """Take the kept history up to ``steps`` (the checkpoint a run resumes from; later
        evaluations belong to the part of the run that is trained again)."""
        path = self.history_path
        if path is None or not path.is_file():
            return
        try:
            rows = json.loads(read_text_capped(path, "val history"))
            history = [(int(s), float(r)) for s, r in rows]
        except (ValueError, TypeError):
            raise ValueError(
                f"{str(path)!r} is not a val history ([[steps, reward], ...]); delete it to "
                "resume without the earlier evaluations"
            ) from None
        self.history = [(s, r) for s, r in history if s <= steps]

    def _best_record(self) -> Path | None:
        """``best_model.json`` beside ``best_model.zip``: its val reward, so that a resumed run
        keeps the best model of its earlier part unless a later one beats it."""
        return None if self.best_path is None else self.best_path.with_suffix(".json")

    def _files_sha256(self) -> dict[str, str | None]:
        """The sha256 of the best model's files as they are on disk (the ``.zip`` and its
        normalisation statistics, None where there are none)."""
        assert self.best_path is not None
        archive, stats = files_sha256(self.best_path)
        return {"sha256": archive, "normalization_sha256": stats}

    def _recorded_best(self) -> float:
        """The val reward of the best model on disk: its record's, or measured again where the
        record is missing or describes other files (a run killed between writing the model, its
        statistics and the record), so that a resumed run keeps its best-on-val choice."""
        record = self._best_record()
        if record is None or not self.best_path.is_file():
            return -np.inf
        on_disk = self._files_sha256()
        if not record.is_file():
            return self._measure_again(on_disk, "has no record")
        try:
            data = json.loads(read_text_capped(record, "best model record"))
            value = data["mean_reward"]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise ValueError(
                f"{str(record)!r} is not a best-model record ({{'mean_reward': number}}); "
                "delete it and best_model.zip to start the best-on-val choice afresh"
            ) from None
        if any(key in data and data[key] != sha for key, sha in on_disk.items()):
            return self._measure_again(on_disk, f"is not the model {str(record)!r} records")
        return float(value)

    def _measure_again(self, on_disk: dict[str, str | None], why: str) -> float:
        """Evaluate the best model on disk as the run's evaluations do and record the result."""
        from agents.loading import load_agent

        assert self.best_path is not None
        try:
            policy = load_agent(self.best_path, trust=True)
        except MismatchedStatistics as e:
            # the model's own statistics are gone: it cannot be used, so it is removed (the
            # run's final model stands in until an evaluation writes a new best one)
            for stale in (
                self.best_path,
                sidecar(self.best_path),
                self.best_path.with_suffix(".json"),
            ):
                stale.unlink(missing_ok=True)
            self.dropped_best = True
            warnings.warn(
                f"{str(self.best_path)!r} {why}, and {e}: removed, and the best-on-val choice "
                "starts afresh",
                stacklevel=2,
            )
            return -np.inf
        except ValueError as e:
            raise ValueError(
                f"{str(self.best_path)!r} {why} and cannot be evaluated again ({e}); delete it "
                "to start the best-on-val choice afresh"
            ) from None
        reward = float(evaluate(policy, self.config, self.n_requests, self.seed)["mean_reward"])
        warnings.warn(
            f"{str(self.best_path)!r} {why} (a run stopped between writing them): evaluated "
            f"again on val, {reward:.4f} per request",
            stacklevel=2,
        )
        self._write_record(reward, None, on_disk)
        return reward

    def _write_record(
        self, reward: float, timesteps: int | None, on_disk: dict[str, str | None]
    ) -> None:
        """``best_model.json``: the val reward and the sha256 of the files it belongs to."""
        record = {"mean_reward": reward, "timesteps": timesteps, **on_disk}
        atomic_write_text(self._best_record(), json.dumps(record) + "\n")

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if self._due(self.n_calls):
            self.evaluate_now()

    def evaluate_now(self) -> dict[str, Any]:
        """Evaluate, log and keep the best; returns the metrics."""
        self.num_timesteps = self.model.num_timesteps  # also outside learn (a resumed run)
        metrics = evaluate(as_policy(self.model), self.config, self.n_requests, self.seed)
        for key in METRICS:
            self.logger.record(f"distree_val/per_request/{key}", float(metrics[key]))
        for k, share in enumerate(metrics["exit_fractions"]):
            self.logger.record(f"distree_val/per_request/exit_{k}_share", float(share))
        self.logger.dump(self.num_timesteps)
        reward = float(metrics["mean_reward"])
        if self.history and self.history[-1][0] == self.num_timesteps:
            self.history.pop()  # evaluated again at this step: the same model, one entry
        self.history.append((int(self.num_timesteps), reward))
        if self.history_path is not None:
            atomic_write_text(self.history_path, json.dumps(self.history) + "\n")
        if reward > self.best_reward:
            self.best_reward = reward
            if self.best_path is not None:
                self.best_path.parent.mkdir(parents=True, exist_ok=True)
                save_model(self.model, self.best_path)
                self._write_record(reward, int(self.num_timesteps), self._files_sha256())
        return dict(metrics)
