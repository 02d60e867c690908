"""Write the benchmark's results: CSV of every point, Markdown table and headline text, JSON.

Why generated: the README's figures must come from a run, never be typed. Every file is written
atomically (a killed run leaves the previous file intact), and nothing here depends on the time
of day, so the same results give byte-identical files.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distree_env.io import atomic_open
from experiments.benchmarking.analysis import Row, table_rows

__all__ = [
    "headline_lines",
    "markdown_table",
    "write_csv",
    "write_json",
    "write_text",
]

#: Table columns: (heading, metric, scale, decimals).
_COLUMNS = (
    ("accuracy (%)", "accuracy", 100.0, 2),
    ("compute saving (%)", "compute_saving", 100.0, 1),
    ("mean latency (ms)", "latency_mean_ms", 1.0, 2),
    ("p95 latency (ms)", "latency_p95_ms", 1.0, 2),
    ("deadline met (%)", "qos_rate", 100.0, 1),
    ("mean reward", "mean_reward", 1.0, 3),
)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest exact round trip
    return value


def write_csv(path: Path, rows: Sequence[Row]) -> None:
    """All ``rows`` (union of their columns, in first-seen order), floats written exactly."""
    columns = list(dict.fromkeys(c for row in rows for c in row))
    with atomic_open(path, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    """Strict JSON (NaN and infinities become null)."""
    write_text(path, json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")


def write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def _mean_std(row: Row, metric: str, scale: float, decimals: int) -> str:
    mean = row[metric] * scale
    std = row.get(f"{metric}_std", 0.0) * scale
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def markdown_table(summary: Sequence[Row], scenarios: Sequence[str]) -> str:
    """One table per scenario (mean ± standard deviation over seeds) of ``table_rows``."""
    parts = []
    header = "| policy | " + " | ".join(c[0] for c in _COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(_COLUMNS)
    for scenario in scenarios:
        lines = [f"**{scenario}**", "", header, rule]
        for row in table_rows(summary, scenario):
            cells = [_mean_std(row, m, s, d) for _, m, s, d in _COLUMNS]
            lines.append(f"| {row['policy']} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _saving(point: dict[str, Any] | None, metric: str) -> str:
    if point is None:
        return "none within tolerance"
    return f"{_pct(point[metric])} with {point['policy']} ({100 * point['accuracy']:.2f}%)"


def _pair(h: dict[str, Any], metric: str, has_learned: bool) -> str:
    text = f"best rule {_saving(h['best_rule'][metric], metric)}"
    if has_learned:
        text += f", learned {_saving(h['learned'][metric], metric)}"
    return text


def headline_lines(headlines: Sequence[dict[str, Any]], paper_saving: float) -> list[str]:
    """Markdown bullets: savings at comparable accuracy, deadline satisfaction, and the front."""
    lines = []
    for h in headlines:
        last = h["last_exit"]
        if last is None:
            continue
        tol = h["tolerance_points"]
        rule, learned = h["best_rule"], h["learned"]
        has_learned = h["learned_most_accurate"] is not None
        text = (
            f"- **{h['scenario']}**: within {tol:g} points of last-exit accuracy "
            f"({100 * last['accuracy']:.2f}%), compute saving: "
            f"{_pair(h, 'compute_saving', has_learned)} (DistrEE paper: "
            f"{100 * paper_saving:.1f}%); latency saving: "
            f"{_pair(h, 'latency_saving', has_learned)}."
        )
        qos = [f"last-exit {_pct(last['qos_rate'])}"]
        for label, point in (
            ("best rule", rule["latency_saving"]),
            ("learned", learned["latency_saving"]),
        ):
            if point is not None:
                qos.append(f"{label} {_pct(point['qos_rate'])}")
        text += " Deadline met: " + ", ".join(qos) + "."
        if has_learned and learned["compute_saving"] is None:
            best = h["learned_most_accurate"]
            gap = 100 * (last["accuracy"] - best["accuracy"])
            text += (
                f" The most accurate learned agent, {best['policy']}, is {gap:.2f} points "
                "below last-exit."
            )
        if h["selected_on"] == "val":
            text += " (Operating points chosen on the val trace, numbers measured on test.)"
        lines.append(text)
        front = h["front"]
        if front is not None:
            need = ", ".join(
                f"{family} {'unreachable' if v is None else f'{v:.2f} ms'}"
                for family, v in front["rules_latency_ms"].items()
            )
            verdict = "ahead of every rule" if front["ahead"] else "NOT ahead of every rule"
            by = ""
            if front["closest_rule"] is not None:
                margin, spread = front["margin_ms"], front["latency_mean_ms_std"]
                noise = ", within the seeds' spread" if abs(margin) <= spread else ""
                by = (
                    f" (closest: {front['closest_rule']}, {margin:+.2f} ms = "
                    f"{100 * front['worst_margin']:+.1f}%{noise})"
                )
            lines.append(
                f"  - accuracy-latency front: {front['policy']} reaches "
                f"{100 * front['accuracy']:.2f}% at {front['latency_mean_ms']:.2f} ± "
                f"{front['latency_mean_ms_std']:.2f} ms (deadline met "
                f"{_pct(front['qos_rate'])}); at that accuracy the rules need: {need}"
                f" → **{verdict}**{by}."
            )
    return lines
