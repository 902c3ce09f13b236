"""What is known about a GPU, as frozen data. ``None`` means "not supported or not known here".

Units are in the field names: bytes, bytes per second, watts, degrees Celsius, MHz, KiB/s.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

# Usable bandwidth of one PCIe lane per direction, bytes/s, after line encoding
# (8b/10b for gen 1-2, 128b/130b from gen 3; gen 6 FLIT mode taken as gen 5 x2).
PCIE_LANE_BYTES_S: dict[int, float] = {
    1: 0.25e9,
    2: 0.5e9,
    3: 0.985e9,
    4: 1.969e9,
    5: 3.938e9,
    6: 7.563e9,
}


@dataclass(frozen=True)
class PcieLink:
    """A card's PCIe link.

    ``gen_max``/``width_max`` are what card and slot can reach together; ``gen_card_max`` is
    the card's own best. ``gen_max < gen_card_max`` is a slot, riser or BIOS limit; a current
    generation below ``gen_max`` at idle is only power saving.
    """

    gen_current: int | None = None
    gen_max: int | None = None
    gen_card_max: int | None = None
    width_current: int | None = None
    width_max: int | None = None
    width_card_max: int | None = None

    @staticmethod
    def bytes_per_s(gen: int | None, width: int | None) -> float | None:
        if gen is None or width is None or gen not in PCIE_LANE_BYTES_S:
            return None
        return PCIE_LANE_BYTES_S[gen] * width

    @property
    def max_bytes_s(self) -> float | None:
        """Per-direction bandwidth of the link at its best in this slot."""
        return self.bytes_per_s(self.gen_max, self.width_max)

    def describe(self, gen: int | None, width: int | None) -> str:
        return f"gen{gen if gen is not None else '?'} x{width if width is not None else '?'}"


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a card."""

    pid: int
    name: str | None
    used_bytes: int | None


@dataclass(frozen=True)
class GpuCard:
    """One card: identity, memory, links and the slower-changing state."""

    index: int  # in PCI bus order
    name: str
    memory_total_bytes: int
    uuid: str | None = None
    pci_bus_id: str | None = None  # "0000:65:00.0", the form llama.cpp prints
    compute_capability: tuple[int, int] | None = None
    memory_free_bytes: int | None = None
    memory_used_bytes: int | None = None
    memory_reserved_bytes: int | None = None  # held by the driver, not usable
    pcie: PcieLink = field(default_factory=PcieLink)
    memory_bandwidth_bytes_s: float | None = None  # theoretical: 2 x clock x bus width / 8
    memory_bus_width_bits: int | None = None
    memory_clock_max_mhz: int | None = None
    nvlink_peers: tuple[str, ...] = ()  # PCI bus ids of cards at the other end of active links
    nvlink_active_links: int | None = None
    processes: tuple[GpuProcess, ...] = ()
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    temperature_c: int | None = None
    sm_clock_mhz: int | None = None
    memory_clock_mhz: int | None = None
    throttle_reasons: tuple[str, ...] = ()
    display_active: bool | None = None
    mig_enabled: bool | None = None
    lost: bool = False  # fell off the bus; other fields are stale
    reserved: bool = False  # marked so in a hardware profile: never planned on
    catalog_id: str | None = None  # the catalog entry a profile named
    price_usd: float | None = None

    @property
    def usable(self) -> bool:
        """Whether layouts may place work on this card."""
        return not (self.lost or self.reserved or self.mig_enabled)


@dataclass(frozen=True)
class PairLink:
    """How two cards reach each other (from NVML's topology and P2P queries)."""

    a: int
    b: int
    level: str  # nvlink, same-board, pcie-switch, pcie-switches, host-bridge, numa-node, system
    p2p_read: bool | None
    nvlink_links: int = 0


@dataclass(frozen=True)
class GpuSample:
    """A live reading of one card, taken at ``time_s`` (monotonic seconds)."""

    index: int
    time_s: float
    memory_used_bytes: int | None = None
    gpu_busy_pct: float | None = None
    memory_busy_pct: float | None = None  # share of time the memory controller was busy
    dram_bandwidth_pct: float | None = None  # GPM DRAM bandwidth utilisation (Hopper and later)
    pcie_rx_kib_s: float | None = None
    pcie_tx_kib_s: float | None = None
    pcie_gen_current: int | None = None
    power_draw_w: float | None = None
    temperature_c: int | None = None
    error: str | None = None  # set when the card could not be read (e.g. lost)

    @property
    def bandwidth_pct(self) -> float | None:
        """Memory bandwidth use: GPM DRAM bandwidth when known, else memory busy %."""
        return (
            self.dram_bandwidth_pct
            if self.dram_bandwidth_pct is not None
            else (self.memory_busy_pct)
        )

    @property
    def bandwidth_label(self) -> str:
        return "DRAM bw" if self.dram_bandwidth_pct is not None else "mem busy"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GpuSample:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class DriverState:
    """Whether NVML answered, and the driver's versions when it did."""

    available: bool
    reason: str | None = None  # one sentence when not available
    driver_version: str | None = None
    cuda_version: str | None = None
    nvml_version: str | None = None
