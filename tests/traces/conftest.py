"""Fixtures shared by the trace tests: a small valid trace and writers of raw (tampered) files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distree_env.traces import TRACE_FORMAT_VERSION, synthetic_trace


@pytest.fixture(scope="session")
def small():
    """A valid 200-sample trace (4 exits, 4 devices, 10 classes)."""
    return synthetic_trace(n=200, seed=3)


def raw_arrays(trace) -> dict:
    """The members of a trace file, as :meth:`ExitTrace.save` writes them, to be tampered with."""
    return {
        "format_version": np.array(TRACE_FORMAT_VERSION),
        "probs": trace.probs,
        "labels": trace.labels,
        "feature_diff": trace.feature_diff,
        "stage_flops": trace.stage_flops,
        "exit_flops": trace.exit_flops,
        "transfer_bytes": trace.transfer_bytes,
        "topology": np.array(trace.topology),
        "class_names": np.array(trace.class_names),
        "metadata": np.array(json.dumps(trace.metadata)),
        "input_bytes": np.array(trace.input_bytes),
    }


def write_npz(path, **arrays) -> None:
    """An uncompressed ``.npz`` of ``arrays`` (object arrays are pickled inside, as numpy does)."""
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
