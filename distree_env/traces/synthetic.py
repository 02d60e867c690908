"""Synthetic exit traces: made-up data in the real format, for tests and users without a network.

Why: the environment, the rules and the agents can be exercised (and tested in seconds) without
training a network; the generator mimics the shape of a real trace (accuracy rising with depth,
calibrated-looking confidences, a feature difference that is small where consecutive exits agree
and tells right from wrong, the cost tables of a small CIFAR-10 network). Deterministic from a seed.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from distree_env.constants import CIFAR10_CLASS_NAMES, TOPOLOGIES
from distree_env.io import not_allowed
from distree_env.traces.format import (
    MAX_CLASSES,
    MAX_DEVICES,
    MAX_EXITS,
    MAX_SAMPLES,
    ExitTrace,
)

__all__ = ["MAX_SYNTHETIC_CELLS", "synthetic_trace"]

#: ``n * num_exits * num_classes`` of a synthetic trace: bounds the generator's memory (~0.5 GB).
MAX_SYNTHETIC_CELLS = 4_000_000


def synthetic_trace(
    n: int = 4000,
    num_exits: int = 4,
    num_devices: int | None = None,
    num_classes: int = 10,
    topology: str = "parallel",
    difficulty: float = 0.5,
    seed: int = 0,
) -> ExitTrace:
    """A made-up trace in the real format (see the module docstring), validated.

    :param n: number of samples, at most :data:`~distree_env.traces.format.MAX_SAMPLES`.
    :param num_exits: exits (stages) ``K``, at most ``MAX_EXITS``.
    :param num_devices: devices ``D`` (default 4 for parallel; pipeline needs ``D == K``).
    :param num_classes: classes ``C`` (10 gives CIFAR-10's names), at most ``MAX_CLASSES``.
    :param topology: ``"parallel"`` (one branch per device) or ``"pipeline"`` (one backbone).
    :param difficulty: in [0, 1]; per-exit accuracy runs about 0.55 -> 0.90 at 0.5, lower when
        harder.
    :param seed: non-negative integer; the same arguments give the same trace.
    """
    d = _check_arguments(n, num_exits, num_devices, num_classes, topology, difficulty, seed)
    rng = np.random.default_rng(seed)
    k, c = int(num_exits), int(num_classes)
    depth = np.linspace(0.0, 1.0, k) if k > 1 else np.ones(1)
    labels, pred, slack = _draw_outcomes(rng, int(n), c, depth, float(difficulty))
    probs = _probabilities(rng, pred, slack, depth, c)
    feature_diff = _feature_diff(rng, pred, slack, depth)
    stage_flops, exit_flops, transfer = _costs(rng, k, d, c, topology)
    generator = {
        "n": int(n),
        "num_exits": k,
        "num_devices": d,
        "num_classes": c,
        "topology": topology,
        "difficulty": float(difficulty),
        "seed": int(seed),
    }
    accuracy = (probs.argmax(-1) == labels[:, None]).mean(0)
    trace = ExitTrace(
        probs=probs,
        labels=labels.astype(np.int64),
        feature_diff=feature_diff,
        stage_flops=stage_flops,
        exit_flops=exit_flops,
        transfer_bytes=transfer,
        topology=topology,
        class_names=CIFAR10_CLASS_NAMES if c == 10 else tuple(f"class_{i}" for i in range(c)),
        metadata={
            "dataset": "synthetic",
            "split": "synthetic",
            "generator": generator,
            "exit_accuracy": [round(float(a), 4) for a in accuracy],
        },
        input_bytes=float(32 * 32 * 3),
    )
    trace.validate()
    return trace


def _bad(name: str, value: Any, allowed: str) -> ValueError:
    """:func:`not_allowed` naming the generator."""
    return not_allowed(f"synthetic_trace: {name}", value, allowed)


def _check_arguments(
    n: Any,
    num_exits: Any,
    num_devices: Any,
    num_classes: Any,
    topology: Any,
    difficulty: Any,
    seed: Any,
) -> int:
    """Validate the arguments against the caps; returns the device count."""
    if topology not in TOPOLOGIES:
        raise _bad("topology", topology, f"one of {', '.join(TOPOLOGIES)}")
    if num_devices is None:
        num_devices = num_exits if topology == "pipeline" else 4
    for name, value, low, cap, cap_name in (
        ("n", n, 1, MAX_SAMPLES, "MAX_SAMPLES"),
        ("num_exits", num_exits, 1, MAX_EXITS, "MAX_EXITS"),
        ("num_devices", num_devices, 1, MAX_DEVICES, "MAX_DEVICES"),
        ("num_classes", num_classes, 2, MAX_CLASSES, "MAX_CLASSES"),
        ("seed", seed, 0, 2**63 - 1, "a 63-bit integer"),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise _bad(name, value, f"an integer in [{low}, {cap}]")
        if not low <= value <= cap:
            raise _bad(name, value, f"an integer in [{low}, {cap}] ({cap_name})")
    cells = int(n) * int(num_exits) * int(num_classes)
    if cells > MAX_SYNTHETIC_CELLS:
        raise _bad(
            "n * num_exits * num_classes",
            cells,
            f"at most {MAX_SYNTHETIC_CELLS} (MAX_SYNTHETIC_CELLS) probabilities are generated",
        )
    if topology == "pipeline" and num_devices != num_exits:
        allowed = f"pipeline needs num_devices == num_exits ({num_exits})"
        raise _bad("num_devices", num_devices, allowed)
    if isinstance(difficulty, bool) or not isinstance(difficulty, numbers.Real):
        raise _bad("difficulty", difficulty, "a number in [0, 1]")
    if not (math.isfinite(float(difficulty)) and 0.0 <= float(difficulty) <= 1.0):
        raise _bad("difficulty", difficulty, "a number in [0, 1]")
    return int(num_devices)


def _draw_outcomes(
    rng: np.random.Generator, n: int, c: int, depth: np.ndarray, difficulty: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels ``[n]``, predicted classes ``[n, K]`` and slack ``[n, K]`` (> 0 exactly when right).

    A sample's hardness is shared by its exits, so exits agree more often than chance; the
    per-exit thresholds make exit k right on the share ``target_acc[k]`` of samples.
    """
    k = len(depth)
    acc_first, acc_last = 0.8 - 0.5 * difficulty, 0.98 - 0.16 * difficulty
    target_acc = acc_first + (acc_last - acc_first) * np.sqrt(depth)
    labels = rng.integers(0, c, size=n)
    hardness = rng.random(n)
    score = hardness[:, None] + 0.15 * rng.standard_normal((n, k))
    thresholds = np.array([np.quantile(score[:, j], target_acc[j]) for j in range(k)])
    slack = thresholds[None, :] - score
    wrong_shift = rng.integers(1, c, size=(n, k))
    pred = np.where(slack > 0, labels[:, None], (labels[:, None] + wrong_shift) % c)
    return labels, pred, slack


def _probabilities(
    rng: np.random.Generator, pred: np.ndarray, slack: np.ndarray, depth: np.ndarray, c: int
) -> np.ndarray:
    """Probabilities ``[n, K, C]`` float32: top-1 on ``pred``, confidence logistic in the slack.

    Confidence is sharper and higher for deeper exits; the remaining mass is spread over the other
    classes (Dirichlet, blended towards uniform so that ``pred`` stays the argmax).
    """
    n, k = pred.shape
    conf_raw = 1.0 / (1.0 + np.exp(-(6.0 * slack - 0.4 + 1.6 * depth[None, :])))
    top = 1.0 / c + (1.0 - 1.0 / c) * (0.04 + 0.95 * conf_raw)
    rest = rng.dirichlet(np.ones(c - 1), size=(n, k)) if c > 2 else np.ones((n, k, 1))
    uniform = 1.0 / (c - 1)
    room = (1.0 - top)[..., None]
    cap = 0.95 * top[..., None]
    excess = room * rest.max(axis=-1, keepdims=True)
    blend = np.clip((cap - room * uniform) / np.maximum(excess - room * uniform, 1e-12), 0.0, 1.0)
    rest = blend * rest + (1.0 - blend) * uniform
    probs = np.empty((n, k, c), dtype=np.float64)
    other_idx = (pred[..., None] + 1 + np.arange(c - 1)[None, None, :]) % c
    np.put_along_axis(probs, pred[..., None], top[..., None], axis=-1)
    np.put_along_axis(probs, other_idx, room * rest, axis=-1)
    probs = probs.astype(np.float32)
    probs /= probs.sum(axis=-1, keepdims=True)
    return probs


def _feature_diff(
    rng: np.random.Generator, pred: np.ndarray, slack: np.ndarray, depth: np.ndarray
) -> np.ndarray:
    """DistrEE's feature difference ``[n, K]`` float32: 1.0 at exit 0, then in about [0, 0.7].

    Smaller deeper in the network, when exit k agrees with exit k-1, and when exit k is right
    (features settle once the network has found the answer), with noise: informative, not perfect.
    """
    n, k = pred.shape
    diff = np.ones((n, k), dtype=np.float32)
    if k > 1:
        agree = (pred[:, 1:] == pred[:, :-1]).astype(np.float64)
        settled = np.tanh(4.0 * slack[:, 1:])
        noise = rng.standard_normal(agree.shape)
        value = 0.42 - 0.12 * depth[None, 1:] - 0.1 * agree - 0.12 * settled + 0.06 * noise
        diff[:, 1:] = np.clip(value, 0.0, 1.0)
    return diff


def _costs(
    rng: np.random.Generator, k: int, d: int, c: int, topology: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage, exit and transfer costs of a small CIFAR-10 network (FLOPs = 2 x multiply-adds)."""
    stage_weight = 0.8 + 0.4 * rng.random(k)
    stage_weight /= stage_weight.sum()
    stage_flops = np.zeros((k, d))
    transfer = np.zeros((k, d))
    if topology == "parallel":
        branch_macs = 60e6 / max(1, d // 2)  # each device runs a slim student branch
        stage_flops[:] = 2.0 * branch_macs * stage_weight[:, None]
        transfer[:] = 64 * 4  # pooled 64-dim float32 feature per device per stage
        exit_flops = 2.0 * (d * 64) * c * np.ones(k)
    else:
        np.fill_diagonal(stage_flops, 2.0 * 60e6 * stage_weight)
        fmap = 32 * 32 * 32 * 4 / (2 ** np.arange(k))  # halving feature maps, float32
        np.fill_diagonal(transfer, fmap)
        transfer[k - 1, k - 1] = 0.0
        exit_flops = 2.0 * 128 * c * np.ones(k)
    return stage_flops, exit_flops, transfer
