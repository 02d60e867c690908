"""Exit traces from a multi-exit network's outputs: the way in for a network of your own.

Why: the environment replays any network's record, not only this project's. A user with an
early-exit model of their own needs its per-exit outputs on two splits (val to tune on, test to
measure on) and its per-stage costs; this module turns those numpy arrays into a validated
:class:`~distree_env.traces.format.ExitTrace` without this project's torch code
(``distree_env/model/export.py`` builds the shipped traces through it too).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distree_env.traces.format import ExitTrace

__all__ = ["consecutive_feature_diff", "trace_from_outputs"]


def consecutive_feature_diff(embeddings: np.ndarray) -> np.ndarray:
    """DistrEE's feature difference ``[n, K]``: ``0.5 * || u_k - u_{k-1} ||`` of the normalised
    exit embeddings ``u``, in [0, 1]; 1.0 at exit 0 (no earlier exit to agree with).

    Small means consecutive exits agree, the signal that going deeper adds little.

    :param embeddings: ``[n, K, E]`` one embedding per sample and exit.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 3:
        raise ValueError(f"embeddings: shape {emb.shape}; expected [samples, exits, features]")
    unit = emb / np.maximum(np.linalg.norm(emb, axis=2, keepdims=True), 1e-12)
    diff = np.ones(emb.shape[:2], dtype=np.float32)
    distance = np.linalg.norm(unit[:, 1:] - unit[:, :-1], axis=2)
    diff[:, 1:] = np.clip(0.5 * distance, 0.0, 1.0)
    return diff


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 3:
        raise ValueError(f"logits: shape {z.shape}; expected [samples, exits, classes]")
    if not np.isfinite(z).all():
        raise ValueError("logits: must be finite (found NaN or inf)")
    fractional = z.size and not np.array_equal(z, np.round(z))  # one-hot logits are fine
    if fractional and z.min() >= 0 and z.max() <= 1 and np.allclose(z.sum(axis=2), 1, atol=1e-3):
        raise ValueError(
            "logits: every row is in [0, 1] and sums to 1: these are probabilities; pass them "
            "as probs= (a softmax of probabilities would flatten every confidence)"
        )
    z = np.exp(z - z.max(axis=2, keepdims=True))
    return (z / z.sum(axis=2, keepdims=True)).astype(np.float32)


def _costs(name: str, value: Any, k: int, topology: str) -> np.ndarray:
    """A ``[K, D]`` cost table; a ``[K]`` vector is one device's column, or with the pipeline
    topology (stage k on device k) the diagonal."""
    table = np.asarray(value, dtype=np.float64)
    if table.ndim == 1:
        table = np.diag(table) if topology == "pipeline" else table[:, None]
    if table.ndim != 2 or table.shape[0] != k:
        raise ValueError(
            f"{name}: shape {np.shape(value)}; expected [{k}] (one device) or [{k}, devices]"
        )
    return table


def trace_from_outputs(
    *,
    labels: np.ndarray,
    stage_flops: np.ndarray,
    probs: np.ndarray | None = None,
    logits: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    exit_flops: np.ndarray | None = None,
    transfer_bytes: np.ndarray | None = None,
    input_bytes: float = 0.0,
    topology: str = "parallel",
    class_names: tuple[str, ...] | None = None,
    metadata: dict | None = None,
) -> ExitTrace:
    """A validated exit trace of one split from a network's per-exit outputs and its costs.

    Save it with :meth:`ExitTrace.save` and pass the path as ``trace=`` (environment, config,
    scripts). Name the files ``NAME-val.npz`` and ``NAME-test.npz`` and give ``metadata``
    ``{"split": "val"}`` or ``"test"``: the scripts then find a split's counterpart themselves
    and refuse to tune on test.

    :param labels: ``[n]`` int, the true class of each sample.
    :param stage_flops: ``[K, D]`` FLOPs of stage ``k`` on device ``d`` (``[K]``: one device,
        or with the pipeline topology stage k's on device k).
    :param probs: ``[n, K, C]`` class probabilities at every exit (give this or ``logits``).
    :param logits: ``[n, K, C]`` exit logits, turned into probabilities with a softmax.
    :param embeddings: ``[n, K, E]`` the features each exit head classifies, for DistrEE's
        feature difference (:func:`consecutive_feature_diff`). Without them the class
        probabilities stand in (the difference between consecutive exits' predictions), and the
        metadata says so (``feature_diff_from``).
    :param exit_flops: ``[K]`` FLOPs of each exit head (default: 0).
    :param transfer_bytes: ``[K, D]`` bytes device ``d`` sends after stage ``k`` (``[K]`` as for
        ``stage_flops``; default: 0, no link costs).
    :param input_bytes: bytes of one input, sent to every device (parallel) or device 0
        (pipeline).
    :param topology: ``"parallel"`` (branches fused at every exit) or ``"pipeline"`` (stage k
        on device k, ``D == K``).
    :param class_names: one name per class (default: ``"0"``, ``"1"``, ...).
    :param metadata: JSON-friendly facts to keep with the trace (model, split, source).
    """
    if (probs is None) == (logits is None):
        raise ValueError("probs, logits: give exactly one of them")
    p = _softmax(logits) if probs is None else np.asarray(probs)
    if p.ndim != 3:
        raise ValueError(f"probs: shape {p.shape}; expected [samples, exits, classes]")
    n, k, c = p.shape
    if embeddings is None:
        diff, source = consecutive_feature_diff(p), "probs"
    else:
        emb = np.asarray(embeddings)
        if emb.ndim != 3 or emb.shape[:2] != (n, k):
            raise ValueError(f"embeddings: shape {emb.shape}; expected [{n}, {k}, features]")
        diff, source = consecutive_feature_diff(emb), "embeddings"
    flops = _costs("stage_flops", stage_flops, k, topology)
    sent = (
        np.zeros_like(flops)
        if transfer_bytes is None
        else _costs("transfer_bytes", transfer_bytes, k, topology)
    )
    trace = ExitTrace(
        probs=p if p.dtype in (np.float16, np.float32) else p.astype(np.float32),
        labels=np.asarray(labels),
        feature_diff=diff,
        stage_flops=flops,
        exit_flops=np.zeros(k) if exit_flops is None else np.asarray(exit_flops, np.float64),
        transfer_bytes=sent,
        topology=topology,
        class_names=tuple(str(i) for i in range(c)) if class_names is None else tuple(class_names),
        metadata={**(metadata or {}), "feature_diff_from": source},
        input_bytes=input_bytes,
    )
    trace.validate()
    return trace
