"""The benchmark's figures: Pareto curves per scenario and the exit distribution per policy.

Why the object API (``matplotlib.figure.Figure``) and no pyplot: no GUI backend, no global
state, safe in tests and on headless machines; files are written atomically.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from distree_env.io import atomic_open
from experiments.benchmarking.analysis import Row, pareto_front, split_rows, table_rows

__all__ = ["exits_figure", "pareto_figure", "png_bytes", "save_png"]

_BASELINE_STYLE = {
    "LastExit": {"marker": "s", "color": "black", "s": 60, "zorder": 5},
    "Oracle": {"marker": "D", "color": "goldenrod", "s": 50, "zorder": 5},
    "RandomExit": {"marker": "x", "color": "dimgray", "s": 50, "zorder": 4},
}


#: Curve colours: the default cycle without its gray (kept for RandomExit).
_PALETTE = ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "C8", "C9")


def _families(rows: Sequence[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for r in rows:
        out.setdefault(r["family"], []).append(r)
    return out


def _panel(
    ax,
    rows: Sequence[Row],
    x: str,
    scale: float,
    last: Row | None,
    paper_saving: float | None,
    tolerance: float,
) -> None:
    """One family per line: its Pareto front (cost ``x`` lower is better unless it is a
    saving), dominated points faint; baselines as single markers."""
    saving = x == "compute_saving"
    curves = 0
    for family, members in _families(rows).items():
        if family in _BASELINE_STYLE:
            ax.scatter(
                [r[x] * scale for r in members],
                [100 * r["accuracy"] for r in members],
                label=family,
                **_BASELINE_STYLE[family],
            )
            continue
        learned = members[0]["kind"] == "learned"
        color = _PALETTE[curves % len(_PALETTE)]
        curves += 1
        front = pareto_front(
            [{**r, "_cost": -r[x] if saving else r[x]} for r in members], cost="_cost"
        )
        ax.scatter(
            [r[x] * scale for r in members],
            [100 * r["accuracy"] for r in members],
            color=color,
            s=10,
            alpha=0.3,
        )
        ax.plot(
            [r[x] * scale for r in front],
            [100 * r["accuracy"] for r in front],
            color=color,
            marker="*" if learned else "o",
            markersize=12 if learned else 4,
            linewidth=2.2 if learned else 1.2,
            label=family,
            zorder=4 if learned else 3,
        )
    if last is not None:
        floor = 100 * (last["accuracy"] - tolerance)
        ax.axhline(
            floor,
            color="gray",
            linestyle="--",
            linewidth=0.8,
            label=f"last-exit accuracy − {100 * tolerance:g} pt",
        )
        if paper_saving is not None:
            ax.scatter(
                [100 * paper_saving],
                [100 * last["accuracy"]],
                marker="*",
                s=220,
                color="red",
                edgecolor="black",
                zorder=6,
                label=f"DistrEE paper: {100 * paper_saving:.1f}% saving at ≈ last-exit accuracy",
            )
    ax.grid(alpha=0.3)
    ax.set_ylabel("accuracy (%)")


def pareto_figure(
    summary: Sequence[Row],
    scenarios: Sequence[str],
    paper_saving: float,
    tolerance: float,
    title: str,
) -> Figure:
    """Rows = scenarios; left: accuracy vs mean latency, right: accuracy vs compute saving (test
    split). One Pareto line per rule family and learned algorithm; the paper's point in red."""
    fig = Figure(figsize=(12, 4.0 * len(scenarios) + 1.2), layout="constrained")
    axes = fig.subplots(len(scenarios), 2, squeeze=False)
    for i, scenario in enumerate(scenarios):
        rows = split_rows(summary, "test", scenario)
        last = next((r for r in rows if r["family"] == "LastExit"), None)
        left, right = axes[i]
        _panel(left, rows, "latency_mean_ms", 1.0, last, None, tolerance)
        left.set_xlabel("mean latency per request (ms)")
        left.set_title(f"{scenario}: accuracy vs latency (up-left is better)")
        _panel(right, rows, "compute_saving", 100.0, last, paper_saving, tolerance)
        right.set_xlabel("compute saving vs last exit (%)")
        right.set_title(f"{scenario}: accuracy vs compute (up-right is better)")
        if last is not None:  # zoom on the useful range, but keep every learned point in view
            accuracy = [100 * r["accuracy"] for r in rows]
            learned = [100 * r["accuracy"] for r in rows if r["kind"] == "learned"]
            low = min([max(min(accuracy), 100 * last["accuracy"] - 15), *learned])
            for ax in (left, right):
                ax.set_ylim(low - 1, max(accuracy) + 1)
    handles, labels = axes[0][1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=8)
    fig.suptitle(title)
    return fig


def _exit_rows(summary: Sequence[Row], scenario: str) -> list[Row]:
    """The table's policies without the matched random exits (geometric by construction)."""
    return [r for r in table_rows(summary, scenario) if r["family"] != "RandomExit"]


def exits_figure(summary: Sequence[Row], scenarios: Sequence[str], num_exits: int) -> Figure:
    """Share of requests leaving at each exit, one bar per policy of the table, per scenario."""
    counts = [len(_exit_rows(summary, s)) for s in scenarios]
    fig = Figure(figsize=(9, 0.32 * sum(counts) + 0.9 * len(scenarios) + 0.8), layout="constrained")
    axes = fig.subplots(
        len(scenarios), 1, squeeze=False, sharex=True, gridspec_kw={"height_ratios": counts}
    )[:, 0]
    for ax, scenario in zip(axes, scenarios, strict=True):
        rows = _exit_rows(summary, scenario)[::-1]
        names = [r["policy"] for r in rows]
        left = np.zeros(len(rows))
        for k in range(num_exits):
            share = np.array([r.get(f"exit_{k}", 0.0) for r in rows])
            ax.barh(names, share, left=left, color=f"C{k}", label=f"exit {k}")
            left += share
        ax.set_xlim(0, 1)
        ax.set_title(f"{scenario}: exit distribution", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
    axes[-1].set_xlabel("share of requests")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=num_exits, fontsize=8)
    return fig


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """``fig`` as PNG (rendered before any file is written: see ``experiments.benchmark``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_png(fig: Figure, path: Path, dpi: int = 110) -> None:
    """Write ``fig`` as PNG, atomically."""
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi)
