"""Run a trained backbone over the validation and test splits and ship their exit traces.

    python -m experiments.export_traces --backbone checkpoints/backbone-parallel.pt
    python -m experiments.export_traces --backbone checkpoints/backbone-pipeline.pt

Writes ``PREFIX-val.npz`` and ``PREFIX-test.npz``, PREFIX being ``cifar10`` for a parallel
backbone and ``cifar10-pipeline`` for a pipeline one (the names the environment knows): for a
shipped backbone into ``checkpoints/traces`` and ``checkpoints/MANIFEST.json`` (with per-exit
accuracy and compute), for any other beside the backbone unless ``--out-dir`` says where. The val
split must be the one the backbone was trained beside (its ``--val-size`` and data, recorded in
the backbone file): another would hold training images.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distree_env.model.data import VAL_SIZE
from experiments.cli import (
    MAX_THREADS,
    fail,
    one_line_errors,
    parse_args,
    require_int,
)
from experiments.train_backbone import DEFAULT_DATA

PREFIX_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEFAULT_PREFIX = {"parallel": "cifar10", "pipeline": "cifar10-pipeline"}


#: Seed of ``--max-images``' draw.
SUBSET_SEED = 0


def subset(n: int, size: int) -> Any:
    """Sorted indices of ``size`` of ``n`` images drawn at random (seeded): a split's first
    images would be one or two classes only, since the splits are ordered by class."""
    import numpy as np

    return np.sort(np.random.default_rng(SUBSET_SEED).permutation(n)[:size])


@dataclass(frozen=True)
class Args:
    """Export exit traces of a trained backbone."""

    data: str = field(default=DEFAULT_DATA, metadata={"help": "CIFAR-10 source (as for training)"})
    backbone: str = field(
        default="checkpoints/backbone-parallel.pt", metadata={"help": "trained weights"}
    )
    out_dir: str = field(
        default="",
        metadata={"help": "where traces go ('' = checkpoints/traces for a shipped backbone, "
                  "else the backbone's folder)"},
    )  # fmt: skip
    prefix: str = field(
        default="",
        metadata={"help": "trace names PREFIX-val, PREFIX-test ('' = cifar10[-pipeline])"},
    )
    splits: tuple[str, ...] = field(default=("val", "test"), metadata={"help": "splits to export"})
    val_size: int = field(
        default=0,
        metadata={"help": f"as given to train_backbone (0 = as the backbone file records, else "
                  f"{VAL_SIZE})"},
    )  # fmt: skip
    max_images: int = field(
        default=0,
        metadata={"help": "only N images of each split, drawn at random with seed 0 (the splits "
                  "are ordered by class; 0 = all)"},
    )  # fmt: skip
    tta: bool = field(default=True, metadata={"help": "flip test-time augmentation"})
    bf16: bool = field(
        default=True,
        metadata={"help": "bfloat16 autocast for the forward passes (the shipped traces use it)"},
    )
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})

    def __post_init__(self) -> None:
        require_int("threads", self.threads, 1, MAX_THREADS)
        require_int("val_size", self.val_size, 0)
        require_int("max_images", self.max_images, 0)
        if self.prefix and not PREFIX_PATTERN.fullmatch(self.prefix):
            raise ValueError(
                f"--prefix {self.prefix!r} is not allowed; use letters, digits, '.', '_' and '-' "
                "only (a name inside --out-dir, not a path)"
            )
        bad = [s for s in self.splits if s not in ("val", "test")]
        if bad:
            raise ValueError(
                f"--splits {bad} is not allowed; choose from val, test (never train: it was seen)"
            )


def default_out_dir(backbone: str) -> Path:
    """``checkpoints/traces`` for a backbone in the checkpoints folder (a shipped one: its
    traces replace the shipped ones), else the backbone's own folder: traces of an experiment
    stay beside it."""
    from distree_env.manifest import checkpoints_dir, in_checkpoints

    return checkpoints_dir() / "traces" if in_checkpoints(backbone) else Path(backbone).parent


def backbone_label(backbone: str) -> str:
    """How a trace names its network: a shipped backbone's file name, else its path (every
    experiment's file is ``backbone.pt`` in its run folder)."""
    from distree_env.manifest import in_checkpoints

    return Path(backbone).name if in_checkpoints(backbone) else str(Path(backbone))


def check_val_split(recorded: dict, val: Any, val_size: int, backbone: str) -> None:
    """ValueError unless ``val`` is the split the backbone was trained beside (where its file
    records it): a val split carved otherwise holds images the network was trained on."""
    if val is None or "val_data" not in recorded:
        return
    if recorded.get("val_size") != val_size or recorded["val_data"] != val.fingerprint():
        raise ValueError(
            f"--val-size {val_size} with this --data gives another val split than the one "
            f"{backbone!r} was trained beside (val_size {recorded.get('val_size')}, data "
            f"{recorded['val_data']}); it would hold training images. Give the same --data and "
            "--val-size as to train_backbone"
        )


@one_line_errors
def main(argv: list[str] | None = None) -> dict:
    """Run from command-line ``argv`` (default: ``sys.argv``); returns each split's metrics."""
    args = parse_args(Args, argv)
    import torch

    from distree_env.io import require_output_file
    from distree_env.manifest import command_line, in_checkpoints, record, sha256_of
    from distree_env.model.checkpoint import load_backbone
    from distree_env.model.data import Split, load_cifar10
    from distree_env.model.export import export_trace

    torch.set_num_threads(args.threads)
    try:
        model = load_backbone(args.backbone)
        prefix = args.prefix or DEFAULT_PREFIX[model.config.topology]
        out_dir = Path(args.out_dir or default_out_dir(args.backbone))
        paths = {
            s: require_output_file(out_dir / f"{prefix}-{s}.npz", "--out-dir") for s in args.splits
        }
        val_size = args.val_size or model.metrics.get("val_size", VAL_SIZE)
        splits = {s: load_cifar10(args.data, s, val_size=val_size) for s in args.splits}
        check_val_split(model.metrics, splits.get("val"), val_size, args.backbone)
    except ValueError as e:
        fail(str(e))
    results = {}
    label, backbone_hash = backbone_label(args.backbone), sha256_of(args.backbone)
    traces = {}
    for split_name, split in splits.items():
        # the network's hash: a val and a test trace of one retrained path can be told apart
        metadata: dict[str, Any] = {"backbone": label, "backbone_sha256": backbone_hash}
        if args.max_images and args.max_images < len(split.labels):
            keep = subset(len(split.labels), args.max_images)
            split = Split(split.images[keep], split.labels[keep])
            metadata["subset"] = f"{args.max_images} images drawn with seed {SUBSET_SEED}"
        trace = export_trace(
            model,
            split,
            split_name,
            metadata=metadata,
            bf16=args.bf16,
            tta=args.tta,
            progress=True,
        )
        traces[split_name] = trace
    # every split exported before any is saved: a run stopped midway never leaves one split's
    # trace of this network beside another's of an earlier one
    for split_name, trace in traces.items():
        path = paths[split_name]
        trace.save(path)
        metrics = {
            "n": trace.n,
            "exit_accuracy": trace.metadata["exit_accuracy"],
            "exit_cumulative_gflops": trace.metadata["exit_cumulative_gflops"],
            "backbone": label,
            "flip_tta": args.tta,
        }
        if in_checkpoints(path):
            record(path, command_line("experiments.export_traces"), metrics)
        results[split_name] = metrics
        print(
            f"{path}: {trace.n} samples, exit accuracy {metrics['exit_accuracy']}, "
            f"cumulative GFLOPs {metrics['exit_cumulative_gflops']}"
        )
    return results


if __name__ == "__main__":
    main()
