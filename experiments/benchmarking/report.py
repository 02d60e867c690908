"""Write the benchmark's results: CSV of every point, Markdown table and headline text, JSON.

Why generated: the README's figures must come from a run, never be typed. Every file is written
atomically (a killed run leaves the previous file intact), and nothing here depends on the time
of day, so the same results give byte-identical files.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from distree_env.io import strict_json
from experiments.benchmarking.analysis import (
    GAP_TARGET,
    KEPT_TARGET,
    MARGIN_TARGET,
    MIN_MISSES,
    MISS_TARGET,
    TOLERANCE,
    WORSE_LIMIT,
    Row,
    table_rows,
)

__all__ = [
    "glance_table",
    "headline_lines",
    "markdown_table",
    "csv_text",
    "json_text",
]

#: Table columns: (heading, metric, scale, decimals).
_COLUMNS = (
    ("accuracy (%)", "accuracy", 100.0, 2),
    ("compute saving (%)", "compute_saving", 100.0, 1),
    ("mean latency (ms)", "latency_mean_ms", 1.0, 2),
    ("p95 latency (ms)", "latency_p95_ms", 1.0, 2),
    ("deadline met (%)", "qos_rate", 100.0, 1),
    ("dropped (%)", "drop_rate", 100.0, 1),
    ("mean reward", "mean_reward", 1.0, 3),
)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest exact round trip
    return value


def csv_text(rows: Sequence[Row]) -> str:
    """All ``rows`` as CSV (union of their columns, in first-seen order), floats exact."""
    columns = list(dict.fromkeys(c for row in rows for c in row))
    handle = io.StringIO()
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return handle.getvalue()


def json_text(data: Any) -> str:
    """Strict JSON (NaN and infinities become null)."""
    return strict_json(data, indent=2) + "\n"


def _mean_std(row: Row, metric: str, scale: float, decimals: int) -> str:
    mean = row[metric] * scale
    std = row.get(f"{metric}_std", 0.0) * scale
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def markdown_table(summary: Sequence[Row], scenarios: Sequence[str]) -> str:
    """One table per scenario (test split, mean ± standard deviation over seeds) of
    ``table_rows``."""
    parts = []
    header = "| policy | kind | " + " | ".join(c[0] for c in _COLUMNS) + " |"
    rule = "|---|---|" + "---:|" * len(_COLUMNS)
    for scenario in scenarios:
        lines = [f"**{scenario}**", "", header, rule]
        for row in table_rows(summary, scenario):
            cells = [_mean_std(row, m, s, d) for _, m, s, d in _COLUMNS]
            lines.append(f"| {row['policy']} | {row['kind']} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%" if x == 0 or x >= 0.001 else f"{100 * x:.2g}%"


def _met(flag: bool) -> str:
    return "met" if flag else "**NOT met**"


def _miss_change(d: dict[str, Any]) -> str:
    """The agent's deadline misses against the baseline's, in words, and the verdict."""
    if d["target_met"] is None and d["requests"] is None:
        return "the baseline misses none (target: not applicable)"
    if d["target_met"] is None:
        return (
            f"the baseline misses about {d['baseline_miss_rate'] * d['requests']:.0f} of "
            f"{d['requests']} requests, under {MIN_MISSES}: too few for a relative comparison "
            f"(target {100 * MISS_TARGET:.0f}%: not applicable)"
        )
    change = d["relative_reduction"]
    words = f"{100 * abs(change):.0f}% {'fewer' if change >= 0 else 'more'}"
    return f"{words} (target {100 * MISS_TARGET:.0f}%: {_met(d['target_met'])})"


def _agent_line(a: dict[str, Any], base: str) -> str:
    m, r = a["margin"], a["reward"]
    text = (
        f"  - {a['policy']}: {r['mean']:.3f} per request, {m['mean']:+.3f} against {base} "
        f"(per seed {m['min']:+.3f} to {m['max']:+.3f}; target >= +{MARGIN_TARGET:g} on every "
        f"seed: {_met(a['margin_target_met'])})"
    )
    if "val_margin" in a:
        target = (
            f"target {100 * KEPT_TARGET:.0f}% of it and never {100 * WORSE_LIMIT:g}% below on a "
            f"seed: {_met(a['held_out_target_met'])}"
        )
        if a.get("kept_gain") is None:
            text += f"; no gain on val ({a['val_margin']:+.3f}) to keep on test ({target})"
        else:
            text += (
                f"; its gain is {a['val_margin']:+.3f} on val and {m['mean']:+.3f} on the "
                f"held-out test, {100 * a['kept_gain']:.0f}% of it kept ({target})"
            )
    if "gap_closed" in a:
        g = a["gap_closed"]
        text += (
            f"; closes {100 * g['mean']:.0f}% of {base}'s gap to the Oracle (per seed "
            f"{100 * g['min']:.0f}% to {100 * g['max']:.0f}%; target {100 * GAP_TARGET:.0f}%: "
            f"{_met(a['gap_target_met'])})"
        )
    return text + "."


def glance_table(headlines: Sequence[dict[str, Any]]) -> str:
    """One row per scenario: the best non-learned policy and the best agent, each chosen on val,
    their reward per request on test, the agent's margin and share of the gap to the Oracle
    (mean, per-seed range) and whether both targets hold (the margin on every seed, the share
    on average). Why: the answer to the
    project's question at a glance; the bullets below it give each agent and the deadlines."""
    lines = [
        "| scenario | best non-learned (chosen on val) | reward | best agent (chosen on val) "
        f"| reward | margin (per seed) | gap to Oracle closed (per seed) | Oracle | targets: "
        f"+{MARGIN_TARGET:g} on every seed, {100 * GAP_TARGET:.0f}% of the gap |",
        "|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for h in headlines:
        base, oracle = h["best_baseline"], h["oracle"]
        if base is None:
            continue
        best = next((a for a in h["agents"] if a["policy"] == h["best_agent"]), None)
        agent = ["-", "-", "-", "-"]
        verdict = "no agent"
        if best is not None:
            m, g = best["margin"], best.get("gap_closed")
            agent = [
                best["policy"],
                f"{best['reward']['mean']:.3f}",
                f"{m['mean']:+.3f} ({m['min']:+.3f} to {m['max']:+.3f})",
                "-"
                if g is None
                else f"{100 * g['mean']:.0f}% ({100 * g['min']:.0f}% to {100 * g['max']:.0f}%)",
            ]
            verdict = _met(best["margin_target_met"] and best.get("gap_target_met", False))
        oracle_reward = "-" if oracle is None else f"{oracle['mean_reward']:.3f}"
        cells = [h["scenario"], base["policy"], f"{base['mean_reward']:.3f}", *agent,
                 oracle_reward, verdict]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline_lines(headlines: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown bullets per scenario: the best non-learned policy (chosen on val) against the
    Oracle, each learned agent against it per seed, and deadline misses at equal accuracy."""
    lines = []
    for h in headlines:
        base, oracle = h["best_baseline"], h["oracle"]
        if base is None:
            continue
        text = (
            f"- **{h['scenario']}**: best non-learned policy (chosen on val) {base['policy']}: "
            f"{base['mean_reward']:.3f} per request"
        )
        if oracle is not None:
            text += (
                f"; per-request hindsight Oracle {oracle['mean_reward']:.3f} (it knows each "
                "request's labels and latencies, but not its effect on the queue)"
            )
        lines.append(text + ".")
        if not h["agents"]:
            lines.append("  - no learned agent for this scenario.")
            continue
        for a in h["agents"]:
            lines.append(_agent_line(a, base["policy"]))
        best = next(a for a in h["agents"] if a["policy"] == h["best_agent"])
        if best["margin"]["mean"] <= 0:
            lines.append(
                f"  - The learned agents do NOT beat {base['policy']} here: the best one on val, "
                f"{best['policy']}, is {best['margin']['mean']:+.3f} per request on test."
            )
        d = h["deadline"]
        if d is None:
            lines.append(
                "  - deadline misses at equal accuracy: no calibrated baseline within "
                f"{100 * TOLERANCE:g} points of the agent's val accuracy."
            )
        else:
            caveat = (
                ""
                if d["equal_accuracy_on_test"]
                else f" (accuracies differ by more than {100 * TOLERANCE:g} points on test)"
            )
            lines.append(
                f"  - deadline misses at equal accuracy: {d['agent']} {_pct(d['agent_miss_rate'])} "
                f"({100 * d['agent_accuracy']:.2f}% accurate) vs {d['baseline']} "
                f"{_pct(d['baseline_miss_rate'])} ({100 * d['baseline_accuracy']:.2f}%){caveat}: "
                + _miss_change(d)
                + "."
            )
    return lines
