"""The hardware to show or plan for: this box (NVML) or a hardware profile."""

from __future__ import annotations

from pathlib import Path

from launcher.gpu import inventory as inv
from launcher.gpu.backend import open_backend
from launcher.gpu.findings import Finding, host_findings
from launcher.gpu.inventory import Inventory
from launcher.profiles import hardware


def inventory(profile: str | None = None) -> Inventory:
    """A hardware profile's cards when ``profile`` names one, else this box's (NVML)."""
    if profile:
        return hardware.load_hardware_profile(hardware.resolve(profile))
    backend = open_backend()
    try:
        return inv.from_backend(backend)
    finally:
        backend.close()


def load_profile(path: Path) -> Inventory:
    return hardware.load_hardware_profile(path)


def findings(inventory: Inventory) -> list[list[Finding]]:
    """What is worth knowing about each host (slow links, lost cards, ...)."""
    return [host_findings(h) for h in inventory.hosts]


def inventory_json(inventory: Inventory) -> dict[str, object]:
    """DESIGN.md's ``gpus --json`` shape."""
    return inv.to_json(inventory, [[f.to_json() for f in fs] for fs in findings(inventory)])


def save_this_box(name: str, force: bool = False) -> tuple[Path, int]:
    """Save this box as hardware profile ``name``; (its path, how many cards)."""
    box = inventory()
    return hardware.save_profile(box, name, force=force), len(box.cards)


def profiles() -> list[tuple[str, Path, str]]:
    """(name, path, origin) of every hardware profile, the user's first."""
    return hardware.list_profiles()
