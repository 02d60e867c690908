"""Train the multi-branch network jointly on CIFAR-10 and ship it to checkpoints/backbone.pt.

    python -m experiments.train_backbone --data ../shared/data/cifar10-jpeg.tar.gz
    python -m experiments.train_backbone --data ... --resume      # continue a killed run

TensorBoard: ``tensorboard --logdir runs/backbone``. A checkpoint is written every epoch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from experiments.cli import fail, parse_args

DEFAULT_DATA = "../shared/data/cifar10-jpeg.tar.gz"


@dataclass(frozen=True)
class Args:
    """Jointly train every branch and exit of the DistrEE network on CIFAR-10."""

    data: str = field(
        default=DEFAULT_DATA, metadata={"help": "CIFAR-10: .tar.gz, folder, batches-py or -bin"}
    )
    topology: str = field(default="parallel", metadata={"choices": ["parallel", "pipeline"]})
    num_devices: int = field(
        default=2, metadata={"help": "branches (parallel) or segments (pipeline)"}
    )
    widths: tuple[int, ...] = field(
        default=(48, 96, 192, 384), metadata={"help": "width of each stage"}
    )
    blocks: tuple[int, ...] = field(
        default=(1,), metadata={"help": "residual blocks per stage: one number, or one per stage"}
    )
    epochs: int = 24
    batch_size: int = 256
    lr: float = 0.1
    weight_decay: float = 5e-4
    kd_weight: float = 0.5
    feature_weight: float = 0.1
    seed: int = 0
    bf16: bool = field(default=True, metadata={"help": "bfloat16 autocast on the CPU"})
    threads: int = field(default=2, metadata={"help": "torch threads"})
    max_train_images: int = field(
        default=0, metadata={"help": "use only this many (0 = all; for tests)"}
    )
    val_size: int = field(
        default=5000, metadata={"help": "validation images carved from the training set"}
    )
    run_name: str = field(
        default="", metadata={"help": "folder under runs/backbone (default: from args)"}
    )
    runs_dir: str = "runs/backbone"
    output: str = field(default="checkpoints/backbone.pt", metadata={"help": "final weights"})
    resume: bool = field(default=False, metadata={"help": "continue from the run's last.pt"})
    progress: bool = True


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(Args, argv)
    import torch

    from distree_env.manifest import checkpoints_dir, command_line, record
    from distree_env.model.checkpoint import load_backbone, save_backbone
    from distree_env.model.data import Split, load_cifar10
    from distree_env.model.network import NetConfig
    from distree_env.model.train import LossConfig, TrainConfig, Trainer, exit_accuracy, predict

    torch.set_num_threads(args.threads)
    try:
        net = NetConfig(
            topology=args.topology,
            num_devices=args.num_devices,
            widths=args.widths,
            blocks=args.blocks[0] if len(args.blocks) == 1 else args.blocks,
        )
        cfg = TrainConfig(
            net=net,
            loss=LossConfig(kd_weight=args.kd_weight, feature_weight=args.feature_weight),
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            seed=args.seed,
            bf16=args.bf16,
        )
        train = load_cifar10(args.data, "train", val_size=args.val_size)
        val = load_cifar10(args.data, "val", val_size=args.val_size)
    except ValueError as e:
        fail(str(e))
    if args.max_train_images:
        train = Split(train.images[: args.max_train_images], train.labels[: args.max_train_images])

    name = (
        args.run_name
        or f"cifar10__{args.topology}-{args.num_devices}x"
        f"{'-'.join(map(str, args.widths))}__{args.seed}"
    )
    run_dir = Path(args.runs_dir) / name
    if (run_dir / "last.pt").exists() and not args.resume:
        fail(
            f"run {str(run_dir)!r} already has a checkpoint; pass --resume to continue it or "
            "choose --run-name"
        )
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir))
    writer.add_text("config", json.dumps(cfg.to_dict()))
    trainer = Trainer(cfg, train, val, run_dir, log=writer.add_scalar)
    if args.resume and trainer.resume():
        print(f"resumed {run_dir} at epoch {trainer.epoch}/{cfg.epochs}")
    started = time.time()
    history = trainer.fit(progress=args.progress)
    writer.close()

    save_backbone(trainer.model, args.output)
    model = load_backbone(args.output)  # measure what ships: the float16-stored weights
    probs, _ = predict(model, val.images, bf16=cfg.bf16)
    val_acc = [round(float(a), 4) for a in exit_accuracy(probs, val.labels)]
    metrics = {
        "val_exit_accuracy": val_acc,
        "epochs": cfg.epochs,
        "train_seconds": round(sum(h["seconds"] for h in history), 1),
        "train_images": len(train),
        "config": cfg.to_dict(),
    }
    out = Path(args.output).resolve()
    if out.is_relative_to(checkpoints_dir().resolve()):
        record(out, command_line("experiments.train_backbone"), metrics)
    print(
        f"saved {args.output}: val exit accuracy {val_acc}, "
        f"{time.time() - started:.0f}s this session"
    )
    return metrics


if __name__ == "__main__":
    main()
