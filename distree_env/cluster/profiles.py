"""Cited hardware: the peak rates of edge devices and network links, and what inference reaches.

Why a table of its own: every latency the environment reports rests on these numbers, so each
carries its source and the derate that turns a vendor peak into what small-batch CNN inference or a
loaded link really achieves. Calibration against the live runtime replaces them with fitted rates
(``cluster.devices`` / ``cluster.links`` given as numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEVICE_PROFILES", "HSDPA_PEAK_MBPS", "LINK_PROFILES", "DeviceProfile", "LinkProfile"]

#: Peak goodput of the shipped 3G/HSDPA traces in Mbit/s (their largest sample is 8.03 Mbit/s):
#: a trace sample of x Mbit/s is a bandwidth share of x / HSDPA_PEAK_MBPS of the ``hsdpa-3g`` link.
HSDPA_PEAK_MBPS = 8.0


@dataclass(frozen=True)
class DeviceProfile:
    """A device kind: peak FP32 rate and the share of it that small-batch CNN inference reaches."""

    name: str
    peak_flops: float  # FLOP/s, vendor peak
    derate: float  # effective / peak
    source: str

    @property
    def effective_flops(self) -> float:
        """FLOP/s that batch-1 inference reaches with the whole device available."""
        return self.peak_flops * self.derate


@dataclass(frozen=True)
class LinkProfile:
    """A network link kind: peak rate, goodput share, and per-message one-way latency."""

    name: str
    peak_bandwidth: float  # bytes/s (PHY rate / 8)
    derate: float  # goodput / PHY rate
    latency_s: float  # one-way per-message latency
    source: str

    @property
    def effective_bandwidth(self) -> float:
        """Goodput in bytes/s with the whole link available."""
        return self.peak_bandwidth * self.derate


# Sources for every figure. "Effective" = peak x derate; derates are stated per profile.
DEVICE_PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        # Raspberry Pi 4 Model B: Broadcom BCM2711, 4x ARM Cortex-A72 at 1.5 GHz (Raspberry Pi
        # product brief). Peak FP32 = 4 cores x 1.5 GHz x 8 FLOP/cycle (one 128-bit NEON FMA per
        # cycle) = 48 GFLOP/s. Derated to 15% (7.2 GFLOP/s): High Performance Linpack measures
        # about 8 GFLOP/s on a Pi 4 (B. Feiereisen, "Benchmarking the Raspberry Pi 4 with
        # Raspberry Pi OS64", 2022), and batch-1 CNN inference in PyTorch/ONNX reaches less.
        DeviceProfile(
            "raspberry-pi-4", 48e9, 0.15, "BCM2711 4xA72@1.5GHz; HPL ~8 GFLOP/s (Feiereisen 2022)"
        ),
        # NVIDIA Jetson Nano: 128 Maxwell CUDA cores at 921 MHz, "472 GFLOPS" FP16 (NVIDIA Jetson
        # Nano developer kit spec page); FP32 peak = 128 x 2 x 0.921 GHz = 236 GFLOP/s. Derated
        # to 20% (47 GFLOP/s): batch-1 small-CNN kernels are launch- and memory-bound.
        DeviceProfile(
            "jetson-nano", 236e9, 0.20, "NVIDIA Jetson Nano spec: 128 CUDA cores, 472 GFLOPS FP16"
        ),
        # Raspberry Pi 5: 4x Cortex-A76 at 2.4 GHz (Raspberry Pi 5 product brief); peak FP32 =
        # 4 x 2.4 GHz x 16 FLOP/cycle (two 128-bit NEON FMA pipes) = 153.6 GFLOP/s; derated to
        # 15% like the Pi 4 (23 GFLOP/s).
        DeviceProfile("raspberry-pi-5", 153.6e9, 0.15, "BCM2712 4xA76@2.4GHz product brief"),
    )
}

LINK_PROFILES: dict[str, LinkProfile] = {
    p.name: p
    for p in (
        # Wi-Fi 4, IEEE 802.11n-2009: 1 spatial stream, 40 MHz, MCS 7, short guard interval =
        # 150 Mb/s PHY. Derated to 50% (75 Mb/s) for MAC, ACK and contention overhead (typical
        # TCP goodput is about half the PHY rate). Per-message latency 2 ms (typical WLAN).
        LinkProfile("wifi-4", 150e6 / 8, 0.5, 2.0e-3, "IEEE 802.11n MCS7 1SS 40MHz SGI"),
        # Wi-Fi 5, IEEE 802.11ac-2013: 1 spatial stream (as on the Raspberry Pi 4), 80 MHz,
        # MCS 9, short GI = 433.3 Mb/s PHY. Derated to 50% (217 Mb/s). Latency 1.5 ms.
        LinkProfile("wifi-5", 433.3e6 / 8, 0.5, 1.5e-3, "IEEE 802.11ac MCS9 1SS 80MHz SGI"),
        # Gigabit Ethernet, IEEE 802.3ab 1000BASE-T: 1000 Mb/s. Derated to 94% (941 Mb/s TCP
        # goodput after Ethernet/IP/TCP framing). Latency 0.2 ms (switched LAN).
        LinkProfile("ethernet-1g", 1000e6 / 8, 0.94, 0.2e-3, "IEEE 802.3ab 1000BASE-T"),
        # 3G/HSDPA uplink of a mobile device. Peak = HSDPA_PEAK_MBPS (8 Mbit/s, the largest TCP
        # goodput sample in the Norwegian commute traces, Riiser et al., MMSys 2013); derate 1.0
        # because the replayed traces are goodput already (share = sample / peak). The one-way
        # per-message latency of 50 ms is an assumption (HSPA round trips of about 100 ms), to be
        # replaced by a calibrated value.
        LinkProfile(
            "hsdpa-3g",
            HSDPA_PEAK_MBPS * 1e6 / 8,
            1.0,
            50e-3,
            "Riiser et al. MMSys 2013 traces (peak 8.03 Mbit/s); latency assumed",
        ),
    )
}
