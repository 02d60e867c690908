"""Which trace is for tuning and which for reporting: thresholds and agents never see ``test``.

Why: tuning on the benchmark split inflates every reported number. A trace counts as a test
trace by its name (``cifar10-test``, ``...-test.npz``) and, for files, by its metadata split.
"""

from __future__ import annotations

from pathlib import Path

from distree_env.config import EnvConfig
from distree_env.traces import resolve_trace, trace_path

__all__ = ["check_not_test", "held_out_trace", "is_test_name", "on_split", "trace_split"]


def is_test_name(trace: str) -> bool:
    """True when the trace's name or file stem says it is a test split."""
    stem = Path(trace).stem if trace.endswith(".npz") else trace
    return stem == "test" or stem.endswith(("-test", "_test"))


def check_not_test(config: EnvConfig, purpose: str) -> None:
    """Raise ValueError if ``config`` uses a test trace, before any test data is read."""
    if is_test_name(config.trace):
        raise ValueError(
            f"{purpose}: trace {config.trace!r} is a test split; tune on the val split "
            "(e.g. 'cifar10-val'), never on test"
        )


def held_out_trace(trace: str) -> str:
    """The trace to report on for a config trained/tuned on ``trace``.

    ``cifar10-val`` -> ``cifar10-test`` when shipped; a synthetic trace -> the same generator
    with another seed (``synthetic:seed=1``); anything else is returned unchanged.
    """
    if trace.endswith("-val") and trace_path(trace[:-4] + "-test").is_file():
        return trace[:-4] + "-test"
    if trace == "synthetic":
        return "synthetic:seed=1"
    return trace


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
