"""How fast the live devices compute, by policy and load: the question behind the cold start.

    python -m experiments.device_speed runs/live-probe/*-r*.json

Groups live run records by policy and arrival rate and prints, per group, the devices' duty (the
share of the run they spent computing at the machine's speed) and stage 0's device compute by how
long the devices had idled since their last stage
(:func:`distree_env.runtime.calibration.stage0_after_gap`). Why: the simulator's cold start keys on
the idle time between requests, yet at equal idle time a rule that exits early saw its devices
compute stage 0 more slowly than LastExit did; runs of the same policies at other arrival rates
(``experiments/live_load_probe.sh``) tell a policy effect from a load effect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from experiments.calibrate_cluster import band_label, complete_live_run, idle_bands
from experiments.cli import one_line_errors, parse_args, records_positional

#: Upper edges (ms) of the bands of device idle time the table reports (the last band is open).
GAP_BANDS_MS = (5.0, 8.0, 20.0, 40.0)


@dataclass(frozen=True)
class Args:
    """Stage 0's live device compute by policy, load and the devices' idle time."""

    records: tuple[str, ...] = field(
        default=(), metadata={"help": "live run records (positional too)"}
    )

    def __post_init__(self) -> None:
        if not self.records:
            raise ValueError("records: give at least one live run record")


def group_name(run: Any) -> str:
    """``policy @ utilisation U`` (or ``@ R/s``) of a run, from its record."""
    arrivals = run.meta["config"].get("arrivals") or {}
    rate, utilisation = arrivals.get("rate_per_s"), arrivals.get("utilisation")
    load = f"{rate:g}/s" if rate else f"utilisation {utilisation:g}" if utilisation else "?"
    return f"{run.meta['args']['policy']} @ {load}"


def device_duty(run: Any) -> float:
    """Share of the run's served span the devices computed at the machine's speed (mean over
    the devices of each stage)."""
    served = [r for r in run.requests if not r.dropped and r.exit >= 0]
    if not served:
        return float("nan")
    busy = sum(float(np.nanmean(b)) for r in served for b in r.busy_ms)
    return busy / (served[-1].end_ms - served[0].start_ms)


def speed_table(runs: list[Any]) -> str:
    """The Markdown table: one row per group of runs, in the order the groups first appear."""
    from distree_env.runtime.calibration import stage0_after_gap

    groups: dict[str, list[Any]] = {}
    for run in runs:
        groups.setdefault(group_name(run), []).append(run)
    names = [band_label(lo, hi) for lo, hi in pairwise((-np.inf, *GAP_BANDS_MS, np.inf))]
    head = ["policy @ load", "runs", "device duty", *[f"stage 0 ms, {n}" for n in names]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, members in groups.items():
        pairs = [stage0_after_gap(run) for run in members]
        gap = np.concatenate([g for g, _ in pairs])
        busy = np.concatenate([b for _, b in pairs])
        cells = dict.fromkeys(names, "-")
        for label, sel in idle_bands(gap, GAP_BANDS_MS):
            cells[label] = f"{busy[sel].mean():.3f} ({int(sel.sum())})"
        duty = np.mean([device_duty(run) for run in members])
        row = [name, str(len(members)), f"{duty:.3f}", *cells.values()]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


@one_line_errors
def main(argv: list[str] | None = None) -> str:
    """Print the table for the records in ``argv`` (default ``sys.argv``) and return it."""
    import sys

    args = parse_args(Args, records_positional(list(sys.argv[1:] if argv is None else argv)))
    table = speed_table([complete_live_run(p) for p in args.records])
    print(table)
    return table


if __name__ == "__main__":
    main()
