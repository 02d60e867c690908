"""Train the early-exit WideResNet network on CIFAR-10.

    # the CPU recipe: each network self-distilled, no cutout (one core each, side by side)
    python -m experiments.train_backbone --topology pipeline --kd-alpha 0.5 --cutout 0 --threads 1
    python -m experiments.train_backbone --topology parallel --kd-alpha 0.5 --cutout 0 --threads 1
    # or the lineage's: the parallel branches distilled from a trained backbone's final exit (KD;
    # attention transfer also needs a teacher exit after every block the student exits after)
    python -m experiments.train_backbone --topology parallel --attention-weight 0 \
        --teacher checkpoints/backbone-pipeline.pt
    python -m experiments.train_backbone ... --resume      # continue a killed run

The weights go to ``RUNS_DIR/RUN_NAME/backbone.pt`` unless ``--output`` names a file;
``--output checkpoints/backbone-TOPOLOGY.pt`` replaces the shipped network and its MANIFEST entry
(the shipped ones were made by ``experiments/train_backbones_gpu.sh``). ``--preset cpu`` (default)
is sized for a 2-core CPU, ``gpu`` for one H100/H200 in about 10 minutes, ``tiny`` for tests.
TensorBoard: ``tensorboard --logdir runs/backbone``. A checkpoint is written every epoch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from experiments.cli import (
    MAX_THREADS,
    fail,
    one_line_errors,
    parse_args,
    require_int,
)

DEFAULT_DATA = "../shared/data/cifar10-jpeg.tar.gz"


@dataclass(frozen=True)
class Args:
    """Jointly train every branch and exit of the early-exit WideResNet on CIFAR-10."""

    data: str = field(
        default=DEFAULT_DATA, metadata={"help": "CIFAR-10: .tar.gz, folder, batches-py or -bin"}
    )
    preset: str = field(
        default="cpu",
        metadata={
            "help": "sizes and schedule (tiny: for tests)",
            "choices": ["cpu", "gpu", "tiny"],
        },
    )
    topology: str = field(
        default="parallel",
        metadata={
            "help": "DistrEE branches or MDI-Exit segments",
            "choices": ["parallel", "pipeline"],
        },
    )
    teacher: str = field(
        default="", metadata={"help": "backbone .pt whose final exit teaches ('' = self)"}
    )
    widen: int = field(default=0, metadata={"help": "WRN widening factor (0 = preset)"})
    exits: str = field(
        default="", metadata={"help": "blocks an exit follows: 1,3,4,6 or all ('' = preset)"}
    )
    epochs: int = field(default=0, metadata={"help": "0 = preset"})
    batch_size: int = field(default=0, metadata={"help": "0 = preset"})
    lr: float = field(default=0.0, metadata={"help": "peak one-cycle learning rate (0 = preset)"})
    weight_decay: float = field(default=5e-4, metadata={"help": "SGD weight decay"})
    kd_alpha: float = field(default=0.9, metadata={"help": "weight of the KD term (NoNN: 0.9)"})
    kd_temperature: float = field(default=4.0, metadata={"help": "KD temperature (NoNN: 4)"})
    attention_weight: float = field(
        default=500.0, metadata={"help": "attention transfer weight (teacher runs)"}
    )
    feature_weight: float = field(
        default=0.5, metadata={"help": "feature transfer between consecutive exits"}
    )
    label_smoothing: float = field(default=0.1, metadata={"help": "of the cross-entropy"})
    cutout: int = field(default=8, metadata={"help": "cutout square side in pixels (0 = none)"})
    seed: int = field(default=0, metadata={"help": "weights, batches and augmentation"})
    bf16: bool = field(default=True, metadata={"help": "bfloat16 autocast"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    max_train_images: int = field(
        default=0,
        metadata={"help": "train on this many, drawn at random with --seed (0 = all; for tests "
                  "and timing)"},
    )  # fmt: skip
    val_size: int = field(
        default=5000, metadata={"help": "validation images carved from the training set"}
    )
    run_name: str = field(
        default="", metadata={"help": "folder under --runs-dir (default: from args)"}
    )
    runs_dir: str = field(default="runs/backbone", metadata={"help": "run folders"})
    output: str = field(
        default="",
        metadata={"help": "final weights (default RUNS_DIR/RUN_NAME/backbone.pt; "
                  "checkpoints/backbone-TOPOLOGY.pt replaces the shipped one)"},
    )  # fmt: skip
    resume: bool = field(default=False, metadata={"help": "continue from the run's last.pt"})
    progress: bool = field(default=True, metadata={"help": "progress bars"})

    def __post_init__(self) -> None:
        require_int("threads", self.threads, 1, MAX_THREADS)
        for name in ("max_train_images", "widen", "epochs", "batch_size"):
            require_int(name, getattr(self, name), 0)


def parse_exits(text: str, num_blocks: int) -> tuple[int, ...]:
    """``"1,3,4,6"`` -> ``(1, 3, 4, 6)``, ``"all"`` -> an exit after each of ``num_blocks``.

    NetConfig checks the block numbers themselves.
    """
    if text == "all":
        return tuple(range(1, num_blocks + 1))
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(
            f"--exits {text!r} is not allowed; give block numbers separated by commas"
        ) from None


def training_data(args: Args) -> tuple[Any, Any]:
    """The (train, val) splits of ``--data``: val carved with ``--val-size``, train subsampled
    at random (seeded by ``--seed``) to ``--max-train-images``; the split is ordered by class,
    so its first images would be one or two classes only."""
    import numpy as np

    from distree_env.model.data import Split, load_cifar10

    train = load_cifar10(args.data, "train", val_size=args.val_size)
    val = load_cifar10(args.data, "val", val_size=args.val_size)
    if args.max_train_images:
        keep = np.random.default_rng(args.seed).permutation(len(train))
        keep = np.sort(keep[: args.max_train_images])
        train = Split(train.images[keep], train.labels[keep])
    return train, val


def save_measured(model: Any, out: Path, metrics: dict, val: Any, bf16: bool) -> None:
    """Save ``model`` at ``out`` with ``metrics`` and its val accuracy per exit, measured on the
    float16 weights the file holds (the file keeps its metrics wherever it goes; one in the
    checkpoints folder is recorded in the MANIFEST too, which loading it needs)."""
    from distree_env.manifest import command_line, in_checkpoints, record
    from distree_env.model.checkpoint import load_backbone, save_backbone
    from distree_env.model.train import predict
    from distree_env.traces.format import exit_accuracy

    def write() -> None:
        save_backbone(model, out, metrics)
        if in_checkpoints(out):
            record(out, command_line("experiments.train_backbone"), metrics)

    write()
    probs, _ = predict(load_backbone(out), val.images, bf16=bf16)
    metrics["val_exit_accuracy"] = [round(float(a), 4) for a in exit_accuracy(probs, val.labels)]
    write()


def distillation(cfg: Any) -> str:
    """How ``cfg`` distils, in words (the README's and MANIFEST's recipe line)."""
    if not cfg.teacher:
        return "self-distillation from the deepest exit"
    transfer = " + attention transfer" if cfg.loss.attention_weight else ""
    return f"teacher {cfg.teacher} (final exit), KD{transfer}"


@one_line_errors
def main(argv: list[str] | None = None) -> dict:
    """Run from command-line ``argv`` (default: ``sys.argv``); returns the final metrics."""
    args = parse_args(Args, argv)
    import torch

    from distree_env.io import require_output_dir, require_output_file
    from distree_env.manifest import sha256_of
    from distree_env.model.checkpoint import load_backbone
    from distree_env.model.network import NetConfig
    from distree_env.model.presets import preset
    from distree_env.model.train import LossConfig, TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    try:
        if args.output:
            require_output_file(args.output, "--output")
        require_output_dir(args.runs_dir, "--runs-dir")
        p = preset(args.preset, args.topology)
        net_kw = p["net"] | ({"widen": args.widen} if args.widen else {})
        if args.exits:
            net_kw |= {"exits": parse_exits(args.exits, NetConfig(**net_kw).num_blocks)}
            if args.topology == "pipeline":  # one segment per device
                net_kw["num_devices"] = len(net_kw["exits"])
        net = NetConfig(**net_kw)
        teacher = load_backbone(args.teacher) if args.teacher else None
        cfg = TrainConfig(
            net=net,
            loss=LossConfig(
                kd_alpha=args.kd_alpha,
                kd_temperature=args.kd_temperature,
                attention_weight=args.attention_weight,
                feature_weight=args.feature_weight,
                label_smoothing=args.label_smoothing,
            ),
            epochs=args.epochs or p["epochs"],
            batch_size=args.batch_size or p["batch_size"],
            lr=args.lr or p["lr"],
            weight_decay=args.weight_decay,
            cutout=args.cutout,
            seed=args.seed,
            bf16=args.bf16,
            teacher=Path(args.teacher).name if args.teacher else "",
            teacher_sha256=sha256_of(args.teacher) if args.teacher else "",
            device=p["device"],
        )
        if cfg.device != "cpu" and not torch.cuda.is_available():
            raise ValueError(f"--preset {args.preset} needs a CUDA GPU, and none is available")
        train, val = training_data(args)
        cfg = replace(cfg, data=train.fingerprint())
        if cfg.batch_size > len(train):
            raise ValueError(
                f"--batch-size {cfg.batch_size} is not allowed; it must be at most the number "
                f"of training images ({len(train)})"
            )
    except ValueError as e:
        fail(str(e))

    name = args.run_name or (
        f"cifar10__{args.topology}-{net.num_devices}x{net.name}__{args.preset}"
        f"{'__kd-' + Path(args.teacher).stem if args.teacher else ''}__{args.seed}"
    )
    run_dir = Path(args.runs_dir) / name
    if (run_dir / "last.pt").exists() and not args.resume:
        fail(
            f"run {str(run_dir)!r} already has a checkpoint; pass --resume to continue it or "
            "choose --run-name"
        )
    from torch.utils.tensorboard import SummaryWriter

    try:
        trainer = Trainer(cfg, train, val, run_dir, teacher=teacher)
        if args.resume and trainer.resume():
            print(f"resumed {run_dir} at epoch {trainer.epoch}/{cfg.epochs}")
    except ValueError as e:
        fail(str(e))
    # opened once the run is accepted: a refused resume leaves no log of the config it refused
    writer = SummaryWriter(str(run_dir))
    writer.add_text("config", json.dumps(cfg.to_dict()))
    trainer.log = writer.add_scalar
    started = time.time()
    history = trainer.fit(progress=args.progress)
    writer.close()

    out = Path(args.output) if args.output else run_dir / "backbone.pt"
    metrics = {
        "architecture": f"{net.num_branches} x pre-activation {net.name}, exits after blocks "
        f"{list(net.exits)}",
        "distillation": distillation(cfg),
        "epochs": cfg.epochs,
        "train_seconds": round(sum(h["seconds"] for h in history), 1),
        "train_images": len(train),
        "device": torch.cuda.get_device_name() if cfg.device == "cuda" else "cpu",
        "config": cfg.to_dict(),
        # the val split it was trained beside: export_traces refuses another (training images)
        "val_size": args.val_size,
        "val_data": val.fingerprint(),
    }
    save_measured(trainer.model, out, metrics, val, cfg.bf16)
    print(
        f"saved {out}: val exit accuracy {metrics['val_exit_accuracy']}, "
        f"{metrics['train_seconds']}s training, {time.time() - started:.0f}s this session"
    )
    return metrics


if __name__ == "__main__":
    main()
