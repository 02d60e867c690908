"""Which trace is for tuning and which for reporting: thresholds and agents never see ``test``.

Why: tuning on the benchmark split inflates every reported number. A trace counts as a test
trace by its name (``cifar10-test``, ``...-test.npz``) and, for files, by its metadata split.
"""

from __future__ import annotations

from pathlib import Path

from distree_env.config import EnvConfig
from distree_env.traces import resolve_trace, trace_path

__all__ = [
    "check_not_test",
    "held_out_trace",
    "is_test_name",
    "on_split",
    "trace_split",
    "val_counterpart",
]


def is_test_name(trace: str) -> bool:
    """True when the trace's name or file stem says it is a test split."""
    stem = Path(trace).stem if trace.endswith(".npz") else trace
    return stem == "test" or stem.endswith(("-test", "_test"))


def check_not_test(config: EnvConfig, purpose: str) -> None:
    """Raise ValueError if ``config`` uses a test trace (exit, link or arrival traces), before
    any test data is read."""
    if is_test_name(config.trace):
        raise ValueError(
            f"{purpose}: trace {config.trace!r} is a test split; tune on the val split "
            "(e.g. 'cifar10-val'), never on test"
        )
    for name, split in (
        ("arrivals.split", config.arrivals.split),
        ("cluster.bandwidth.split", config.cluster.bandwidth.split),
    ):
        if split == "test":
            raise ValueError(
                f"{purpose}: {name}='test' replays the held-out traces; tune on 'val', never "
                "on test"
            )


def _counterpart(trace: str, split: str, other: str) -> str | None:
    """``trace`` (a name or an ``.npz`` path) with its ``split`` suffix (``-val``, ``_val``...)
    turned into ``other``'s; None when it has none."""
    stem, ext = (trace[:-4], ".npz") if trace.endswith(".npz") else (trace, "")
    for sep in ("-", "_"):
        if stem.endswith(sep + split):
            return stem[: -len(split)] + other + ext
    return None


def held_out_trace(trace: str) -> str:
    """The trace to report on for a config trained/tuned on ``trace``.

    ``X-val`` -> ``X-test`` for shipped names and ``.npz`` paths, where that trace exists; a
    synthetic trace -> the same generator with another seed (``synthetic:seed=1``); anything
    else is returned unchanged.
    """
    if trace == "synthetic":
        return "synthetic:seed=1"
    test = _counterpart(trace, "val", "test")
    if test is not None and (Path(test) if test.endswith(".npz") else trace_path(test)).is_file():
        return test
    return trace


def val_counterpart(trace: str) -> str | None:
    """The val split of a test trace: ``X-test`` -> ``X-val`` (names and ``.npz`` paths), and
    ``synthetic`` <-> ``synthetic:seed=1`` (the agents' convention); None when unknown."""
    if trace == "synthetic":
        return "synthetic:seed=1"
    if trace == "synthetic:seed=1":
        return "synthetic"
    return _counterpart(trace, "test", "val")


def on_split(config: EnvConfig, split: str, trace: str | None = None) -> EnvConfig:
    """``config`` on the traces of ``split`` (``"val"`` or ``"test"``): the exit trace ``trace``
    (default: the held-out counterpart of ``config.trace`` for test, itself for val) and the
    split's link and arrival traces (used where the scenario replays them)."""
    if trace is None:
        trace = held_out_trace(config.trace) if split == "test" else config.trace
    return config.replace(
        {"trace": trace, "cluster.bandwidth.split": split, "arrivals.split": split}
    )


def trace_split(trace: str) -> str:
    """The ``split`` recorded in a trace's metadata (``"unknown"`` when absent)."""
    return str(resolve_trace(trace).metadata.get("split", "unknown"))
