"""Ship a small uint8 sample of the CIFAR-10 test split, so the live runtime needs no dataset.

    python -m experiments.export_images --n 1000

Writes ``checkpoints/cifar10-test-sample.npz`` (``images`` uint8 ``[n, 32, 32, 3]``, ``labels``,
``indices`` into the test split; no pickles) and records it in ``checkpoints/MANIFEST.json``.
The images are a seeded, class-balanced draw, sorted by index.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from distree_env.model.data import MAX_SAMPLE_IMAGES, TEST_SAMPLE_FILE
from experiments.cli import (
    MAX_SEED,
    fail,
    one_line_errors,
    parse_args,
    require_int,
)
from experiments.train_backbone import DEFAULT_DATA


@dataclass(frozen=True)
class Args:
    """Export a uint8 sample of the CIFAR-10 test split."""

    data: str = field(default=DEFAULT_DATA, metadata={"help": "CIFAR-10 source (as for training)"})
    n: int = field(
        default=1000,
        metadata={
            "help": f"images in the sample: a multiple of 10 in [10, {MAX_SAMPLE_IMAGES}] "
            "(the same number per class)"
        },
    )
    seed: int = field(default=0, metadata={"help": f"seed of the draw (0 to {MAX_SEED})"})
    output: str = field(
        default=f"checkpoints/{TEST_SAMPLE_FILE}",
        metadata={
            "help": "where to write; the default is the shipped sample the live runtime reads "
            "(overwritten; a file under checkpoints/ is recorded in checkpoints/MANIFEST.json)"
        },
    )

    def __post_init__(self) -> None:
        require_int("seed", self.seed, 0, MAX_SEED)
        if not 10 <= self.n <= MAX_SAMPLE_IMAGES or self.n % 10:
            raise ValueError(
                f"--n={self.n} is not allowed: a multiple of 10 in [10, {MAX_SAMPLE_IMAGES}] "
                "(the same number of images per class)"
            )


def balanced_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` images, ``n / classes`` per class, drawn with ``seed``.

    :param labels: the split's labels.
    :param n: sample size, a multiple of the number of classes.
    :param seed: the draw's seed.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = n // len(classes)
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in classes]
    return np.sort(np.concatenate(picks))


@one_line_errors
def main(argv: list[str] | None = None) -> dict:
    """Run from command-line ``argv`` (default: ``sys.argv``); returns the recorded metrics."""
    args = parse_args(Args, argv)

    from distree_env.io import atomic_write_bytes, require_output_file
    from distree_env.manifest import command_line, in_checkpoints, record
    from distree_env.model.data import load_cifar10, load_image_sample

    try:
        out = require_output_file(args.output, "--output")
        test = load_cifar10(args.data, "test")
        if args.n // 10 > np.bincount(test.labels).min():
            raise ValueError(f"--n {args.n} is larger than the test split allows")
    except ValueError as e:
        fail(str(e))
    idx = balanced_sample(test.labels, args.n, args.seed)
    buf = io.BytesIO()
    np.savez_compressed(
        buf, images=test.images[idx], labels=test.labels[idx].astype(np.int64), indices=idx
    )
    atomic_write_bytes(out, buf.getvalue())
    metrics = {"n": int(args.n), "split": "test", "seed": args.seed}
    if in_checkpoints(out):
        record(out, command_line("experiments.export_images"), metrics)
    sample, _ = load_image_sample(out)  # what ships reads back
    print(f"{out}: {len(sample)} test images, {np.bincount(sample.labels).tolist()} per class")
    return metrics


if __name__ == "__main__":
    main()
