"""Run a trained network over a split and turn its outputs into an exit trace."""

from __future__ import annotations

import numpy as np

from distree_env.model.costs import measure_costs
from distree_env.model.data import CLASS_NAMES, Split
from distree_env.model.network import MultiBranchNet
from distree_env.model.train import exit_accuracy, predict
from distree_env.trace import ExitTrace


def consecutive_similarity(embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of each exit's fused embedding with the previous exit's (0 at exit 0).

    Embeddings are non-negative (ReLU), so the cosine lies in [0, 1]: DistrEE's criterion, where
    agreement between consecutive exits signals that going deeper adds little.
    """
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=2, keepdims=True), 1e-12)
    sim = np.zeros(embeddings.shape[:2], dtype=np.float32)
    sim[:, 1:] = np.clip((unit[:, 1:] * unit[:, :-1]).sum(axis=2), 0.0, 1.0)
    return sim


def export_trace(
    model: MultiBranchNet,
    split: Split,
    split_name: str,
    metadata: dict | None = None,
    bf16: bool = True,
    progress: bool = False,
) -> ExitTrace:
    probs, embeddings = predict(model, split.images, bf16=bf16, progress=progress)
    probs16 = probs.astype(np.float16)
    probs16 = (
        probs16.astype(np.float32) / probs16.astype(np.float32).sum(axis=2, keepdims=True)
    ).astype(np.float16)
    costs = measure_costs(model)
    acc = exit_accuracy(probs16.astype(np.float32), split.labels)
    meta = {
        "dataset": "cifar10",
        "split": split_name,
        "model": model.config.to_dict(),
        "exit_accuracy": [round(float(a), 4) for a in acc],
        "exit_cumulative_gflops": [
            round(float(g), 4)
            for g in np.cumsum(costs.stage_flops.sum(axis=1) + costs.exit_flops) / 1e9
        ],
        **(metadata or {}),
    }
    return ExitTrace(
        probs=probs16,
        labels=split.labels.astype(np.int64),
        similarity=consecutive_similarity(embeddings),
        stage_flops=costs.stage_flops,
        exit_flops=costs.exit_flops,
        transfer_bytes=costs.transfer_bytes,
        topology=model.config.topology,
        class_names=CLASS_NAMES[: model.config.num_classes],
        metadata=meta,
        input_bytes=costs.input_bytes,
    )
