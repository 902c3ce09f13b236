"""Fixed GPU boxes for tests: the cards a CLI or TUI test sees instead of NVML."""

from __future__ import annotations

from pathlib import Path

from launcher.gpu.backend import FixedBackend
from launcher.gpu.card import DriverState, GpuCard, GpuProcess, GpuSample, PairLink, PcieLink

GIB = 1 << 30


def h100(index: int) -> GpuCard:
    return GpuCard(
        index=index,
        name="NVIDIA H100 80GB HBM3",
        memory_total_bytes=80 * GIB,
        uuid=f"GPU-h100-{index}",
        pci_bus_id=f"0000:{0x18 + 0x10 * index:02x}:00.0",
        compute_capability=(9, 0),
        memory_free_bytes=80 * GIB - (512 << 20),
        memory_used_bytes=512 << 20,
        memory_reserved_bytes=480 << 20,
        pcie=PcieLink(5, 5, 5, 16, 16),
        memory_bandwidth_bytes_s=3.352e12,
        memory_bus_width_bits=5120,
        memory_clock_max_mhz=2619,
        nvlink_active_links=18,
        power_draw_w=70.0,
        power_limit_w=700.0,
        temperature_c=34,
        sm_clock_mhz=345,
        memory_clock_mhz=2619,
        throttle_reasons=("idle",),
        display_active=False,
        mig_enabled=False,
    )


def four_h100_backend(delay_s: float = 0.0) -> FixedBackend:
    cards = [h100(i) for i in range(4)]
    links = [PairLink(a, b, "nvlink", True, 18) for a in range(4) for b in range(a + 1, 4)]
    return FixedBackend(cards, links, delay_s=delay_s)


def mixed_desktop_backend() -> FixedBackend:
    """A 3090 driving the desktop, a 2060 SUPER on an x1 riser in a gen3-only slot."""
    rtx3090 = GpuCard(
        index=0,
        name="NVIDIA GeForce RTX 3090",
        memory_total_bytes=24 * GIB,
        uuid="GPU-3090",
        pci_bus_id="0000:01:00.0",
        compute_capability=(8, 6),
        memory_free_bytes=22 * GIB,
        memory_used_bytes=2 * GIB,
        pcie=PcieLink(1, 4, 4, 16, 16),
        memory_bandwidth_bytes_s=936e9,
        processes=(GpuProcess(1234, "Xorg", 1 * GIB), GpuProcess(2345, "firefox", GIB // 2)),
        display_active=True,
        temperature_c=45,
        power_draw_w=30.0,
        power_limit_w=350.0,
    )
    rtx2060 = GpuCard(
        index=1,
        name="NVIDIA GeForce RTX 2060 SUPER",
        memory_total_bytes=8 * GIB,
        uuid="GPU-2060",
        pci_bus_id="0000:07:00.0",
        compute_capability=(7, 5),
        memory_free_bytes=8 * GIB - (200 << 20),
        memory_used_bytes=200 << 20,
        pcie=PcieLink(2, 2, 3, 1, 1),
        memory_bandwidth_bytes_s=448e9,
    )
    samples = {
        0: GpuSample(
            0,
            0.0,
            memory_used_bytes=2 * GIB,
            gpu_busy_pct=90.0,
            memory_busy_pct=70.0,
            pcie_gen_current=1,
        )
    }
    return FixedBackend([rtx3090, rtx2060], [PairLink(0, 1, "host-bridge", False)], samples)


def no_driver_backend() -> FixedBackend:
    return FixedBackend(
        [], driver=DriverState(False, "no NVIDIA driver is installed (libnvidia-ml not found)")
    )


def save(backend: FixedBackend, path: Path) -> str:
    """Write ``backend`` for a subprocess; returns the LLAMA_LAUNCHER_GPU_BACKEND value."""
    backend.save(path)
    return f"fixed:{path}"
