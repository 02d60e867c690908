"""A device process: runs its branch of the network stage by stage on command.

Why a loop of commands: the aggregator owns the exit decision, so a device only ever runs the
next stage of the request it holds. A stage lasts its compute at the machine's speed stretched by
the device's availability (``Levels.finish``), then its features cross the uplink's token
bucket; the device reports what it measured with the features and stamps them with their
emulated arrival, so the aggregator records per-device timings without synchronised clocks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from distree_env.runtime.launch import AGGREGATOR_RANK, device_rank
from distree_env.runtime.shaping import Levels, TokenBucket
from distree_env.runtime.transport import Endpoint, Op

__all__ = ["DeviceReport", "StageRunner", "run_device"]

#: Timing fields a device sends in front of its pooled features, in this order.
REPORT_FIELDS = ("busy_ms", "compute_ms", "compute_level")


@dataclass(frozen=True)
class DeviceReport:
    """What a device measured for one stage, as the aggregator receives it."""

    busy_ms: float  # the stage at the machine's speed
    compute_ms: float  # the stage at the device's availability
    compute_level: float  # the availability when the stage started
    pooled: np.ndarray

    @classmethod
    def decode(cls, payload: np.ndarray) -> DeviceReport:
        """The report from a FEATURES message: ``REPORT_FIELDS`` first, then the pooled vector."""
        n = len(REPORT_FIELDS)
        head = [float(v) for v in payload[:n]]
        return cls(*head, pooled=payload[n:])


class StageRunner:
    """The network pieces one device owns: stage ``k`` of branch ``branch``, then pooling.

    ``bf16`` runs under CPU bfloat16 autocast and ``tta`` runs the mirrored image alongside (a
    batch of two views, averaged by the exit head), as the exit traces are exported, so live
    outputs equal the trace's.
    """

    def __init__(self, net: torch.nn.Module, branch: int, bf16: bool, tta: bool = False) -> None:
        self.net, self.branch, self.bf16, self.tta = net.eval(), branch, bf16, tta

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """The network input of one image: the image, and its mirror image with ``tta``."""
        return torch.cat([x, x.flip(3)]) if self.tta else x

    @torch.no_grad()
    def __call__(self, k: int, x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """Feature map of stage ``k`` and its pooled vector (float32)."""
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with ctx:
            fmap = self.net.stage_forward(self.branch, k, x)
            pooled = self.net.pool(fmap)
        return fmap, pooled.float().numpy().reshape(-1)

    def warm_up(self, x: torch.Tensor) -> None:
        """Run every stage once (first calls allocate and pick kernels: not a stage's cost)."""
        x = self.views(x)
        for k in range(self.net.config.num_exits):
            x, _ = self(k, x)


#: dtypes a feature map may travel in (as raw bytes), by code.
_FMAP_DTYPES = (torch.float32, torch.bfloat16)


def encode_fmap(fmap: torch.Tensor) -> np.ndarray:
    """A feature map ``[B, C, H, W]`` as bytes: dtype code and shape (5 x int32), then the raw
    tensor data (bfloat16 stays bfloat16: the next segment sees exactly what it would offline)."""
    t = fmap.detach().contiguous()
    head = np.array([_FMAP_DTYPES.index(t.dtype), *t.shape], dtype=np.int32)
    data = t.reshape(-1).view(torch.uint8).numpy()
    return np.concatenate([head.view(np.uint8), data])


def decode_fmap(payload: np.ndarray) -> torch.Tensor:
    head = payload[:20].view(np.int32)
    data = torch.from_numpy(payload[20:].copy()).view(_FMAP_DTYPES[int(head[0])])
    return data.reshape(*(int(v) for v in head[1:]))


def run_device(
    d: int,
    runner: StageRunner,
    to_input,
    endpoint: Endpoint,
    compute: Levels,
    uplink: TokenBucket | None,
    idle_timeout_s: float,
    next_link: TokenBucket | None = None,
    pipeline: bool = False,
) -> int:
    """Serve commands until STOP; returns the number of stages run.

    ``parallel``: device ``d`` runs every stage of branch ``d``; INPUT starts stage 0, STAGE the
    next one on the feature map it holds. ``pipeline``: device ``d`` runs segment ``d``; INPUT
    (device 0) or STAGE (then the previous device's feature map arrives) starts it, and FORWARD
    ships its feature map to device ``d + 1`` over that device's link (``next_link``).

    :param d: this device's index.
    :param runner: the device's network pieces.
    :param to_input: uint8 HWC image ``[1, 32, 32, 3]`` -> network input tensor.
    :param endpoint: the transport (its timeout bounds sends and feature-map receives).
    :param compute: this device's compute availability (``shaping.Levels``).
    :param uplink: this device's link towards the aggregator (None: unshaped).
    :param idle_timeout_s: longest wait for the next command before giving up.
    :param next_link: pipeline: the link into device ``d + 1`` (None: unshaped).
    :param pipeline: the layout (see above).
    """
    state: torch.Tensor | None = None
    request, stage, stages_run = -1, -1, 0
    while True:
        msg = endpoint.recv(AGGREGATOR_RANK, "sending the next command", idle_timeout_s)
        endpoint.adopt(msg.sent_ms)
        if msg.op == Op.STOP:
            return stages_run
        due = msg.due_ms
        if msg.op == Op.FORWARD and pipeline and msg.request == request and state is not None:
            payload = encode_fmap(state)
            nbytes = 4 * state[0].numel()  # one view in float32, as the cost model counts
            now = endpoint.now_ms()
            release = now if next_link is None else next_link.reserve(nbytes, now, request)
            endpoint.send(device_rank(d + 1), Op.FMAP, request, stage + 1, payload, release)
            endpoint.flush()
            continue
        if msg.op == Op.INPUT:
            x = runner.views(to_input(msg.payload.reshape(1, 32, 32, 3)))
            request, stage = msg.request, msg.stage
        elif msg.op == Op.STAGE and pipeline:
            fm = endpoint.recv(device_rank(d - 1), f"sending stage {msg.stage}'s input")
            x, request, stage, due = decode_fmap(fm.payload), msg.request, msg.stage, fm.due_ms
        elif msg.op == Op.STAGE and msg.request == request and msg.stage == stage + 1:
            x, stage = state, msg.stage
        else:
            raise RuntimeError(
                f"device {d}: unexpected {msg.op.name} for request {msg.request} stage "
                f"{msg.stage} while holding request {request} stage {stage}"
            )
        # The stage starts when its input arrives on the emulated link; the device computes
        # at once and sends its features stamped with their emulated arrival, which the
        # aggregator waits for: no sleep here (on a loaded machine every wake-up adds delay).
        start = max(due, endpoint.now_ms())
        level = compute.at(request, start)
        t0 = endpoint.now_ms()
        fmap, pooled = runner(stage, x)
        busy = endpoint.now_ms() - t0
        ready = compute.finish(request, start, busy)
        release = ready if uplink is None else uplink.reserve(pooled.nbytes, ready, request)
        report = np.array([busy, ready - start, level], dtype=np.float32)
        payload = np.concatenate([report, pooled])
        endpoint.send(AGGREGATOR_RANK, Op.FEATURES, request, stage, payload, due_ms=release)
        endpoint.flush()
        state, stages_run = fmap, stages_run + 1
