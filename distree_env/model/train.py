"""Joint end-to-end training of every branch and exit, with resumable per-epoch checkpoints.

Loss per exit k (weights in :class:`LossConfig`), as in NoNN (Bhardwaj et al.) and DistrEE:
- knowledge distillation: ``(1 - kd_alpha) * CE(label) + kd_alpha * T^2 * KL(teacher_T || exit_T)``
  (Hinton et al.). With a teacher network, every exit learns from the teacher's logits; without one
  (self-distillation, Zhang et al. "Be Your Own Teacher"), the earlier exits learn from the
  network's own deepest exit, detached, and the deepest exit from the labels alone;
- activation (attention) transfer (Zagoruyko & Komodakis): each branch's stage-k attention map
  (channel mean of squared activations, L2-normalised) matches that of its share of the teacher's
  channels after the same block (so the teacher needs an exit after every block a student exits
  after; NoNN splits the teacher's final channels between the students; the split here is
  contiguous, NoNN's is found by community detection);
- feature transfer: squared distance between the L2-normalised embedding of exit k and the detached
  one of exit k + 1, so consecutive exits' embeddings live in one space and the feature-difference
  criterion between them measures agreement.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from distree_env.io import error_line
from distree_env.model.checkpoint import load_state, torch_load_safe, torch_save_atomic
from distree_env.model.data import Split
from distree_env.model.network import MultiBranchNet, NetConfig
from distree_env.traces.format import exit_accuracy

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
MEAN_PIXEL = tuple(round(255 * m) for m in CIFAR_MEAN)  # cutout fills with it: 0 after normalising


def _check_weight(name: str, v: float) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name}={v!r} is not allowed; it must be a finite number >= 0")


@dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms (module docstring); defaults are NoNN's where it gives one."""

    kd_alpha: float = 0.9  # share of the distillation term (NoNN: 0.9)
    kd_temperature: float = 4.0  # NoNN: 4
    attention_weight: float = 500.0  # beta / 2 with Zagoruyko's beta = 1000; teacher runs only
    feature_weight: float = 0.5
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        for name in ("attention_weight", "feature_weight"):
            _check_weight(name, getattr(self, name))
        for name in ("kd_alpha", "label_smoothing"):
            _check_weight(name, getattr(self, name))
            if getattr(self, name) > 1:
                raise ValueError(f"{name}={getattr(self, name)} is not allowed; it must be <= 1")
        _check_weight("kd_temperature", self.kd_temperature)
        if self.kd_temperature == 0:
            raise ValueError(f"kd_temperature={self.kd_temperature} is not allowed; it must be > 0")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; stored in its checkpoints so a resume matches."""

    net: NetConfig = field(default_factory=NetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int = 24
    batch_size: int = 256
    lr: float = 0.2
    warmup_epochs: float = 2.0
    weight_decay: float = 5e-4
    cutout: int = 8  # side of the square cut out of every training image (0 = none)
    seed: int = 0
    bf16: bool = True  # autocast to bfloat16 on the CPU (1.6-1.9x faster on this AVX512-BF16 CPU)
    teacher: str = ""  # file name of the teacher backbone (its final exit teaches); "" = self
    teacher_sha256: str = ""  # the teacher file's sha256: a resume with another teacher is refused
    device: str = "cpu"  # "cuda": model and training images live on the GPU
    data: str = ""  # Split.fingerprint of the training images (source, val carve and subset)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} is not allowed; it must be an integer >= 1")
        if (
            isinstance(self.cutout, bool)
            or not isinstance(self.cutout, int)
            or not 0 <= self.cutout <= 32
        ):
            raise ValueError(f"cutout={self.cutout!r} is not allowed; it must be in [0, 32]")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device={self.device!r} is not allowed; choose cpu or cuda")
        for name in ("lr", "weight_decay", "warmup_epochs"):
            v = getattr(self, name)
            _check_weight(name, v)
            if name == "lr" and v == 0:
                raise ValueError(f"lr={v} is not allowed; it must be > 0")

    def to_dict(self) -> dict:
        """JSON-friendly fields (the network's config nested), compared on resume."""
        d = asdict(self)
        d["net"] = self.net.to_dict()
        return d


def to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 HWC images (numpy, or a tensor on any device) -> normalised float NCHW tensor."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(CIFAR_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def augment(
    images: torch.Tensor, rng: np.random.Generator, pad: int = 4, cutout: int = 0
) -> torch.Tensor:
    """Random crop with reflect padding, random horizontal flip, and cutout (DeVries & Taylor).

    The random draws come from ``rng`` (so a resumed run repeats them); the pixels are gathered
    by index on the images' own device, so on a GPU the data never leaves it.

    :param images: uint8 ``[n, H, W, C]`` tensor.
    :param pad: reflect padding of the random crop.
    :param cutout: side of the square set to the mean pixel (0 = none).
    """
    n, h, w, _ = images.shape
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    flip = rng.random(n) < 0.5
    cy = rng.integers(0, h, n)
    cx = rng.integers(0, w, n)
    dev = images.device

    def reflect(coord: np.ndarray, size: int) -> np.ndarray:
        coord = np.abs(coord)
        return np.where(coord >= size, 2 * (size - 1) - coord, coord)

    cols = np.arange(w)
    rows = reflect(dy[:, None] + np.arange(h) - pad, h)
    cols = reflect(dx[:, None] + np.where(flip[:, None], w - 1 - cols, cols) - pad, w)
    batch = torch.arange(n, device=dev)[:, None, None]
    out = images[
        batch,
        torch.as_tensor(rows, device=dev)[:, :, None],
        torch.as_tensor(cols, device=dev)[:, None, :],
    ]
    if cutout:
        half = cutout // 2
        ys = np.arange(h)[None, :] - (cy[:, None] - half)
        xs = np.arange(w)[None, :] - (cx[:, None] - half)
        mask = ((ys >= 0) & (ys < cutout))[:, :, None] & ((xs >= 0) & (xs < cutout))[:, None, :]
        fill = torch.tensor(MEAN_PIXEL, dtype=images.dtype, device=dev)
        out = torch.where(torch.as_tensor(mask, device=dev)[..., None], fill, out)
    return out


def attention_map(fmap: torch.Tensor) -> torch.Tensor:
    """Zagoruyko's spatial attention: channel mean of squared activations, L2-normalised."""
    return F.normalize(fmap.float().pow(2).mean(dim=1).flatten(1), dim=1)


def attention_loss(student: list[list[torch.Tensor]], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean squared distance between each branch's attention and its share of the teacher's.

    :param student: feature maps ``[branch][k]``.
    :param teacher: the teacher's feature map at each exit ``[k]``; its channels are split into
        one contiguous share per branch.
    """
    total = teacher[0].new_zeros((), dtype=torch.float32)
    for k, t_map in enumerate(teacher):
        shares = torch.chunk(t_map, len(student), dim=1)
        for maps, share in zip(student, shares, strict=True):
            s_map = maps[k]
            if share.shape[-2:] != s_map.shape[-2:]:
                share = F.adaptive_avg_pool2d(share.float(), s_map.shape[-2:])
            total = total + (attention_map(s_map) - attention_map(share)).pow(2).mean()
    return total


def matching_exits(student: NetConfig, teacher: NetConfig) -> list[int]:
    """The teacher exit after the same block as each student exit, for attention transfer.

    Attention is compared where both networks have seen the same depth of the image, so every
    student exit needs a teacher exit after the same block of a network of the same depth.
    """
    if teacher.depth != student.depth or not set(student.exits) <= set(teacher.exits):
        raise ValueError(
            f"teacher exits={list(teacher.exits)} (depth {teacher.depth}) is not allowed for a "
            f"student with exits={list(student.exits)} (depth {student.depth}); the teacher "
            "needs the same depth and an exit after every block the student exits after"
        )
    return [teacher.exits.index(e) for e in student.exits]


def exit_losses(
    logits: list[torch.Tensor],
    embeddings: list[torch.Tensor],
    labels: torch.Tensor,
    cfg: LossConfig,
    teacher_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Total loss and the loss of each exit (distillation and feature transfer included).

    :param teacher_logits: the teacher network's logits; None = self-distillation from the
        deepest exit.
    """
    teacher = logits[-1] if teacher_logits is None else teacher_logits
    teacher = teacher.detach().float()
    t = cfg.kd_temperature
    last = len(logits) - 1
    per_exit = []
    for k, (out, emb) in enumerate(zip(logits, embeddings, strict=True)):
        out = out.float()
        ce = F.cross_entropy(out, labels, label_smoothing=cfg.label_smoothing)
        if cfg.kd_alpha and (teacher_logits is not None or k < last):
            kd = F.kl_div(
                F.log_softmax(out / t, dim=1),
                F.log_softmax(teacher / t, dim=1),
                reduction="batchmean",
                log_target=True,
            )
            loss = (1 - cfg.kd_alpha) * ce + cfg.kd_alpha * t * t * kd
        else:
            loss = ce
        if cfg.feature_weight and k < last:
            target = F.normalize(embeddings[k + 1].detach().float(), dim=1)
            diff = F.normalize(emb.float(), dim=1) - target
            loss = loss + cfg.feature_weight * diff.pow(2).sum(dim=1).mean()
        per_exit.append(loss)
    return torch.stack(per_exit).sum(), per_exit


@torch.no_grad()
def predict(
    model: MultiBranchNet,
    images: np.ndarray,
    batch_size: int = 500,
    bf16: bool = True,
    tta: bool = False,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``[n, K, C]`` and embeddings ``[n, K, E]`` (float32) of every exit.

    :param tta: also run the mirrored image and average both (flip test-time augmentation).
    """
    model.eval()
    device = next(model.parameters()).device
    probs, embs = [], []
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="inference", unit="batch")
    for s in starts:
        x = to_tensor(images[s : s + batch_size]).to(device)
        views = [x, x.flip(3)] if tta else [x]
        p_sum, e_sum = 0, 0
        for view in views:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits, emb = model(view)
            p_sum = p_sum + torch.stack([F.softmax(lg.float(), dim=1) for lg in logits], dim=1)
            e_sum = e_sum + torch.stack([e.float() for e in emb], dim=1)
        probs.append((p_sum / len(views)).cpu().numpy())
        embs.append((e_sum / len(views)).cpu().numpy())
    return np.concatenate(probs), np.concatenate(embs)


#: Largest share of a run's steps that warm up: a run of one or two epochs would otherwise end
#: before its learning rate decays (with the default two warm-up epochs).
MAX_WARMUP_SHARE = 0.2


def warmup_steps(warmup_epochs: float, steps_per_epoch: int, total: int) -> int:
    """Steps of linear warm-up: ``warmup_epochs``, at most :data:`MAX_WARMUP_SHARE` of ``total``."""
    return min(int(warmup_epochs * steps_per_epoch), int(MAX_WARMUP_SHARE * total))


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to ``peak`` then linear decay to zero (one-cycle)."""
    if step < warmup:
        return peak * (0.1 + 0.9 * step / max(1, warmup))
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def _differences(stored: Any, now: dict[str, Any], prefix: str = "") -> str:
    """``key stored -> now`` for every field that differs (nested configs dotted)."""
    if not isinstance(stored, dict):
        return f"{prefix or 'the stored configuration'} is {stored!r}"
    parts = []
    for key in sorted(set(stored) | set(now), key=str):
        old, new = stored.get(key, "(none)"), now.get(key, "(none)")
        if isinstance(old, dict) and isinstance(new, dict):
            inner = _differences(old, new, f"{prefix}{key}.")
            parts += [inner] if inner else []
        elif old != new:
            parts.append(f"{prefix}{key} {old!r} -> {new!r}")
    return "; ".join(parts)


class Trainer:
    """Owns the model, optimiser and RNG; saves ``last.pt`` every epoch so a killed run resumes."""

    def __init__(
        self,
        cfg: TrainConfig,
        train: Split,
        val: Split,
        run_dir: Path,
        log: Callable[[str, float, int], None] | None = None,
        teacher: MultiBranchNet | None = None,
    ) -> None:
        """:param teacher: the network whose final exit and (first branch's) feature maps teach."""
        if (teacher is None) == bool(cfg.teacher):
            raise ValueError(
                f"teacher={cfg.teacher!r} in the configuration, but a teacher network was "
                f"{'not ' if teacher is None else ''}given"
            )
        self.cfg, self.train_split, self.val_split, self.run_dir = cfg, train, val, Path(run_dir)
        self.device = torch.device(cfg.device)
        torch.backends.cudnn.benchmark = self.device.type == "cuda"  # fixed shapes: tune once
        # the training images stay on the training device (uint8: 150 MB for CIFAR-10)
        self.train_images = torch.from_numpy(train.images).to(self.device)
        self.train_labels = torch.from_numpy(train.labels).to(self.device)
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        self.log = log or (lambda tag, value, step: None)
        torch.manual_seed(cfg.seed)
        self.model = MultiBranchNet(cfg.net).to(self.device, memory_format=torch.channels_last)
        self.teacher_exits: list[int] = []  # the teacher exit matched with each student exit
        if self.teacher is not None:
            self.teacher.to(self.device, memory_format=torch.channels_last)
            if cfg.loss.attention_weight:  # only attention transfer needs matching exits
                self.teacher_exits = matching_exits(cfg.net, self.teacher.config)
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
        """``<run_dir>/last.pt``, rewritten after every epoch."""
        return self.run_dir / "last.pt"

    def save(self) -> None:
        """Write the resumable state: weights, optimiser, epoch, both RNGs and the history."""
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
        stored, now = state.get("train_config"), self.cfg.to_dict()
        for key in ("data", "teacher_sha256"):  # checkpoints written before they were recorded
            if isinstance(stored, dict) and key not in stored:
                now.pop(key)
        if stored != now:
            raise ValueError(
                f"{str(self.checkpoint_path)!r} was written with another training configuration "
                f"({_differences(stored, now)}); resume with the same arguments and data, or "
                "use a new run name"
            )
        where = str(self.checkpoint_path)
        kinds = {"model": dict, "optimizer": dict, "rng": dict, "torch_rng": torch.Tensor,
                 "epoch": int, "history": list}  # fmt: skip
        wrong = [k for k, kind in kinds.items() if not isinstance(state.get(k), kind)]
        if wrong:
            raise ValueError(f"training checkpoint {where!r}: missing or malformed {wrong}")
        load_state(self.model, state["model"], where)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"])
        except (ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise ValueError(f"training checkpoint {where!r}: {error_line(exc)}") from None
        self.epoch = state["epoch"]
        self.history = list(state["history"])
        return True

    def fit(self, progress: bool = True) -> list[dict]:
        """Train up to ``cfg.epochs`` (from where a resume left off); the per-epoch history."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        n = len(self.train_split)
        steps_per_epoch = n // cfg.batch_size  # drop the ragged last batch: BN dislikes tiny ones
        if steps_per_epoch < 1:
            raise ValueError(
                f"batch_size={cfg.batch_size} is not allowed; it must be at most the number of "
                f"training images ({n})"
            )
        while self.epoch < cfg.epochs:
            t0 = time.perf_counter()
            bar = tqdm(
                range(steps_per_epoch),
                desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                unit="batch",
                disable=not progress,
                mininterval=2.0,
            )
            sums, lr = self._train_epoch(bar, steps_per_epoch)
            record = self._end_epoch(sums, lr, steps_per_epoch, time.perf_counter() - t0)
            accs = " ".join(f"{a:.3f}" for a in record["val_exit_accuracy"])
            tqdm.write(f"epoch {self.epoch}: val exit accuracy {accs} ({record['seconds']:.0f}s)")
        return self.history

    def _train_epoch(self, bar: Any, steps_per_epoch: int) -> tuple[np.ndarray, float]:
        """One pass over a fresh permutation of the training images, the learning rate set per
        step by :func:`lr_at`; (summed loss of each exit, last learning rate)."""
        cfg = self.cfg
        total = steps_per_epoch * cfg.epochs
        warmup = warmup_steps(cfg.warmup_epochs, steps_per_epoch, total)
        self.model.train()
        order = self.rng.permutation(len(self.train_split))
        sums = np.zeros(cfg.net.num_stages)
        lr = cfg.lr
        for i in bar:
            lr = lr_at(self.epoch * steps_per_epoch + i, total, warmup, cfg.lr)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            loss, per_exit = self._step(torch.as_tensor(idx, device=self.device), i)
            sums += [p.item() for p in per_exit]
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.3f}")
        return sums, lr

    def _step(self, batch: torch.Tensor, i: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One SGD step on the images ``batch`` (augmented); (loss, loss of each exit)."""
        cfg = self.cfg
        x = to_tensor(augment(self.train_images[batch], self.rng, cutout=cfg.cutout))
        y = self.train_labels[batch]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            logits, embeddings, fmaps = self.model.forward_features(x)
            teacher_logits = None
            if self.teacher is not None:
                with torch.no_grad():
                    t_logits, _, t_maps = self.teacher.forward_features(x)
                teacher_logits = t_logits[-1]
        loss, per_exit = exit_losses(logits, embeddings, y, cfg.loss, teacher_logits)
        if self.teacher is not None and cfg.loss.attention_weight:
            matched = [t_maps[0][k] for k in self.teacher_exits]
            loss = loss + cfg.loss.attention_weight * attention_loss(fmaps, matched)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss.item()} at epoch {self.epoch + 1}, step {i}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss, per_exit

    def _end_epoch(self, sums: np.ndarray, lr: float, steps: int, seconds: float) -> dict:
        """Evaluate on val, append the epoch's record to the history, log it, save ``last.pt``."""
        cfg = self.cfg
        probs, _ = predict(self.model, self.val_split.images, bf16=cfg.bf16)
        acc = exit_accuracy(probs, self.val_split.labels)
        self.epoch += 1
        record = {
            "epoch": self.epoch,
            "seconds": seconds,
            "images_per_s": steps * cfg.batch_size / seconds,
            "val_exit_accuracy": [float(a) for a in acc],
            "train_exit_loss": [float(s / steps) for s in sums],
        }
        self.history.append(record)
        for k in range(cfg.net.num_stages):
            self.log(f"losses/exit_{k}", record["train_exit_loss"][k], self.epoch)
            self.log(f"distree/val_accuracy_exit_{k}", record["val_exit_accuracy"][k], self.epoch)
        self.log("charts/learning_rate", lr, self.epoch)
        self.log("charts/images_per_s", record["images_per_s"], self.epoch)
        self.save()
        return record
