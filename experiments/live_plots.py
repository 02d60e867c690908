"""Figures of live runs: how fast the host served each run, against the fitted model, in time.

Why a figure: on a shared host the service time drifts within seconds, and where requests queue a
few percent of it moves the waits by tens of percent; a look at the runs laid out in time shows
whether the evaluated runs met the host that the calibration runs measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from experiments.benchmarking.plots import save_png

__all__ = ["ROLLING_REQUESTS", "timeline_figure"]

#: Requests in the rolling median that smooths each run's curve.
ROLLING_REQUESTS = 25


def _rolling_median(x: np.ndarray, n: int) -> np.ndarray:
    if x.size < n:
        return np.full(x.size, np.median(x)) if x.size else x
    windows = np.lib.stride_tricks.sliding_window_view(x, n)
    return np.concatenate([np.full(n // 2, np.nan), np.median(windows, axis=1),
                           np.full(n - 1 - n // 2, np.nan)])  # fmt: skip


def timeline_figure(
    series: Sequence[tuple[str, bool, np.ndarray, np.ndarray]], path: Path | str
) -> None:
    """Write the timeline PNG: one curve per run, its live service time over the model's
    (rolling median of :data:`ROLLING_REQUESTS` requests) against minutes since the first run
    started; one colour per policy and role, calibration runs dashed.

    :param series: per run ``(policy, is_calibration, start_s, ratio)``.
    """
    fig = Figure(figsize=(11, 3.6))
    ax = fig.add_subplot()
    colours: dict[tuple[str, bool], str] = {}
    for policy, calibration, start_s, ratio in series:
        key = (policy, calibration)
        first = key not in colours
        colours.setdefault(key, f"C{len(colours) % 10}")
        ax.plot(
            start_s / 60.0,
            _rolling_median(ratio, ROLLING_REQUESTS),
            color=colours[key],
            linestyle="--" if calibration else "-",
            linewidth=1.0,
            label=f"{policy} ({'calibration' if calibration else 'evaluated'})" if first else None,
        )
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("minutes since the first run started")
    ax.set_ylabel("service live / fitted model")
    ax.set_title(
        "Service time of every run against the fitted model (the policy's decision time left "
        f"out; rolling median of {ROLLING_REQUESTS} requests)",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, Path(path))
