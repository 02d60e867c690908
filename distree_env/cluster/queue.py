"""The bounded FIFO queue of requests waiting for the devices, for a batch of environments.

Why a ring per environment: requests are admitted and served in arrival order, one at a time per
environment, so a ring buffer of arrival times and trace rows with a head and a size is all the
state there is, and every operation is an array operation over the environments that take part
(flat arrays and ``take``: several times faster than fancy indexing of 2-d arrays). The queue
also counts the arrivals refused since its last admission and hands that count to the next
request admitted, so every drop belongs to one request: a measurement that counts a window of
requests counts the drops among their arrivals, whatever order they are answered in.
"""

from __future__ import annotations

import numpy as np

__all__ = ["OVERFLOW_POLICIES", "QUEUE_HARD_CAP", "WaitingQueue"]

#: What happens to a request that arrives while ``capacity`` requests wait: ``drop`` (refused),
#: ``admit`` (admitted beyond the bound and counted as an overflow).
OVERFLOW_POLICIES = ("drop", "admit")
#: Most requests that can wait in one environment (also the cap on ``queue.capacity``); with
#: ``overflow="admit"``, or with pipelining (whose ring holds every request in the system), an
#: arrival beyond it is dropped.
QUEUE_HARD_CAP = 1024


class WaitingQueue:
    """Waiting requests of ``num_envs`` environments, at most ``slots`` each: arrival time
    (ms), trace row and the drops before it (arrivals refused between the request admitted
    before it and its own arrival). ``size``, ``time_sum`` (the waiting requests' summed
    arrival times, what ``system`` reward timing needs to know the latency they accrue) and
    ``refused`` (drops since the last admission) ``[num_envs]`` are public; ``time_sum`` is
    set to exactly 0 whenever a queue empties, so rounding cannot drift."""

    def __init__(self, num_envs: int, slots: int) -> None:
        self.slots = int(slots)
        self.time = np.zeros(num_envs * self.slots)
        self.sample = np.zeros(num_envs * self.slots, dtype=np.int64)
        self.drops_before = np.zeros(num_envs * self.slots, dtype=np.int64)
        self.refused = np.zeros(num_envs, dtype=np.int64)
        self.head = np.zeros(num_envs, dtype=np.int64)
        self.size = np.zeros(num_envs, dtype=np.int64)
        self.time_sum = np.zeros(num_envs)
        #: Flat index of each environment's first slot (``time``/``sample`` are flat rings).
        self.base = np.arange(num_envs) * self.slots

    def clear(self, envs: np.ndarray) -> None:
        """Empty the queues of ``envs``."""
        self.head[envs] = 0
        self.size[envs] = 0
        self.time_sum[envs] = 0.0
        self.refused[envs] = 0

    def push(self, envs: np.ndarray, time: np.ndarray, sample: np.ndarray) -> None:
        """Append one request to each queue in ``envs`` (callers check there is room); it
        takes the drops refused since the last admission."""
        flat = envs * self.slots + (self.head[envs] + self.size[envs]) % self.slots
        self.time[flat] = time
        self.sample[flat] = sample
        self.drops_before[flat] = self.refused[envs]
        self.refused[envs] = 0
        self.size[envs] += 1
        self.time_sum[envs] += time

    def refuse(self, envs: np.ndarray) -> None:
        """Count one refused arrival in each queue of ``envs`` (indices, each at most once)."""
        self.refused[envs] += 1

    def admit_direct(self, mask: np.ndarray) -> np.ndarray:
        """The drops before a request that goes to the devices without waiting, in the queues
        where ``mask`` (elsewhere 0): the count since the last admission, which starts again."""
        out = np.where(mask, self.refused, 0)
        self.refused = np.where(mask, 0, self.refused)
        return out

    def pop(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The oldest request of every queue ``[num_envs]`` (arrival time, trace row, drops
        before it), removed where ``mask`` (those queues must be non-empty; elsewhere the
        values are meaningless)."""
        flat = self.base + self.head
        out = self.time.take(flat), self.sample.take(flat), self.drops_before.take(flat)
        self.head = np.where(mask, (self.head + 1) % self.slots, self.head)
        self.size -= mask
        self.time_sum = np.where(self.size > 0, self.time_sum - out[0] * mask, 0.0)
        return out

    def oldest(self, envs: np.ndarray | None = None) -> np.ndarray:
        """Arrival time of the oldest waiting request of ``envs`` (all environments if None;
        meaningless where the queue is empty: mask with ``size > 0``)."""
        if envs is None:
            return self.time.take(self.base + self.head)
        return self.time.take(envs * self.slots + self.head[envs])
