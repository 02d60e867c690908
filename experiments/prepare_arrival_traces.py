"""Turn the Azure LLM inference trace 2023 into the shipped arrival-time traces.

    python -m experiments.prepare_arrival_traces --conversation AzureLLMInferenceTrace_conv.csv \\
        --code AzureLLMInferenceTrace_code.csv

Why: the ``trace`` arrival process replays measured request arrivals, so a scenario can meet the
burstiness of a production inference service instead of a textbook process. The inputs are the
two CSVs of github.com/Azure/AzurePublicDataset (``data/``; CC-BY 4.0; Patel et al., Splitwise,
ISCA 2024), one per service. Each service's hour is cut at its midpoint: the first half is the
``val`` split, the second the ``test`` split, each one column of arrival times in ms since its
first request, in ``distree_env/data/arrivals/azure-llm/<service>-<split>.csv``
(``ArrivalConfig(kind="trace", csv="azure-llm-<service>", split=...)``). Only the timestamps are
kept (token counts describe LLM work, not this network's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from distree_env.cluster.arrivals import AZURE_LLM_DIR, AZURE_LLM_SERVICES
from distree_env.io import (
    atomic_write_text,
    csv_rows,
    require_input_file,
    require_output_dir,
    require_output_file,
)
from experiments.cli import one_line_errors, parse_args

#: The raw file's timestamp format (7 fractional digits are cut to microseconds).
STAMP = "%Y-%m-%d %H:%M:%S.%f"


@dataclass
class Args:
    """Write the shipped arrival-time traces from the Azure LLM inference trace 2023."""

    conversation: str = field(
        default="",
        metadata={"help": "required: AzureLLMInferenceTrace_conv.csv (the conversation service)"},
    )
    code: str = field(
        default="",
        metadata={"help": "required: AzureLLMInferenceTrace_code.csv (the code service)"},
    )
    out: str = field(default=str(AZURE_LLM_DIR), metadata={"help": "output folder"})

    def __post_init__(self) -> None:
        for service in AZURE_LLM_SERVICES:
            source = getattr(self, service)
            if not source:
                raise ValueError(f"--{service} is required: the {service} service's raw CSV")
            require_input_file(source, f"--{service}")
        require_output_dir(self.out, "--out")


def arrival_ms(path: Path, field: str = "trace") -> list[float]:
    """Arrival times (ms since the first request, sorted) from a raw trace CSV; ValueError
    naming ``field``, the file and the line for a row that is not
    ``TIMESTAMP,ContextTokens,GeneratedTokens``."""
    stamps = []
    for line_no, row in csv_rows(path, field, "Azure trace CSV", encoding="utf-8-sig"):
        if line_no == 1 and row[0] == "TIMESTAMP":
            continue
        try:
            stamps.append(datetime.strptime(row[0][:26], STAMP))
        except ValueError:
            raise ValueError(f"{path}:{line_no}: not a TIMESTAMP row: {row!r:.80}") from None
    if len(stamps) < 2:
        raise ValueError(f"{path}: needs at least 2 requests, found {len(stamps)}")
    stamps.sort()
    return [(s - stamps[0]).total_seconds() * 1e3 for s in stamps]


def halves(times: list[float], name: str) -> dict[str, list[float]]:
    """The ``val`` (before the midpoint of the recording) and ``test`` (from it) halves, each
    in ms since its own first request; ValueError naming ``name`` when a half could not be
    replayed (fewer than 2 distinct arrival times)."""
    middle = times[-1] / 2
    first = [t for t in times if t < middle]
    second = [t for t in times if t >= middle]
    out = {"val": first, "test": [t - second[0] for t in second]}
    for split, half in out.items():
        if len(half) < 2 or half[-1] <= half[0]:
            raise ValueError(
                f"{name}: its {split} half holds {len(half)} request(s) at distinct times; a "
                "trace needs at least 2"
            )
    return out


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    """Run from command-line ``argv`` (default: ``sys.argv``)."""
    args = parse_args(Args, argv)
    out = Path(args.out)
    # every input is read and cut, and every target checked, before anything is written: a
    # failure must not leave the shipped traces half replaced
    traces = {}
    for service in AZURE_LLM_SERVICES:
        source = getattr(args, service)
        for split, times in halves(arrival_ms(Path(source), f"--{service}"), source).items():
            target = require_output_file(out / f"{service}-{split}.csv", "--out")
            traces[target] = (service, split, times)
    out.mkdir(parents=True, exist_ok=True)
    for target, (service, split, times) in traces.items():
        atomic_write_text(target, "arrival_ms\n" + "".join(f"{t:.3f}\n" for t in times))
        span_s = times[-1] / 1e3
        print(f"{service} {split}: {target.name}: {len(times)} requests over {span_s:.0f} s "
              f"({len(times) / span_s:.2f} per s)")  # fmt: skip


if __name__ == "__main__":
    main()
