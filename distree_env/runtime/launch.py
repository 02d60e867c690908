"""Starting the processes of a live run: on one machine, or one per machine under torchrun.

Why one entry point for both: a process that finds ``RANK`` and ``WORLD_SIZE`` in its environment
(set by ``torchrun`` or by :func:`spawn_local`) is a worker; otherwise it is the local launcher,
which starts ``WORLD_SIZE`` copies of the same command over loopback and supervises them: when
the aggregator ends, or any process fails, the others get a grace period and are then killed,
so no process is ever left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from distree_env.children import die_with, stop_on_signals

__all__ = [
    "AGGREGATOR_RANK",
    "EXIT_PEER",
    "EXIT_SETTINGS",
    "PeerError",
    "RendezvousError",
    "Worker",
    "check_world_size",
    "device_rank",
    "free_port",
    "rank_name",
    "spawn_local",
    "worker_from_env",
]

#: Rank of the aggregator; device ``d`` is rank ``d + 1``.
AGGREGATOR_RANK = 0
#: Exit status of a worker or launcher whose settings (rendezvous, world size, files) are wrong.
EXIT_SETTINGS = 2
#: Exit status when a peer failed (died, timed out) during the run.
EXIT_PEER = 3


class RendezvousError(RuntimeError):
    """The processes could not find each other (bad address, port or world size)."""


def device_rank(d: int) -> int:
    """The process rank of device ``d`` (rank 0 is the aggregator)."""
    return d + 1


def rank_name(rank: int) -> str:
    """How errors name a process: ``aggregator (rank 0)``, ``device 1 (rank 2)``."""
    return "aggregator (rank 0)" if rank == AGGREGATOR_RANK else f"device {rank - 1} (rank {rank})"


class PeerError(RuntimeError):
    """A peer did not answer in time or its connection broke; names the peer."""

    def __init__(self, rank: int, doing: str, detail: str) -> None:
        self.rank, self.doing, self.detail = rank, doing, detail
        super().__init__(f"{rank_name(rank)} failed while {doing}: {detail}")


@dataclass(frozen=True)
class Worker:
    """The rank and world size of this process, as torchrun (or the local launcher) sets them."""

    rank: int
    world_size: int


def worker_from_env() -> Worker | None:
    """The worker this process is (from ``RANK``/``WORLD_SIZE``), or None for the launcher."""
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        raise RendezvousError(
            f"RANK={os.environ.get('RANK')!r} WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}: "
            "both must be set to integers (torchrun sets them)"
        ) from None
    if not 0 <= rank < world:
        raise RendezvousError(f"RANK={rank} is not allowed: it must be in [0, WORLD_SIZE={world})")
    return Worker(rank, world)


def check_world_size(world_size: int, num_devices: int) -> None:
    """RendezvousError unless the world is one aggregator plus one process per device."""
    if world_size != num_devices + 1:
        raise RendezvousError(
            f"WORLD_SIZE={world_size} does not fit this network: it runs on {num_devices} "
            f"devices + 1 aggregator = {num_devices + 1} processes"
        )


def free_port() -> int:
    """A TCP port free on localhost now, for a local run's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_local(
    command: Sequence[str],
    world_size: int,
    grace_s: float,
    notice_s: float,
    env: dict[str, str] | None = None,
    prefixes: Sequence[Sequence[str]] | None = None,
    master_addr: str = "127.0.0.1",
    per_rank_env: Sequence[dict[str, str]] | None = None,
) -> int:
    """Run ``command`` as ranks ``0..world_size-1`` over ``master_addr`` and supervise them.

    Returns the aggregator's exit status (or :data:`EXIT_PEER` if it succeeded but a device
    failed). Once the aggregator has ended, the others get ``grace_s`` seconds, then SIGKILL.
    When a device fails first, the aggregator gets ``notice_s + grace_s`` to notice it (its
    message timeout), name it and write its record, then everything left is killed.

    :param command: the worker command line (e.g. ``[sys.executable, "-m", "experiments.run_live",
        ...]``).
    :param world_size: number of processes.
    :param grace_s: how long the devices may take to finish after the aggregator's end.
    :param notice_s: the longest the aggregator may take to notice a failed device.
    :param env: extra environment for every process.
    :param prefixes: per rank, a command prefix (e.g. ``ip netns exec NS``).
    :param master_addr: rendezvous address (rank 0 listens there).
    :param per_rank_env: per rank, extra environment (e.g. ``GLOO_SOCKET_IFNAME``).
    """
    port = free_port()
    procs: list[subprocess.Popen] = []
    stopping = stop_on_signals()
    try:
        for rank in range(world_size):
            child_env = dict(os.environ, **(env or {}))
            child_env.update(
                MASTER_ADDR=master_addr,
                MASTER_PORT=str(port),
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(world_size),
                **(per_rank_env[rank] if per_rank_env else {}),
            )
            prefix = list(prefixes[rank]) if prefixes else []
            procs.append(
                subprocess.Popen(
                    [*prefix, *command], env=child_env, preexec_fn=die_with(os.getpid())
                )
            )
            print(f"started {rank_name(rank)} pid {procs[-1].pid}", flush=True)
        return _supervise(procs, grace_s, notice_s)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
        for signum, handler in stopping.items():
            signal.signal(signum, handler)


def _supervise(procs: list[subprocess.Popen], grace_s: float, notice_s: float) -> int:
    deadline = float("inf")
    device_failed = False
    while any(p.poll() is None for p in procs):
        now = time.monotonic()
        if procs[0].poll() is not None:
            deadline = min(deadline, now + grace_s)
        elif not device_failed and any(p.poll() not in (None, 0) for p in procs[1:]):
            device_failed = True
            deadline = now + notice_s + grace_s
        if now > deadline:
            for i, p in enumerate(procs):
                if p.poll() is None:
                    print(f"killing {rank_name(i)} (pid {p.pid}): still running", file=sys.stderr)
                    p.send_signal(signal.SIGKILL)
                    p.wait()
            break
        time.sleep(0.05)
    codes = [p.wait() for p in procs]
    if codes[0] != 0:
        return int(codes[0]) if codes[0] > 0 else EXIT_PEER
    return EXIT_PEER if any(codes) else 0
