"""The hardware a plan is made for: hosts with their cards, from this box or a profile."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from launcher.gpu.backend import GpuBackend
from launcher.gpu.card import DriverState, GpuCard, PairLink
from launcher.gpu.host import HostInfo, this_host


@dataclass(frozen=True)
class Host:
    """One computer and its cards (indices are per host, in PCI bus order)."""

    info: HostInfo
    cards: tuple[GpuCard, ...]
    links: tuple[PairLink, ...] = ()

    @property
    def name(self) -> str:
        return self.info.name


@dataclass(frozen=True)
class Inventory:
    """Every host the planner may use. ``source`` is "nvml" or "profile:NAME"."""

    hosts: tuple[Host, ...]
    source: str
    driver: DriverState = field(default_factory=lambda: DriverState(False, "not read"))

    @property
    def cards(self) -> list[GpuCard]:
        return [c for h in self.hosts for c in h.cards]

    @property
    def local(self) -> Host:
        """The first host: this box, or the profile's main host."""
        return self.hosts[0]


def from_backend(backend: GpuBackend, host: HostInfo | None = None) -> Inventory:
    """This box: its host facts and whatever cards the backend sees."""
    driver = backend.driver()
    cards = tuple(backend.cards()) if driver.available else ()
    links = tuple(backend.topology()) if len(cards) > 1 else ()
    return Inventory((Host(host or this_host(), cards, links),), "nvml", driver)


def to_json(inventory: Inventory, findings_by_host: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """The ``gpus --json`` shape (README): hosts with their cards and findings, and all cards."""

    def card(c: GpuCard, host: Host) -> dict[str, Any]:
        data = asdict(c)
        data["host"] = host.name
        if c.compute_capability is not None:
            data["compute_capability"] = f"{c.compute_capability[0]}.{c.compute_capability[1]}"
        return data

    hosts = []
    every = []
    for host, findings in zip(inventory.hosts, findings_by_host, strict=True):
        cards = [card(c, host) for c in host.cards]
        every += cards
        hosts.append(
            {
                "name": host.name,
                "address": host.info.address,
                "ram_total_bytes": host.info.ram_total_bytes,
                "ram_available_bytes": host.info.ram_available_bytes,
                "cpu_cores": host.info.cpu_cores,
                "numa_nodes": host.info.numa_nodes,
                "gpus": cards,
                "links": [asdict(link) for link in host.links],
                "findings": findings,
            }
        )
    return {
        "source": inventory.source,
        "driver": asdict(inventory.driver),
        "hosts": hosts,
        "gpus": every,
    }
