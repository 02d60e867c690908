"""Which trace and which seeds are for tuning and which for reporting: thresholds and agents
never see ``test``.

Why: tuning on the benchmark split inflates every reported number. A trace counts as a test
trace by its name (``cifar10-test``, ``...-test.npz``) and, for files, by its metadata split.
A seed draws a stream's resource paths and its Poisson or MMPP arrivals, so held-out
evaluations also take seeds of their own (:func:`held_out_seeds`).
"""

from __future__ import annotations

from pathlib import Path

from distree_env.config import EnvConfig
from distree_env.traces import parse_synthetic_name, resolve_trace, synthetic_name

__all__ = [
    "AGENT_VAL_SEED",
    "CALIBRATION_SEED_BASE",
    "TEST_SEED_BASE",
    "calibration_seeds",
    "check_not_test",
    "held_out_seeds",
    "held_out_trace",
    "is_test_name",
    "on_split",
    "test_parts",
    "trace_split",
    "val_counterpart",
]


#: Held-out (test) evaluations use the seeds from here on. Tuning, training and validation use
#: small seeds (calibration and the benchmark's val split 0 to N-1, a learner's environments
#: its seed plus their index, an agent's validation :data:`AGENT_VAL_SEED`), so the resource
#: paths and arrivals that test measures are ones no choice saw.
TEST_SEED_BASE = 1_000_000
#: The seed of a training run's val evaluations (its best-on-val choice, ``train_agent``).
AGENT_VAL_SEED = 10_000


#: The benchmark calibrates its baselines on the seeds from here on (stall, arrival and resource
#: paths no evaluation uses), so that their figures on the val seeds (0 to N-1) are out of sample,
#: as the agents' are: a baseline scored on the seeds it was tuned on would look better on val
#: than it is, and an agent's val gain over it smaller.
CALIBRATION_SEED_BASE = 1000


def calibration_seeds(n: int) -> tuple[int, ...]:
    """The ``n`` seeds the benchmark calibrates baselines on: ``CALIBRATION_SEED_BASE``, ..."""
    return tuple(range(CALIBRATION_SEED_BASE, CALIBRATION_SEED_BASE + n))


#: A synthetic trace's splits: tune on a generator without a seed (seed 0), report on its draw
#: with this seed (``synthetic`` -> ``synthetic:seed=1``, ``synthetic:n=500`` ->
#: ``synthetic:n=500,seed=1``).
SYNTHETIC_TEST_SEED = 1


def held_out_seeds(n: int) -> tuple[int, ...]:
    """The ``n`` seeds of a held-out evaluation: ``TEST_SEED_BASE``, ``TEST_SEED_BASE + 1``..."""
    return tuple(range(TEST_SEED_BASE, TEST_SEED_BASE + n))


def is_test_name(trace: str) -> bool:
    """True when the trace's name or file stem says it is a test split (a synthetic trace:
    ``seed=1``, the held-out draw of its generator)."""
    synthetic = parse_synthetic_name(trace)
    if synthetic is not None:
        return synthetic.get("seed") == SYNTHETIC_TEST_SEED
    stem = Path(trace).stem if trace.endswith(".npz") else trace
    return stem == "test" or stem.endswith(("-test", "_test"))


def test_parts(config: EnvConfig) -> list[str]:
    """The parts of ``config`` on a test split: ``trace`` (by name), ``arrivals.split``,
    ``cluster.bandwidth.split``; empty when none is."""
    parts = ["trace"] if is_test_name(config.trace) else []
    for name, split in (
        ("arrivals.split", config.arrivals.split),
        ("cluster.bandwidth.split", config.cluster.bandwidth.split),
    ):
        if split == "test":
            parts.append(name)
    return parts


def check_not_test(config: EnvConfig, purpose: str) -> None:
    """Raise ValueError if ``config`` uses a test trace (exit, link or arrival traces), before
    any test data is read."""
    parts = test_parts(config)
    if "trace" in parts:
        raise ValueError(
            f"{purpose}: trace {config.trace!r} is a test split; tune on the val split "
            "(e.g. 'cifar10-val'), never on test"
        )
    if parts:
        raise ValueError(
            f"{purpose}: {parts[0]}='test' replays the held-out traces; tune on 'val', never "
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
    """The trace to report on for a config trained/tuned on ``trace``: ``X-val`` -> ``X-test``
    (shipped names and ``.npz`` paths), a synthetic trace without a seed -> the same with
    ``seed=1`` (``synthetic`` -> ``synthetic:seed=1``).

    Raises ValueError when ``trace`` has none (no ``-val``/``_val`` suffix, or a synthetic
    trace with a seed of its own): reporting on the tuning trace would pass it off as held out.
    """
    synthetic = parse_synthetic_name(trace)
    if synthetic is not None:
        if "seed" in synthetic:
            raise ValueError(
                f"trace {trace!r} has no held-out test split: a synthetic trace's is the same "
                f"generator with seed={SYNTHETIC_TEST_SEED}, so tune on it without a seed"
            )
        return synthetic_name({**synthetic, "seed": SYNTHETIC_TEST_SEED})
    test = _counterpart(trace, "val", "test")
    if test is None:
        raise ValueError(
            f"trace {trace!r} has no held-out test split (name the splits X-val and X-test)"
        )
    return test


def val_counterpart(trace: str) -> str | None:
    """The val split of a test trace: ``X-test`` -> ``X-val`` (names and ``.npz`` paths), a
    synthetic trace with ``seed=1`` -> the same without it; None when unknown."""
    synthetic = parse_synthetic_name(trace)
    if synthetic is not None:
        if synthetic.pop("seed", None) != SYNTHETIC_TEST_SEED:
            return None
        return synthetic_name(synthetic)
    return _counterpart(trace, "test", "val")


def on_split(config: EnvConfig, split: str, trace: str | None = None) -> EnvConfig:
    """``config`` on the traces of ``split`` (``"val"`` or ``"test"``): the exit trace ``trace``
    (default: the held-out counterpart of ``config.trace`` for test, which raises ValueError
    when it has none; itself for val) and the split's link and arrival traces (used where the
    scenario replays them)."""
    if trace is None:
        trace = held_out_trace(config.trace) if split == "test" else config.trace
    return config.replace(
        {"trace": trace, "cluster.bandwidth.split": split, "arrivals.split": split}
    )


def trace_split(trace: str) -> str:
    """The ``split`` recorded in a trace's metadata (``"unknown"`` when absent)."""
    return str(resolve_trace(trace).metadata.get("split", "unknown"))
