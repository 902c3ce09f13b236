"""What the TUI needs from the rest of the program, as one object a test can replace."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from launcher.gpu.backend import GpuBackend, open_backend
from launcher.gpu.host import HostInfo, this_host
from launcher.run import fleet_state
from launcher.run.fleet_state import FleetState


@dataclass
class Services:
    """Factories for the TUI's sources of data; tests pass fixed ones."""

    gpu_backend: Callable[[], GpuBackend] = open_backend
    host: Callable[[], HostInfo] = this_host
    fleets: Callable[[], list[FleetState]] = field(default=fleet_state.list_fleets)
    sample_interval_s: float = 1.0
