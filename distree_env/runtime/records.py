"""Run records of the live runtime: what every request and stage measured, written atomically.

Why JSON: a run is at most a few thousand requests, people read these files, and calibration and
the sim-vs-live comparison load them without torch. The per-request fields are the ones the
simulator reports for a request (``exit``, ``correct``, ``latency_ms``, ``deadline_met``,
``queue_wait_ms``) plus what only a measurement has: per stage and device the compute, busy and
transfer milliseconds, the exit head's and the policy's milliseconds, and the resource levels
that were imposed.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from distree_env.io import atomic_write_text, read_text_capped, strict_json

__all__ = [
    "FLUSH_EVERY",
    "append_journal",
    "journal_path",
    "keep_killed_journal",
    "load_journal",
    "RUN_FORMAT",
    "RUN_VERSION",
    "RequestRecord",
    "RunRecord",
    "load_run",
    "write_run",
]

RUN_FORMAT = "distree-live-run"
RUN_VERSION = 1
#: How many finished requests between two appends to a running run's journal.
FLUSH_EVERY = 50
#: Largest run record read (a run of 100,000 requests is about 200 MB).
MAX_RECORD_BYTES = 512 << 20


@dataclass
class RequestRecord:
    """One request. Per-stage lists have one entry per visited stage (``exit + 1``); ``[k][d]``
    lists have one entry per device (NaN where a device has no part in the stage: pipeline).
    Times are run-time milliseconds (0 = start of the run)."""

    index: int
    sample: int  # row of the image set (and of the exit trace of the same split)
    label: int
    arrival_ms: float
    start_ms: float = math.nan  # when the devices took it up (NaN if dropped)
    end_ms: float = math.nan
    queue_wait_ms: float = math.nan
    latency_ms: float = math.nan  # end - arrival
    exit: int = -1
    prediction: int = -1
    correct: bool = False
    deadline_met: bool = False
    dropped: bool = False
    stage_ms: list[float] = field(default_factory=list)  # dispatch -> exit head done
    exit_ms: list[float] = field(default_factory=list)  # exit head on the aggregator
    decision_ms: list[float] = field(default_factory=list)  # observation + policy
    compute_ms: list[list[float]] = field(default_factory=list)  # stage incl. throttle stall
    busy_ms: list[list[float]] = field(default_factory=list)  # stage at the machine's speed
    transfer_ms: list[list[float]] = field(default_factory=list)  # round trip minus compute
    compute_level: list[list[float]] = field(default_factory=list)  # at the stage's start
    bandwidth_level: list[list[float]] = field(default_factory=list)


@dataclass
class RunRecord:
    """A whole run: ``meta`` (config, seed, policy, costs, status) and the requests so far."""

    meta: dict[str, Any]
    requests: list[RequestRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of the run, with its format name and version."""
        return {
            "format": RUN_FORMAT,
            "version": RUN_VERSION,
            "meta": self.meta,
            "requests": [asdict(r) for r in self.requests],
        }


def write_run(path: str | Path, run: RunRecord) -> None:
    """Write ``run`` as JSON; a reader never sees half a file (NaN is written as null)."""
    text = strict_json(run.to_dict(), separators=(",", ":"))
    atomic_write_text(path, text + "\n")


def journal_path(path: str | Path) -> Path:
    """Where a running run appends its finished requests: ``<record>.partial.jsonl``."""
    p = Path(path)
    return p.with_name(p.name + ".partial.jsonl")


def keep_killed_journal(path: str | Path) -> Path | None:
    """Before a run writes its record at ``path``: if a killed run left its journal there, move
    that run's record and journal aside to ``<name>.killed-N`` (the first free N; a name no
    ``*.json`` glob of complete records picks up), so nothing it served is lost;
    :func:`load_journal` of the returned path reads them back."""
    p = Path(path)
    journal = journal_path(p)
    if not journal.exists():
        return None
    n = 1
    while (aside := p.with_name(f"{p.name}.killed-{n}")).exists() or journal_path(aside).exists():
        n += 1
    if p.exists():
        os.replace(p, aside)
    os.replace(journal, journal_path(aside))
    return aside


def append_journal(path: str | Path, requests: list[RequestRecord]) -> None:
    """Append ``requests`` to the journal of the record at ``path``, one JSON line each. Why not
    rewrite the record: a rewrite grows with the run (hundreds of ms at a few thousand requests)
    and, done while requests wait, adds that to their latency; an append costs what it adds.
    The run's record itself is written whole at the start, at the end and if the run fails; if
    the aggregator is killed, :func:`load_journal` reads back what was served."""
    lines = "".join(strict_json(asdict(r), separators=(",", ":")) + "\n" for r in requests)
    with open(journal_path(path), "a", encoding="utf-8") as f:
        f.write(lines)
        f.flush()


def load_run(path: str | Path) -> RunRecord:
    """Read a run record; ValueError naming the file if it is not one."""
    p = Path(path)
    try:
        data = json.loads(read_text_capped(p, "run record", MAX_RECORD_BYTES))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        detail = "nested too deeply" if isinstance(e, RecursionError) else e
        raise ValueError(f"run record {str(p)!r} cannot be read as JSON: {detail}") from None
    if (
        not isinstance(data, dict)
        or data.get("format") != RUN_FORMAT
        or data.get("version") != RUN_VERSION
    ):
        raise ValueError(f"run record {str(p)!r} is not a {RUN_FORMAT} version {RUN_VERSION} file")
    meta, rows = data.get("meta", {}), data.get("requests", [])
    if not isinstance(meta, dict) or not isinstance(rows, list):
        raise ValueError(f"run record {str(p)!r}: 'meta' must be an object and 'requests' a list")
    requests = [_request(row, f"run record {str(p)!r}: request {i}")
                for i, row in enumerate(rows)]  # fmt: skip
    return RunRecord(dict(meta), requests)


def load_journal(path: str | Path) -> list[RequestRecord]:
    """The requests in the journal of the record at ``path`` (what a killed run had served);
    a torn last line is left out. ValueError naming the line if another one is not a request."""
    p = journal_path(path)
    lines = p.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # the write the kill interrupted
            raise ValueError(f"journal {str(p)!r}: line {i + 1} is not JSON") from None
        out.append(_request(row, f"journal {str(p)!r}: line {i + 1}"))
    return out


def _request(row: Any, where: str) -> RequestRecord:
    names = {f.name for f in fields(RequestRecord)}
    if not isinstance(row, dict):
        raise ValueError(f"{where} is a {type(row).__name__}, not an object of request fields")
    missing, unexpected = sorted(names - set(row)), sorted(set(row) - names)
    if missing or unexpected:
        raise ValueError(
            f"{where}: "
            + "; ".join(
                f"{label} field(s) {', '.join(group)}"
                for label, group in (("missing", missing), ("unexpected", unexpected))
                if group
            )
        )
    values = {k: _none_to_nan(v) for k, v in row.items()}
    for f in fields(RequestRecord):
        if not _fits(values[f.name], RequestRecord.__dataclass_fields__[f.name].type):
            raise ValueError(f"{where}: {f.name}={str(row[f.name])[:40]} is not a {f.type}")
    rec = RequestRecord(**values)
    _check_answered(rec, where)
    return rec


#: The per-stage fields of a request: one entry per visited stage.
_STAGE_FIELDS = ("stage_ms", "exit_ms", "decision_ms", "compute_ms", "busy_ms", "transfer_ms",
                 "compute_level", "bandwidth_level")  # fmt: skip
#: Its times that an answered request has, in [0, MAX_RECORD_MS].
_ANSWER_TIMES = ("arrival_ms", "start_ms", "end_ms", "queue_wait_ms", "latency_ms")
#: The largest time a record may hold: about 11.6 days of run time, in milliseconds.
MAX_RECORD_MS = 1e9
#: How far below 0 a time may come out: ``transfer_ms`` is a round trip less the device's
#: float32 compute time, which can round a hair past it.
ROUNDING_MS = 1e-3


def _check_answered(rec: RequestRecord, where: str) -> None:
    """ValueError unless an answered request's exit, stage lists and times are possible (a
    damaged record must not reach the fit as an index error or an infinite latency)."""
    if rec.exit < -1 or (rec.dropped and rec.exit != -1):
        raise ValueError(
            f"{where}: exit={rec.exit} (dropped={rec.dropped}); an answered request's exit is "
            ">= 0, an unanswered or dropped one's -1"
        )
    if rec.exit < 0:
        return
    for name in _STAGE_FIELDS:
        got = len(getattr(rec, name))
        if got != rec.exit + 1:
            raise ValueError(
                f"{where}: {name} has {got} entries; a request answered at exit {rec.exit} "
                f"has {rec.exit + 1} (one per stage it ran)"
            )
    allowed = f"in [0, {MAX_RECORD_MS:g}]"
    for name in _ANSWER_TIMES:
        value = getattr(rec, name)
        if not 0 <= value <= MAX_RECORD_MS:  # NaN fails too
            raise ValueError(f"{where}: {name}={value}; an answered request's is {allowed}")
    for name in ("stage_ms", "exit_ms", "decision_ms"):
        if not all(0 <= v <= MAX_RECORD_MS for v in getattr(rec, name)):
            raise ValueError(f"{where}: {name}={getattr(rec, name)}; times are {allowed}")
    for name in ("compute_ms", "busy_ms", "transfer_ms", "compute_level", "bandwidth_level"):
        # null (NaN): a device without a part in the stage (pipeline)
        if any(v < -ROUNDING_MS or v > MAX_RECORD_MS for row in getattr(rec, name) for v in row):
            raise ValueError(f"{where}: {name}={getattr(rec, name)}; entries are {allowed} or null")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fits(value: Any, kind: str) -> bool:
    """Whether a JSON value has the field's declared type (``int``, ``float``, ``bool`` and
    lists of floats, one or two deep)."""
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return _number(value)
    if kind == "list[float]":
        return isinstance(value, list) and all(_number(v) for v in value)
    return isinstance(value, list) and all(
        isinstance(row, list) and all(_number(v) for v in row) for row in value
    )


def _none_to_nan(obj: Any) -> Any:
    if obj is None:
        return math.nan
    if isinstance(obj, list):
        return [_none_to_nan(v) for v in obj]
    return obj
