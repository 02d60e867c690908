"""Cost tables measured from the model itself: FLOPs per stage and device, bytes per stage boundary.

FLOPs count multiply-adds x 2 of every convolution and linear layer (batch-norm, ReLU and
pooling are a few percent and are left out, as in most early-exit papers). Bytes assume float32
activations. Per boundary: ``parallel`` sends the uint8 image to every device, each device's
pooled vector of stage k to the aggregator, and the aggregator's exit-or-continue decision back
(:data:`DECISION_BYTES`); ``pipeline`` ships stage k's feature map from device k to device k + 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from distree_env.model.network import MultiBranchNet, NetConfig

BYTES_PER_ACTIVATION = 4  # float32 on the wire
INPUT_BYTES = 32 * 32 * 3  # one uint8 CIFAR-10 image sent to each first-stage device
DECISION_BYTES = 1  # the aggregator's exit-or-continue answer to each device


@dataclass(frozen=True)
class CostTables:
    """What a trace needs to know of the network's cost: per stage and device, measured once.

    :param stage_flops: ``[K, D]`` FLOPs device ``d`` spends on stage ``k``.
    :param exit_flops: ``[K]`` FLOPs of exit head ``k`` (run by the aggregator).
    :param transfer_bytes: ``[K, D]`` bytes device ``d`` sends after stage ``k``.
    :param input_bytes: bytes of one input image sent to a first-stage device.
    """

    stage_flops: np.ndarray  # [K, D]
    exit_flops: np.ndarray  # [K]
    transfer_bytes: np.ndarray  # [K, D]
    input_bytes: float


def _layer_flops(module: nn.Module, out: torch.Tensor) -> float:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        macs = out[0].numel() * (module.in_channels // module.groups) * kh * kw
    elif isinstance(module, nn.Linear):
        macs = out[0].numel() * module.in_features
    else:
        return 0.0
    return 2.0 * macs


@torch.no_grad()
def measure_costs(model: MultiBranchNet) -> CostTables:
    """Run one image through ``model`` with hooks and attribute every layer's FLOPs to its stage."""
    branch_flops, exit_flops, stage_shapes = _hooked_forward(model)
    stage_flops, transfer = _place_on_devices(model.config, branch_flops, stage_shapes)
    return CostTables(stage_flops, exit_flops, transfer, float(INPUT_BYTES))


def _hooked_forward(
    model: MultiBranchNet,
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, ...]]]:
    """One forward pass with a hook on every layer: FLOPs per (branch, stage) ``[B, K]``, per
    exit head ``[K]``, and the output shape of each stage of branch 0 (what a boundary sends)."""
    cfg = model.config
    branch_flops = np.zeros((cfg.num_branches, cfg.num_stages))
    exit_flops = np.zeros(cfg.num_stages)
    stage_shapes: list[tuple[int, ...]] = [()] * cfg.num_stages
    handles = []
    for b, branch in enumerate(model.branches):
        for m in branch.stem.modules():  # the stem belongs to the first stage
            handles.append(m.register_forward_hook(_add_flops(branch_flops, (b, 0))))
        for k, stage in enumerate(branch.stages):
            for m in stage.modules():
                handles.append(m.register_forward_hook(_add_flops(branch_flops, (b, k))))
            if b == 0:
                handles.append(stage.register_forward_hook(_record_shape(stage_shapes, k)))
    for k, head in enumerate(model.exits):
        for m in head.modules():
            handles.append(m.register_forward_hook(_add_flops(exit_flops, (k,))))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, 32, 32))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return branch_flops, exit_flops, stage_shapes


def _add_flops(array: np.ndarray, index: tuple[int, ...]) -> Callable[..., None]:
    """A forward hook adding its layer's FLOPs to ``array[index]``."""

    def hook(module: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        array[index] += _layer_flops(module, out)

    return hook


def _record_shape(shapes: list[tuple[int, ...]], k: int) -> Callable[..., None]:
    """A forward hook storing its module's output shape, batch dropped, as ``shapes[k]``."""

    def hook(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        shapes[k] = tuple(out.shape[1:])

    return hook


def _place_on_devices(
    cfg: NetConfig, branch_flops: np.ndarray, stage_shapes: list[tuple[int, ...]]
) -> tuple[np.ndarray, np.ndarray]:
    """``[K, D]`` FLOPs and bytes sent per stage and device, from where the topology runs what."""
    k_stages, n_dev = cfg.num_stages, cfg.num_devices
    transfer = np.zeros((k_stages, n_dev))
    if cfg.topology == "parallel":
        stage_flops = branch_flops.T.copy()  # [K, D]: device d runs branch d
        for k, shape in enumerate(stage_shapes):
            transfer[k, :] = shape[0] * BYTES_PER_ACTIVATION  # pooled vector to the aggregator
        return stage_flops, transfer
    stage_flops = np.zeros((k_stages, n_dev))
    for k, shape in enumerate(stage_shapes):
        stage_flops[k, k] = branch_flops[0, k]  # segment k runs on device k
        if k < k_stages - 1:  # the feature map goes on to device k + 1
            transfer[k, k] = int(np.prod(shape)) * BYTES_PER_ACTIVATION
    return stage_flops, transfer
