"""Messages between the aggregator and the devices over torch.distributed (gloo), with timeouts.

Why gloo point-to-point: it is an existing engine that runs over loopback on one machine and over
TCP across machines with the same ``env://`` rendezvous (``torchrun``), and its receive
operations accept a timeout, so a late, lost or dead peer ends as an error naming the peer rather
than a hang. A timed-out pair is closed by gloo, so any timeout ends the run.

A message is a fixed int64 header (operation, request, stage, payload dtype, payload length,
the sender's run time and the message's emulated arrival time, both in microseconds) followed,
when non-empty, by the payload (uint8 or float32). Rank 0 is the aggregator, rank ``d + 1`` is
device ``d``.
"""

from __future__ import annotations

import datetime
import enum
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from distree_env.runtime.launch import PeerError, RendezvousError

__all__ = ["Endpoint", "Message", "Op", "rendezvous"]

HEADER_LEN = 7
_DTYPES = (torch.uint8, torch.float32)


class Op(enum.IntEnum):
    """What a message asks for or carries."""

    INPUT = 1  # aggregator -> device: a request's image; run stage 0
    STAGE = 2  # aggregator -> device: the decision to continue; run stage ``stage``
    # (pipeline: on the feature map the previous device sends)
    FEATURES = 3  # device -> aggregator: timings, then the pooled features of a stage
    STOP = 4  # aggregator -> device: the run is over, exit
    FORWARD = 5  # aggregator -> pipeline device: ship your feature map to the next device
    FMAP = 6  # pipeline device -> next device: a feature map (raw bytes)


@dataclass
class Message:
    """One message with its header: what, for which request and stage, and its link timing."""

    op: Op
    request: int
    stage: int
    payload: np.ndarray
    sent_ms: float  # sender's run time when the message left
    due_ms: float  # when it arrives on the emulated link (>= sent_ms; the receiver waits for it)


def rendezvous(rank: int, world_size: int, timeout_s: float) -> None:
    """Join the gloo process group from ``MASTER_ADDR``/``MASTER_PORT``; RendezvousError if the
    master is unreachable or not every rank shows up within ``timeout_s``."""
    addr = os.environ.get("MASTER_ADDR", "?")
    port = os.environ.get("MASTER_PORT", "?")
    where = f"MASTER_ADDR={addr} MASTER_PORT={port}"
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        dist.init_process_group(
            "gloo", init_method="env://", rank=rank, world_size=world_size, timeout=timeout
        )
    except (RuntimeError, ValueError, OSError) as e:  # DistStoreError is a RuntimeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RendezvousError(
            f"rendezvous failed for rank {rank} of WORLD_SIZE={world_size} at {where} within "
            f"{timeout_s:g} s (master unreachable, or the ranks disagree on the world size): "
            f"{first}"
        ) from None
    try:
        dist.monitored_barrier(timeout=timeout, wait_all_ranks=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise RendezvousError(
            f"rendezvous at {where}: not every rank of WORLD_SIZE={world_size} arrived within "
            f"{timeout_s:g} s: {first}"
        ) from None


class Endpoint:
    """Send and receive messages; the run clock is shared through the headers.

    The aggregator's clock defines run time; a device adopts the sender's run time of every
    message it receives (``now_ms``), so no clock synchronisation between machines is needed
    (the error is the one-way wire delay, well under a millisecond on a LAN).
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.timeout_s = float(timeout_s)
        self._origin = time.perf_counter()
        self._synced = False
        self._pending: list = []

    # ---- clock -------------------------------------------------------------------------------
    def now_ms(self) -> float:
        """Run time in milliseconds (see the class docstring for how devices follow it)."""
        return (time.perf_counter() - self._origin) * 1e3

    def reset_clock(self) -> None:
        """Run time 0 is now (the aggregator, when the first request may arrive)."""
        self._origin = time.perf_counter()

    def to_local_s(self, run_ms: float) -> float:
        """``time.perf_counter()`` value of run time ``run_ms``."""
        return self._origin + run_ms / 1e3

    def adopt(self, sender_ms: float) -> None:
        """Make sure this clock is not behind a message sent at ``sender_ms`` (a device on
        receiving a message): a message never arrives before it was sent, so the latest such
        bound is the best estimate of the sender's clock."""
        origin = time.perf_counter() - sender_ms / 1e3
        self._origin = origin if not self._synced else min(self._origin, origin)
        self._synced = True

    # ---- messages ----------------------------------------------------------------------------
    def send(
        self,
        dst: int,
        op: Op,
        request: int,
        stage: int,
        payload: np.ndarray | None,
        due_ms: float | None = None,
    ) -> None:
        """Post a message to ``dst`` (non-blocking; ``flush`` waits for the posted sends).

        ``due_ms``: the run time at which the message arrives on the emulated link (default:
        now); the receiver treats it as arrived then."""
        data = np.zeros(0, np.float32) if payload is None else np.ascontiguousarray(payload)
        if data.dtype == np.uint8:
            code = 0
        else:
            data, code = data.astype(np.float32, copy=False), 1
        data = data.reshape(-1)
        now = self.now_ms()
        due = now if due_ms is None else max(due_ms, now)
        header = torch.tensor(
            [int(op), request, stage, code, data.size, int(now * 1e3), int(due * 1e3)],
            dtype=torch.int64,
        )
        try:
            self._pending.append((dst, header, dist.isend(header, dst)))
            if data.size:
                body = torch.from_numpy(data.copy())
                self._pending.append((dst, body, dist.isend(body, dst)))
        except RuntimeError as e:
            raise PeerError(dst, f"sending {op.name}", _first_line(e)) from None

    def flush(self) -> None:
        """Wait (at most the timeout) until every posted send has left."""
        pending, self._pending = self._pending, []
        for dst, _tensor, work in pending:
            try:
                work.wait(self.timeout)
            except RuntimeError as e:
                raise PeerError(dst, "sending", _first_line(e)) from None

    def recv(self, src: int, doing: str, timeout_s: float | None = None) -> Message:
        """The next message from ``src``; PeerError after ``timeout_s`` (default: the
        endpoint's)."""
        timeout = self.timeout if timeout_s is None else datetime.timedelta(seconds=timeout_s)
        header = torch.empty(HEADER_LEN, dtype=torch.int64)
        try:
            dist.irecv(header, src).wait(timeout)
            op, request, stage, code, numel, sent_us, due_us = (int(v) for v in header.tolist())
            body = torch.empty(numel, dtype=_DTYPES[code])
            if numel:
                dist.irecv(body, src).wait(timeout)
        except RuntimeError as e:
            raise PeerError(src, doing, _first_line(e)) from None
        return Message(Op(op), request, stage, body.numpy(), sent_us / 1e3, due_us / 1e3)


#: Words of gloo's messages that say what happened to a connection (the rest is its source
#: location and advice).
_CONNECTION_WORDS = ("timed out", "timeout", "closed", "reset", "read error", "broken pipe")


def _first_line(e: BaseException) -> str:
    """The line of a gloo error that says what happened, without gloo's ``[file:line]``
    prefix and advice."""
    text = str(e).strip()
    for line in text.splitlines():
        if any(word in line.lower() for word in _CONNECTION_WORDS):
            line = line.split("] ", 1)[-1].split(". This is typically")[0]
            return line.split(" GLHF")[0].strip()
    return text.splitlines()[0] if text else type(e).__name__
