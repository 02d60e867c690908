"""Joint end-to-end training of every branch and exit, with resumable per-epoch checkpoints.

Loss per exit k (weights in :class:`LossConfig`):
- cross-entropy against the label;
- distillation (temperature-scaled KL) from the deepest exit into each earlier exit, the teacher
  detached, as in self-distillation (Zhang et al., "Be Your Own Teacher", ICCV 2019);
- feature transfer: squared distance between the L2-normalised embedding of exit k and the detached
  deepest embedding, which also makes DistrEE's similarity between consecutive exits meaningful.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from distree_env.model.checkpoint import load_state, torch_load_safe, torch_save_atomic
from distree_env.model.data import Split
from distree_env.model.network import MultiBranchNet, NetConfig

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class LossConfig:
    ce_weight: float = 1.0
    kd_weight: float = 0.5
    kd_temperature: float = 3.0
    feature_weight: float = 0.1

    def __post_init__(self) -> None:
        for name in ("ce_weight", "kd_weight", "feature_weight"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}={v} is not allowed; it must be a finite number >= 0")
        if not (math.isfinite(self.kd_temperature) and self.kd_temperature > 0):
            raise ValueError(f"kd_temperature={self.kd_temperature} is not allowed; it must be > 0")


@dataclass(frozen=True)
class TrainConfig:
    net: NetConfig = field(default_factory=NetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int = 24
    batch_size: int = 256
    lr: float = 0.1
    warmup_epochs: float = 2.0
    weight_decay: float = 5e-4
    seed: int = 0
    bf16: bool = True  # autocast convolutions to bfloat16 on the CPU (about 2x faster here)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} is not allowed; it must be >= 1")
        for name in ("lr", "weight_decay", "warmup_epochs"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0) or (name == "lr" and v == 0):
                raise ValueError(
                    f"{name}={v} is not allowed; it must be a finite number "
                    f"{'>' if name == 'lr' else '>='} 0"
                )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["net"] = self.net.to_dict()
        return d


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 HWC images -> normalised float NCHW tensor."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def augment(images: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Random crop with reflect padding and random horizontal flip (the standard CIFAR recipe)."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    flip = rng.random(n) < 0.5
    out = np.empty_like(images)
    for i in range(n):
        crop = padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out[i] = crop[:, ::-1] if flip[i] else crop
    return out


def exit_losses(
    logits: list[torch.Tensor],
    embeddings: list[torch.Tensor],
    labels: torch.Tensor,
    cfg: LossConfig,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Total loss and the loss of each exit."""
    teacher_logits = logits[-1].detach().float()
    teacher_emb = F.normalize(embeddings[-1].detach().float(), dim=1)
    t = cfg.kd_temperature
    per_exit = []
    for k, (out, emb) in enumerate(zip(logits, embeddings, strict=False)):
        out = out.float()
        loss = cfg.ce_weight * F.cross_entropy(out, labels)
        if k < len(logits) - 1:
            if cfg.kd_weight:
                kd = F.kl_div(
                    F.log_softmax(out / t, dim=1),
                    F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean",
                    log_target=True,
                )
                loss = loss + cfg.kd_weight * t * t * kd
            if cfg.feature_weight:
                diff = F.normalize(emb.float(), dim=1) - teacher_emb
                loss = loss + cfg.feature_weight * diff.pow(2).sum(dim=1).mean()
        per_exit.append(loss)
    return torch.stack(per_exit).sum(), per_exit


@torch.no_grad()
def predict(
    model: MultiBranchNet,
    images: np.ndarray,
    batch_size: int = 500,
    bf16: bool = True,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``[n, K, C]`` and embeddings ``[n, K, E]`` (float32) of every exit."""
    model.eval()
    probs, embs = [], []
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="inference", unit="batch")
    for s in starts:
        x = to_tensor(images[s : s + batch_size])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, emb = model(x)
        probs.append(torch.stack([F.softmax(lg.float(), dim=1) for lg in logits], dim=1).numpy())
        embs.append(torch.stack([e.float() for e in emb], dim=1).numpy())
    return np.concatenate(probs), np.concatenate(embs)


def exit_accuracy(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return (probs.argmax(axis=2) == labels[:, None]).mean(axis=0)


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to ``peak`` then linear decay to zero (one-cycle)."""
    if step < warmup:
        return peak * (0.1 + 0.9 * step / max(1, warmup))
    return peak * max(0.0, (total - step) / max(1, total - warmup))


class Trainer:
    """Owns the model, optimiser and RNG; saves ``last.pt`` every epoch so a killed run resumes."""

    def __init__(
        self,
        cfg: TrainConfig,
        train: Split,
        val: Split,
        run_dir: Path,
        log: Callable[[str, float, int], None] | None = None,
    ) -> None:
        self.cfg, self.train_split, self.val_split, self.run_dir = cfg, train, val, Path(run_dir)
        self.log = log or (lambda tag, value, step: None)
        torch.manual_seed(cfg.seed)
        self.model = MultiBranchNet(cfg.net).to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=cfg.lr,
            momentum=0.9,
            nesterov=True,
            weight_decay=cfg.weight_decay,
        )
        self.rng = np.random.default_rng(cfg.seed)
        self.epoch = 0
        self.history: list[dict] = []

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "last.pt"

    def save(self) -> None:
        torch_save_atomic(
            {
                "train_config": self.cfg.to_dict(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch,
                "rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "history": self.history,
            },
            self.checkpoint_path,
        )

    def resume(self) -> bool:
        """Continue from ``last.pt`` if there is one; refuse one made with another configuration."""
        if not self.checkpoint_path.exists():
            return False
        state = torch_load_safe(self.checkpoint_path, "training checkpoint")
        if state.get("train_config") != self.cfg.to_dict():
            raise ValueError(
                f"{str(self.checkpoint_path)!r} was written with another training configuration "
                f"({state.get('train_config')}); resume with the same arguments or use a new "
                "run name"
            )
        load_state(self.model, state["model"], str(self.checkpoint_path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        return True

    def fit(self, progress: bool = True) -> list[dict]:
        from tqdm.auto import tqdm

        cfg = self.cfg
        n = len(self.train_split)
        steps_per_epoch = (
            n // cfg.batch_size
        )  # drop the ragged last batch: BN dislikes tiny batches
        total = steps_per_epoch * cfg.epochs
        warmup = int(cfg.warmup_epochs * steps_per_epoch)
        while self.epoch < cfg.epochs:
            self.model.train()
            order = self.rng.permutation(n)
            t0 = time.perf_counter()
            sums = np.zeros(cfg.net.num_stages)
            bar = tqdm(
                range(steps_per_epoch),
                desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                unit="batch",
                disable=not progress,
                mininterval=2.0,
            )
            for i in bar:
                step = self.epoch * steps_per_epoch + i
                lr = lr_at(step, total, warmup, cfg.lr)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                x = to_tensor(augment(self.train_split.images[idx], self.rng))
                y = torch.from_numpy(self.train_split.labels[idx])
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                    logits, embeddings = self.model(x)
                loss, per_exit = exit_losses(logits, embeddings, y, cfg.loss)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss became {loss.item()} at epoch {self.epoch + 1}, step {i}"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                sums += [p.item() for p in per_exit]
                if i % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.3f}")
            seconds = time.perf_counter() - t0
            probs, _ = predict(self.model, self.val_split.images, bf16=cfg.bf16)
            acc = exit_accuracy(probs, self.val_split.labels)
            self.epoch += 1
            record = {
                "epoch": self.epoch,
                "seconds": seconds,
                "images_per_s": steps_per_epoch * cfg.batch_size / seconds,
                "val_exit_accuracy": [float(a) for a in acc],
                "train_exit_loss": [float(s / steps_per_epoch) for s in sums],
            }
            self.history.append(record)
            for k in range(cfg.net.num_stages):
                self.log(f"losses/exit_{k}", record["train_exit_loss"][k], self.epoch)
                self.log(
                    f"distree/val_accuracy_exit_{k}", record["val_exit_accuracy"][k], self.epoch
                )
            self.log("charts/learning_rate", lr, self.epoch)
            self.log("charts/images_per_s", record["images_per_s"], self.epoch)
            self.save()
            if progress:
                accs = " ".join(f"{a:.3f}" for a in acc)
                tqdm.write(f"epoch {self.epoch}: val exit accuracy {accs} ({seconds:.0f}s)")
        return self.history
