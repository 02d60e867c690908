"""Stage latency: milliseconds of one stage of a request from FLOPs, bytes and resource levels.

Why one formula for both topologies: the live runtime's calibration fits the same parameters
(device FLOP/s, link bytes/s, per-message link latency, an exit head's fixed time, fixed
per-stage overhead) whatever the layout. Stage k of a request takes

    stage_ms[k] = max_d ( flops[k,d] / rate_d + bytes[k,d] / bw_d + messages[k,d] * latency_d )
                  + (exit_flops[k] / peak_e + exit_overhead) / share_e + stage_overhead

with peak_d device d's FLOP/s, share_d its compute share, rate_d = peak_d x share_d, e the exit
device of stage k, and bw_d = link d's bytes/s x its bandwidth share. A request that starts after
the cluster idled ``idle`` ms adds ``cold_ms[k] x (1 - exp(-idle / cold_tau_ms)) / share_e`` to
each of its stages (``cluster.cold_start_ms``; the environment's dynamics add it, since the idle
time is the stream's, not the levels'). ``parallel`` (DistrEE):
every device runs stage k of its branch; stage 0 first receives the input over each device's
link, later stages first receive the aggregator's continue decision (``cluster.decision_bytes``;
0 = none, the first version's model); each device then sends its pooled features back; the exit
head runs on the aggregator (device 0). ``pipeline`` (MDI-Exit): stage k runs on device k only,
after its input (stage 0: the request's input; stage k: the feature map of stage k-1) arrives
over link k, the receiving device's link; exit head k runs on device k.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distree_env.cluster.profiles import DEVICE_PROFILES, LINK_PROFILES

__all__ = ["LatencyModel", "coldness", "device_rates", "link_rates"]


def coldness(idle_ms: Any, tau_ms: float) -> Any:
    """Share in [0, 1) of the full cold start (``cluster.cold_start_ms``) that a request pays
    after the devices idled ``idle_ms`` (a number or an array): ``1 - exp(-idle / tau)``."""
    return 1.0 - np.exp(-np.maximum(idle_ms, 0.0) / tau_ms)


def device_rates(cluster: Any, num_devices: int, trace_name: str) -> np.ndarray:
    """Effective FLOP/s of each device from a validated ``ClusterConfig``."""
    entries = (
        cluster.devices if cluster.devices is not None else (cluster.device_profile,) * num_devices
    )
    if len(entries) != num_devices:
        raise ValueError(
            f"cluster.devices has {len(entries)} entries but trace {trace_name!r} has "
            f"{num_devices} devices; give {num_devices} entries or None"
        )
    return np.array(
        [DEVICE_PROFILES[e].effective_flops if isinstance(e, str) else float(e) for e in entries]
    )


def link_rates(cluster: Any, num_devices: int, trace_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Effective bytes/s and per-message latency (s) of each device's link."""
    entries = cluster.links if cluster.links is not None else (cluster.link_profile,) * num_devices
    if len(entries) != num_devices:
        raise ValueError(
            f"cluster.links has {len(entries)} entries but trace {trace_name!r} has "
            f"{num_devices} devices (one link per device); give {num_devices} entries or None"
        )
    bw, lat = [], []
    for e in entries:
        if isinstance(e, str):
            bw.append(LINK_PROFILES[e].effective_bandwidth)
            lat.append(LINK_PROFILES[e].latency_s)
        else:
            bw.append(float(e))
            lat.append(cluster.link_latency_ms * 1e-3)
    return np.array(bw), np.array(lat)


class LatencyModel:
    """Stage latencies of one network layout on one cluster (all tables in ms at full availability).

    ``compute_ms[k, d]``, ``transfer_ms[k, d]`` (divided by the shares at run time),
    ``fixed_ms[k, d]`` (message latencies), ``exit_ms[k]`` on ``exit_device[k]`` (its FLOPs
    and ``cluster.exit_overhead_ms``),
    ``overhead_ms`` per stage (the cluster's stage overhead plus the controller's decision time),
    ``cold_ms[k]`` and ``cold_tau_ms`` (a cold start's extra time per stage; zeros: none).
    """

    def __init__(
        self,
        topology: str,
        stage_flops: np.ndarray,
        exit_flops: np.ndarray,
        transfer_bytes: np.ndarray,
        input_bytes: float,
        device_flops: np.ndarray,
        link_bandwidth: np.ndarray,
        link_latency_s: np.ndarray,
        stage_overhead_ms: float = 0.0,
        decision_bytes: float = 0.0,
        exit_overhead_ms: float = 0.0,
        cold_start_ms: np.ndarray | tuple[float, ...] | None = None,
        cold_start_tau_ms: float = 40.0,
    ) -> None:
        k, d = stage_flops.shape
        self.topology, self.num_stages, self.num_devices = topology, k, d
        rate = np.asarray(device_flops, dtype=np.float64)
        bw = np.asarray(link_bandwidth, dtype=np.float64)
        lat_ms = np.asarray(link_latency_s, dtype=np.float64) * 1e3
        transfer = np.asarray(transfer_bytes, dtype=np.float64)
        if topology == "parallel":
            incoming = np.full((k, d), float(decision_bytes))
            incoming[0] = input_bytes
            outgoing = transfer
            self.compute_ms = stage_flops / rate[None, :] * 1e3
            self.exit_device = np.zeros(k, dtype=np.int64)
            messages = (incoming > 0).astype(np.float64) + (outgoing > 0)
        else:
            diag = np.arange(k)
            incoming = np.zeros((k, d))
            incoming[0, 0] = input_bytes
            incoming[diag[1:], diag[1:]] = transfer[diag[:-1], diag[:-1]]
            outgoing = np.zeros((k, d))
            self.compute_ms = np.zeros((k, d))
            self.compute_ms[diag, diag] = stage_flops[diag, diag] / rate[:k] * 1e3
            self.exit_device = diag.copy()
            messages = (incoming > 0).astype(np.float64)
        self.transfer_ms = (incoming + outgoing) / bw[None, :] * 1e3
        self.fixed_ms = messages * lat_ms[None, :]
        head_flops_ms = np.asarray(exit_flops, dtype=np.float64) / rate[self.exit_device] * 1e3
        self.exit_ms = head_flops_ms + float(exit_overhead_ms)
        self.overhead_ms = float(stage_overhead_ms)
        cold = np.zeros(k) if cold_start_ms is None else np.asarray(cold_start_ms, np.float64)
        if cold.shape != (k,):
            raise ValueError(
                f"cluster.cold_start_ms has {cold.size} entries but the network has {k} "
                f"stages; give {k} entries (ms per stage) or none"
            )
        self.cold_ms, self.cold_tau_ms = cold, float(cold_start_tau_ms)

    @classmethod
    def from_config(cls, config: Any, trace: Any) -> LatencyModel:
        """The model of a validated ``EnvConfig`` on an ``ExitTrace``'s cost tables."""
        d = trace.num_devices
        bw, lat = link_rates(config.cluster, d, config.trace)
        return cls(
            trace.topology,
            trace.stage_flops.astype(np.float64),
            trace.exit_flops.astype(np.float64),
            trace.transfer_bytes.astype(np.float64),
            float(trace.input_bytes),
            device_rates(config.cluster, d, config.trace),
            bw,
            lat,
            config.cluster.stage_overhead_ms + config.cluster.decision_ms,
            config.cluster.decision_bytes,
            config.cluster.exit_overhead_ms,
            config.cluster.cold_start_ms or None,
            config.cluster.cold_start_tau_ms,
        )

    def stage_ms(self, k: np.ndarray, compute: np.ndarray, bandwidth: np.ndarray) -> np.ndarray:
        """Milliseconds of stage ``k`` ``[B]`` at shares ``compute``/``bandwidth`` ``[B, D]``."""
        inv_c = 1.0 / compute
        per_device = self.compute_ms[k] * inv_c + self.transfer_ms[k] / bandwidth + self.fixed_ms[k]
        exit_share = np.take_along_axis(inv_c, self.exit_device[k][:, None], axis=1)[:, 0]
        return per_device.max(axis=1) + self.exit_ms[k] * exit_share + self.overhead_ms

    def all_stages_ms(self, compute: np.ndarray, bandwidth: np.ndarray) -> np.ndarray:
        """Milliseconds of every stage ``[..., K]`` at shares ``[..., D]`` held for all stages."""
        inv_c = 1.0 / compute[..., None, :]
        per_device = self.compute_ms * inv_c + self.transfer_ms / bandwidth[..., None, :]
        per_device = per_device + self.fixed_ms
        exit_share = inv_c[..., 0, :][..., self.exit_device]
        return per_device.max(axis=-1) + self.exit_ms * exit_share + self.overhead_ms

    def full_speed_ms(self) -> np.ndarray:
        """Stage latencies with every resource fully available, ``[K]`` ms."""
        ones = np.ones(self.num_devices)
        return self.all_stages_ms(ones, ones)
