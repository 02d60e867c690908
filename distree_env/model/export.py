"""Run a trained network over a split and turn its outputs into an exit trace."""

from __future__ import annotations

import numpy as np

from distree_env.constants import CIFAR10_CLASS_NAMES
from distree_env.model.costs import DECISION_BYTES, measure_costs
from distree_env.model.data import Split
from distree_env.model.network import MultiBranchNet
from distree_env.model.train import predict
from distree_env.traces import ExitTrace, trace_from_outputs
from distree_env.traces.format import exit_accuracy


def export_trace(
    model: MultiBranchNet,
    split: Split,
    split_name: str,
    metadata: dict | None = None,
    bf16: bool = True,
    tta: bool = True,
    progress: bool = False,
) -> ExitTrace:
    """The exit trace of ``model`` on ``split``: probabilities, feature difference and costs.

    :param split_name: ``val`` or ``test``, written into the metadata.
    :param metadata: extra entries for the trace's metadata.
    :param tta: average each image with its mirror image (flip test-time augmentation).
    """
    probs, embeddings = predict(model, split.images, bf16=bf16, tta=tta, progress=progress)
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
        "architecture": f"{model.config.num_branches} x pre-activation {model.config.name}",
        "flip_tta": tta,
        "decision_bytes": DECISION_BYTES,
        "exit_accuracy": [round(float(a), 4) for a in acc],
        "exit_cumulative_gflops": [
            round(float(g), 4)
            for g in np.cumsum(costs.stage_flops.sum(axis=1) + costs.exit_flops) / 1e9
        ],
        **(metadata or {}),
    }
    return trace_from_outputs(
        probs=probs16,
        labels=split.labels.astype(np.int64),
        embeddings=embeddings,
        stage_flops=costs.stage_flops,
        exit_flops=costs.exit_flops,
        transfer_bytes=costs.transfer_bytes,
        input_bytes=costs.input_bytes,
        topology=model.config.topology,
        class_names=CIFAR10_CLASS_NAMES[: model.config.num_classes],
        metadata=meta,
    )
