"""What the TUI needs from the rest of the program, as one object a test can replace."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from launcher.app import fleet, server
from launcher.app.fleet import FleetState
from launcher.gpu.backend import GpuBackend, open_backend
from launcher.gpu.host import HostInfo, this_host
from launcher.llamacpp.probe import ServerTarget
from launcher.model.scan import usual_places
from launcher.spec.fleet import FleetSpec


def _quiet(line: str) -> None:
    pass


def launch_fleet(spec: FleetSpec) -> int:
    """Start ``spec`` detached, as planned; 0 when every worker is healthy."""
    return fleet.launch_detached(spec, _quiet)


def stop_fleet(name: str) -> None:
    fleet.stop(name, _quiet)


def group_action(fleet_name: str, group: str, action: str) -> str:
    """Load or unload a group of a running fleet; its state once done."""
    return fleet.group_action(fleet_name, group, action, _quiet)


@dataclass
class Services:
    """Factories for the TUI's sources of data and its actions; tests pass fixed ones."""

    gpu_backend: Callable[[], GpuBackend] = open_backend
    host: Callable[[], HostInfo] = this_host
    fleets: Callable[[], list[FleetState]] = field(default=fleet.fleets)
    server: Callable[[], ServerTarget] = server.local_target
    launch_fleet: Callable[[FleetSpec], int] = launch_fleet
    stop_fleet: Callable[[str], None] = stop_fleet
    restart_worker: Callable[[str], None] = fleet.restart_worker
    group_action: Callable[[str, str, str], str] = group_action
    router_port: Callable[[], int] = fleet.router_port
    models_dir: Path = field(default_factory=lambda: Path.home() / "models")
    model_places: Callable[[], list[tuple[str, Path]]] = usual_places
    sample_interval_s: float = 1.0
