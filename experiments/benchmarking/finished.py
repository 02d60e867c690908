"""The scenarios a benchmark run has finished, kept until its outputs are written.

Why: the full benchmark takes a quarter of an hour; a run stopped (killed, Ctrl-C, a closed
terminal) after some scenarios continues with ``--resume`` from the ones it finished instead of
starting again. Each scenario's rows and calibrated parameters are one JSON file under
``<out>/.finished/``, stamped with a key of everything its figures depend on (the plan without
its scenario list, the sha256 of every trace and agent file), so that a file of another plan,
or of other traces or agents, is computed again rather than reused. The code is not in the key:
resume with the code the stopped run had.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from distree_env.io import atomic_write_text, read_text_capped
from distree_env.manifest import sha256_of
from experiments.benchmarking.runner import BenchmarkPlan

__all__ = ["FINISHED_DIR", "Finished", "plan_key"]

#: The folder under ``--out`` that holds the finished scenarios of a run in progress.
FINISHED_DIR = ".finished"
#: Largest finished-scenario file read (a full run's scenario is about 1 MB).
MAX_FINISHED_BYTES = 256 << 20

Result = tuple[list[dict[str, Any]], dict[str, Any]]


def _trace_identity(name: str) -> str:
    """A synthetic trace's name says all; a file is named by its sha256."""
    from distree_env.traces import parse_synthetic_name
    from distree_env.traces.registry import trace_file

    return name if parse_synthetic_name(name) is not None else sha256_of(trace_file(name))


def plan_key(plan: BenchmarkPlan) -> str:
    """sha256 of what a scenario's figures depend on: the plan without its scenario list, the
    traces' and the agents' file contents (with their normalisation statistics)."""
    from agents.loading import agent_path
    from agents.policy import files_sha256

    described = {
        "seeds": plan.seeds,
        "n_requests": plan.n_requests,
        "config": plan.config.to_dict(),
        "traces": [_trace_identity(plan.test_trace), _trace_identity(plan.val_trace)],
        "thresholds": plan.thresholds,
        "calibration": dataclasses.asdict(plan.calibration),
        "agents": [
            [a.algo, a.scenario, a.ref, *files_sha256(agent_path(a.ref))] for a in plan.agents
        ],
        "trust": plan.trust,
        "warmup": plan.warmup,
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any) -> Any:
    """The Python numbers and lists that numpy scalars and arrays hold (exact)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not kept in a finished scenario")


class Finished:
    """The finished scenarios of one plan under ``folder``."""

    def __init__(self, folder: Path, plan: BenchmarkPlan) -> None:
        self.folder, self.key = folder, plan_key(plan)

    def _path(self, scenario: str) -> Path:
        return self.folder / f"{scenario}.json"

    def load(self, scenarios: tuple[str, ...]) -> dict[str, Result]:
        """The scenarios of ``scenarios`` finished for this plan; a file of another plan, or a
        damaged one, is left out (its scenario is computed again)."""
        found: dict[str, Result] = {}
        for scenario in scenarios:
            path = self._path(scenario)
            if not path.is_file():
                continue
            try:
                data = json.loads(read_text_capped(path, "finished scenario", MAX_FINISHED_BYTES))
                if data.get("key") == self.key:
                    found[scenario] = (list(data["rows"]), dict(data["calibrated"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
        return found

    def save(self, scenario: str, result: Result) -> None:
        """Keep ``scenario``'s rows and calibrated parameters (atomically)."""
        rows, calibrated = result
        data = {"key": self.key, "scenario": scenario, "rows": rows, "calibrated": calibrated}
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self._path(scenario), json.dumps(data, default=_plain))

    def clear(self) -> None:
        """Forget every finished scenario (the run's outputs are written)."""
        shutil.rmtree(self.folder, ignore_errors=True)
