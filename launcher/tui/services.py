"""What the TUI needs from the rest of the program, as one object a test can replace."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from launcher.errors import LauncherError
from launcher.gpu.backend import GpuBackend, open_backend
from launcher.gpu.host import HostInfo, this_host
from launcher.model.scan import usual_places
from launcher.plan.layouts import ServerTarget
from launcher.run import daemon, fleet_state
from launcher.run.fleet_state import FleetState


def local_server() -> ServerTarget:
    """The llama-server on this box and its split modes, else the pinned version's."""
    from launcher.run.server_binary import find_server, probe, server_target

    try:
        server = find_server()
        return server_target(server, probe(server))
    except LauncherError:
        return ServerTarget()


def _quiet(line: str) -> None:
    pass


def start_fleet(fleet: str, argv: list[str]) -> int:
    """Start a fleet detached (``llama-launcher ARGV``); 0 when every worker is healthy."""
    return daemon.start_detached(fleet, argv, _quiet)


def stop_fleet(fleet: str) -> None:
    daemon.stop_fleet(fleet, _quiet)


@dataclass
class Services:
    """Factories for the TUI's sources of data and its actions; tests pass fixed ones."""

    gpu_backend: Callable[[], GpuBackend] = open_backend
    host: Callable[[], HostInfo] = this_host
    fleets: Callable[[], list[FleetState]] = field(default=fleet_state.list_fleets)
    server: Callable[[], ServerTarget] = local_server
    start_fleet: Callable[[str, list[str]], int] = start_fleet
    stop_fleet: Callable[[str], None] = stop_fleet
    models_dir: Path = field(default_factory=lambda: Path.home() / "models")
    model_places: Callable[[], list[tuple[str, Path]]] = usual_places
    sample_interval_s: float = 1.0
