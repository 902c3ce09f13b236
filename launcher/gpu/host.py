"""Facts about the host computer, through psutil."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class HostInfo:
    """A computer holding cards: this one (from psutil) or one in a hardware profile."""

    name: str
    ram_total_bytes: int
    ram_available_bytes: int
    cpu_cores: int  # logical CPUs
    numa_nodes: int | None = None
    address: str | None = None  # "192.168.1.20:8080" for a box on the LAN
    cpu_flags: tuple[str, ...] = ()  # instruction-set flags (/proc/cpuinfo), for CPU repacking
    cpu_model: str | None = None
    # a second box reached over SSH (hardware profiles): "user@host[:port]", llama-launcher's
    # path there, its LLAMA_LAUNCHER_HOME, and the link to it in Gbit/s
    ssh: str | None = None
    launcher: str | None = None
    home: str | None = None
    link_gbit: float | None = None
    rtt_ms: float | None = None  # the round trip to it, as net-test measured it
    reach: str = "tunnel"  # its groups: through an SSH tunnel, or "lan" at ``address``


def this_host() -> HostInfo:
    """RAM, CPU count and NUMA nodes of the machine this runs on."""
    mem = psutil.virtual_memory()
    return HostInfo(
        name=socket.gethostname(),
        ram_total_bytes=int(mem.total),
        ram_available_bytes=int(mem.available),
        cpu_cores=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        numa_nodes=_numa_nodes(),
        cpu_flags=_cpu_flags(),
        cpu_model=_cpu_model(),
    )


def _cpuinfo_field(*keys: str) -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def _cpu_flags() -> tuple[str, ...]:
    """x86 "flags" or ARM "Features" of the first CPU."""
    return tuple(sorted(set((_cpuinfo_field("flags", "Features") or "").split())))


def _cpu_model() -> str | None:
    return _cpuinfo_field("model name", "Model", "CPU part")


def _numa_nodes() -> int | None:
    nodes = Path("/sys/devices/system/node")
    if not nodes.is_dir():
        return None
    count = sum(1 for p in nodes.glob("node[0-9]*") if p.is_dir())
    return count or None
