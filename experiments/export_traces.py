"""Run the trained network over the validation and test splits and ship their exit traces.

    python -m experiments.export_traces --data ../shared/data/cifar10-jpeg.tar.gz

Writes ``checkpoints/traces/cifar10-val.npz`` and ``cifar10-test.npz`` (the names the environment
knows) and records them in ``checkpoints/MANIFEST.json`` with per-exit accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from experiments.cli import fail, parse_args
from experiments.train_backbone import DEFAULT_DATA


@dataclass(frozen=True)
class Args:
    """Export exit traces of a trained backbone."""

    data: str = field(default=DEFAULT_DATA, metadata={"help": "CIFAR-10 source (as for training)"})
    backbone: str = field(default="checkpoints/backbone.pt", metadata={"help": "trained weights"})
    out_dir: str = field(default="checkpoints/traces", metadata={"help": "where traces go"})
    prefix: str = field(
        default="cifar10", metadata={"help": "trace names: PREFIX-val, PREFIX-test"}
    )
    splits: tuple[str, ...] = field(default=("val", "test"), metadata={"help": "splits to export"})
    val_size: int = field(default=5000, metadata={"help": "as given to train_backbone"})
    max_images: int = field(
        default=0, metadata={"help": "only the first N of each split (0 = all)"}
    )
    bf16: bool = True
    threads: int = 2


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(Args, argv)
    import torch

    from distree_env.manifest import checkpoints_dir, command_line, record
    from distree_env.model.checkpoint import load_backbone
    from distree_env.model.data import Split, load_cifar10
    from distree_env.model.export import export_trace

    torch.set_num_threads(args.threads)
    bad = [s for s in args.splits if s not in ("val", "test")]
    if bad:
        fail(f"--splits {bad} not allowed; choose from val, test (never export train: it was seen)")
    try:
        model = load_backbone(args.backbone)
    except ValueError as e:
        fail(str(e))
    results = {}
    for split_name in args.splits:
        try:
            split = load_cifar10(args.data, split_name, val_size=args.val_size)
        except ValueError as e:
            fail(str(e))
        if args.max_images:
            split = Split(split.images[: args.max_images], split.labels[: args.max_images])
        trace = export_trace(
            model,
            split,
            split_name,
            metadata={"backbone": Path(args.backbone).name},
            bf16=args.bf16,
            progress=True,
        )
        path = Path(args.out_dir) / f"{args.prefix}-{split_name}.npz"
        trace.save(path)
        metrics = {
            "n": trace.n,
            "exit_accuracy": trace.metadata["exit_accuracy"],
            "exit_cumulative_gflops": trace.metadata["exit_cumulative_gflops"],
        }
        if path.resolve().is_relative_to(checkpoints_dir().resolve()):
            record(path, command_line("experiments.export_traces"), metrics)
        results[split_name] = metrics
        print(
            f"{path}: {trace.n} samples, exit accuracy {metrics['exit_accuracy']}, "
            f"cumulative GFLOPs {metrics['exit_cumulative_gflops']}"
        )
    return results


if __name__ == "__main__":
    main()
