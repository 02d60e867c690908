"""Exit traces: the recorded outputs of a multi-exit network that the environment replays.

``format`` holds the file format (:class:`ExitTrace`, validation, safe save and load),
``build`` makes one from a network's outputs (a network of your own), ``synthetic`` a generator
of made-up traces in that format, ``registry`` the names (shipped, synthetic, paths), MANIFEST
verification and the in-process cache.
"""

from __future__ import annotations

from distree_env.traces.build import consecutive_feature_diff, trace_from_outputs
from distree_env.traces.format import TRACE_FORMAT_VERSION, ExitTrace
from distree_env.traces.registry import (
    SHIPPED_TRACES,
    clear_cache,
    parse_synthetic_name,
    resolve_trace,
    synthetic_name,
    trace_path,
)
from distree_env.traces.synthetic import synthetic_trace

__all__ = [
    "SHIPPED_TRACES",
    "TRACE_FORMAT_VERSION",
    "ExitTrace",
    "clear_cache",
    "consecutive_feature_diff",
    "parse_synthetic_name",
    "resolve_trace",
    "synthetic_name",
    "synthetic_trace",
    "trace_from_outputs",
    "trace_path",
]
