"""The edge cluster: cited hardware, resource processes in time, request streams, stage latency
and the waiting queue, one module each (``profiles``, ``resources``, ``arrivals``, ``latency``,
``queue``)."""

from __future__ import annotations

from distree_env.cluster.arrivals import ARRIVAL_PROCESSES, ArrivalProcess, ArrivalStream
from distree_env.cluster.latency import LatencyModel
from distree_env.cluster.profiles import (
    DEVICE_PROFILES,
    HSDPA_PEAK_MBPS,
    LINK_PROFILES,
    DeviceProfile,
    LinkProfile,
)
from distree_env.cluster.queue import OVERFLOW_POLICIES, QUEUE_HARD_CAP, WaitingQueue
from distree_env.cluster.resources import (
    CLOCKS,
    HSDPA_SPLITS,
    MAX_MARKOV_LEVELS,
    MIN_SHARE,
    RESOURCE_PROCESSES,
    ProcessPath,
    ResourcePaths,
    ResourceTimeline,
    stationary_distribution,
)

__all__ = [
    "ARRIVAL_PROCESSES",
    "CLOCKS",
    "DEVICE_PROFILES",
    "HSDPA_PEAK_MBPS",
    "HSDPA_SPLITS",
    "LINK_PROFILES",
    "MAX_MARKOV_LEVELS",
    "MIN_SHARE",
    "OVERFLOW_POLICIES",
    "QUEUE_HARD_CAP",
    "RESOURCE_PROCESSES",
    "ArrivalProcess",
    "ArrivalStream",
    "DeviceProfile",
    "LatencyModel",
    "LinkProfile",
    "ProcessPath",
    "ResourcePaths",
    "ResourceTimeline",
    "WaitingQueue",
    "stationary_distribution",
]
