"""The only module that talks to NVML (``pynvml`` from nvidia-ml-py).

Every NVML call goes through ``_opt``, which turns "not supported", "no permission" and
missing functions into ``None``: callers get frozen dataclasses, never ``pynvml`` types or
exceptions. A missing driver or library, a library/driver version mismatch (which pynvml
raises as ``NVMLLibraryMismatchError``, not an ``NVMLError``) and MIG mode become states; a
card that falls off the bus is marked ``lost``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psutil

from launcher.gpu.card import DriverState, GpuCard, GpuProcess, GpuSample, PairLink, PcieLink

T = TypeVar("T")


class NvmlUnavailable(Exception):
    """NVML cannot be used on this machine; ``str(err)`` says why in one sentence."""


@dataclass(frozen=True)
class CardIdentity:
    """What a build needs to know of a card: its name and CUDA compute capability."""

    index: int
    name: str
    compute_capability: tuple[int, int]


def normalize_bus_id(bus_id: str) -> str:
    """NVML's ``00000000:65:00.0`` as llama.cpp prints it: ``0000:65:00.0`` (lower case)."""
    text = bus_id.strip().lower()
    parts = text.split(":")
    if len(parts) == 3:
        domain = int(parts[0], 16) if parts[0] else 0
        return f"{domain:04x}:{parts[1]}:{parts[2]}"
    if len(parts) == 2:  # no domain given
        return f"0000:{parts[0]}:{parts[1]}"
    return text


_THROTTLE_NAMES = {
    0x1: "idle",
    0x2: "applications clocks",
    0x4: "software power cap",
    0x8: "hardware slowdown",
    0x10: "sync boost",
    0x20: "software thermal",
    0x40: "hardware thermal",
    0x80: "power brake",
    0x100: "display clock",
}

# nvmlGpuP2PCapsIndex_t values (pynvml's own NVML_P2P_CAPS_INDEX_READ is a tuple by mistake)
_P2P_READ = 0
_P2P_NVLINK = 2

_TOPOLOGY_LEVELS = {
    0: "same-board",
    10: "pcie-switch",
    20: "pcie-switches",
    30: "host-bridge",
    40: "numa-node",
    50: "system",
}


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


GPM_ENV = "LLAMA_LAUNCHER_GPM"


class NvmlBackend:
    """``GpuBackend`` over the real driver. Thread-safe; cheap to keep open.

    DRAM bandwidth through GPM (Hopper and later) is read only when ``gpm`` is true (default:
    ``LLAMA_LAUNCHER_GPM=1``): on a 4x H100 box with driver 580.159.04, nvidia-ml-py 13.610,
    ``nvmlGpmSampleGet`` crashed the process (SIGSEGV) in about one of three short benches, with
    every GPM call already serialised. Without it the bandwidth column shows NVML's
    memory-busy percentage, labelled as such.
    """

    def __init__(self, gpm: bool | None = None) -> None:
        self._gpm_enabled = (
            os.environ.get(GPM_ENV, "") in ("1", "on", "yes") if gpm is None else gpm
        )
        self._lock = threading.Lock()
        self._nvml: Any = None
        self._state: DriverState | None = None
        self._handles: list[Any] = []
        self._topology: list[PairLink] | None = None
        self._gpm_supported: dict[int, bool] = {}
        self._gpm_prev: dict[int, Any] = {}
        # GPM samples are C buffers freed here: two readers of one card at once (a slow tick
        # overlapping the next, or a sampler stopping as the next starts) would free one twice.
        self._gpm_lock = threading.Lock()

    # -- set-up ---------------------------------------------------------------------------

    def driver(self) -> DriverState:
        """Initialise NVML once; the state says why not when it cannot be used."""
        with self._lock:
            if self._state is None:
                self._state = self._init()
            return self._state

    def _init(self) -> DriverState:
        try:
            import pynvml  # deferred: a box without the library still plans and runs CPU fleets
        except ImportError:
            return DriverState(False, "nvidia-ml-py is not installed; reinstall llama-launcher")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound:
            return DriverState(False, "no NVIDIA driver is installed (libnvidia-ml not found)")
        except pynvml.NVMLError_DriverNotLoaded:
            return DriverState(False, "the NVIDIA driver is installed but not loaded")
        except pynvml.NVMLError_LibRmVersionMismatch:
            return DriverState(
                False,
                "the NVIDIA driver and its library differ in version; reboot to finish "
                "the driver update",
            )
        except pynvml.NVMLError as err:
            return DriverState(False, f"NVML could not start ({err})")
        except pynvml.NVMLLibraryMismatchError as err:
            return DriverState(
                False,
                f"nvidia-ml-py does not match the driver's NVML ({err}); update the driver "
                "or nvidia-ml-py",
            )
        except OSError as err:
            return DriverState(False, f"the NVML library could not be loaded ({err})")
        self._nvml = pynvml
        handles = []
        for i in range(self._opt(pynvml.nvmlDeviceGetCount) or 0):
            handle = self._opt(pynvml.nvmlDeviceGetHandleByIndex, i)
            if handle is None:
                continue
            bus = self._opt(lambda h=handle: _text(pynvml.nvmlDeviceGetPciInfo(h).busId))
            handles.append((normalize_bus_id(bus) if bus else f"~{i:04d}", handle))
        # NVML's own order is usually PCI order; sort to be sure it matches CUDA_DEVICE_ORDER
        self._handles = [h for _, h in sorted(handles, key=lambda p: p[0])]
        cuda = self._opt(pynvml.nvmlSystemGetCudaDriverVersion_v2)
        return DriverState(
            True,
            driver_version=self._opt(lambda: _text(pynvml.nvmlSystemGetDriverVersion())),
            cuda_version=f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None,
            nvml_version=self._opt(lambda: _text(pynvml.nvmlSystemGetNVMLVersion())),
        )

    def close(self) -> None:
        with self._lock:
            if self._nvml is not None:
                with self._gpm_lock:
                    for sample in self._gpm_prev.values():
                        self._opt(self._nvml.nvmlGpmSampleFree, sample)
                    self._gpm_prev.clear()
                with contextlib.suppress(Exception):
                    self._nvml.nvmlShutdown()
            self._nvml = None
            self._state = None

    def _opt(self, fn: Callable[..., T], *args: Any) -> T | None:
        """``fn(*args)``, or None when the card or driver does not support it."""
        pynvml = self._nvml
        try:
            return fn(*args)
        except Exception as err:
            if pynvml is not None and isinstance(err, pynvml.NVMLError_GpuIsLost):
                raise
            if pynvml is None or isinstance(
                err, (pynvml.NVMLError, AttributeError, pynvml.NVMLLibraryMismatchError)
            ):
                return None
            raise

    # -- cards ----------------------------------------------------------------------------

    def cards(self) -> list[GpuCard]:
        """Every card with its static facts and slow-changing state, in PCI bus order."""
        if not self.driver().available:
            return []
        out = []
        for index, handle in enumerate(self._handles):
            try:
                out.append(self._card(index, handle))
            except self._nvml.NVMLError_GpuIsLost:
                out.append(GpuCard(index, "GPU lost from the bus", 0, lost=True))
        return out

    def _card(self, index: int, h: Any) -> GpuCard:
        n = self._nvml
        opt = self._opt
        mem = opt(n.nvmlDeviceGetMemoryInfo, h, n.nvmlMemory_v2) or opt(
            n.nvmlDeviceGetMemoryInfo, h
        )
        reserved = getattr(mem, "reserved", None) if mem is not None else None
        cc = opt(n.nvmlDeviceGetCudaComputeCapability, h)
        bus_width = opt(n.nvmlDeviceGetMemoryBusWidth, h)
        mem_clock = opt(n.nvmlDeviceGetMaxClockInfo, h, n.NVML_CLOCK_MEM)
        bandwidth = 2 * mem_clock * 1e6 * bus_width / 8 if bus_width and mem_clock else None
        power = opt(n.nvmlDeviceGetPowerUsage, h)
        limit = opt(n.nvmlDeviceGetEnforcedPowerLimit, h)
        reasons = opt(n.nvmlDeviceGetCurrentClocksEventReasons, h)
        if reasons is None:
            reasons = opt(n.nvmlDeviceGetCurrentClocksThrottleReasons, h)
        mig = opt(n.nvmlDeviceGetMigMode, h)
        peers, active = self._nvlinks(h)
        pcie = PcieLink(
            gen_current=opt(n.nvmlDeviceGetCurrPcieLinkGeneration, h),
            gen_max=opt(n.nvmlDeviceGetMaxPcieLinkGeneration, h),
            gen_card_max=opt(n.nvmlDeviceGetGpuMaxPcieLinkGeneration, h),
            width_current=opt(n.nvmlDeviceGetCurrPcieLinkWidth, h),
            width_max=opt(n.nvmlDeviceGetMaxPcieLinkWidth, h),
        )
        return GpuCard(
            index=index,
            name=_text(opt(n.nvmlDeviceGetName, h) or "unknown NVIDIA GPU"),
            memory_total_bytes=int(mem.total) if mem is not None else 0,
            uuid=opt(lambda: _text(n.nvmlDeviceGetUUID(h))),
            pci_bus_id=opt(lambda: normalize_bus_id(_text(n.nvmlDeviceGetPciInfo(h).busId))),
            compute_capability=(int(cc[0]), int(cc[1])) if cc else None,
            memory_free_bytes=int(mem.free) if mem is not None else None,
            memory_used_bytes=int(mem.used) if mem is not None else None,
            memory_reserved_bytes=int(reserved) if reserved is not None else None,
            pcie=pcie,
            memory_bandwidth_bytes_s=bandwidth,
            memory_bus_width_bits=bus_width,
            memory_clock_max_mhz=mem_clock,
            nvlink_peers=peers,
            nvlink_active_links=active,
            processes=self._processes(h),
            power_draw_w=power / 1000 if power is not None else None,
            power_limit_w=limit / 1000 if limit is not None else None,
            temperature_c=opt(n.nvmlDeviceGetTemperature, h, n.NVML_TEMPERATURE_GPU),
            sm_clock_mhz=opt(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_SM),
            memory_clock_mhz=opt(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_MEM),
            throttle_reasons=tuple(
                name for bit, name in _THROTTLE_NAMES.items() if reasons and reasons & bit
            ),
            display_active=bool(d)
            if (d := opt(n.nvmlDeviceGetDisplayActive, h)) is not None
            else None,
            mig_enabled=bool(mig[0]) if mig else None,
        )

    def _nvlinks(self, h: Any) -> tuple[tuple[str, ...], int | None]:
        n = self._nvml
        peers: list[str] = []
        active = 0
        supported = False
        for link in range(n.NVML_NVLINK_MAX_LINKS):
            state = self._opt(n.nvmlDeviceGetNvLinkState, h, link)
            if state is None:
                continue
            supported = True
            if state != n.NVML_FEATURE_ENABLED:
                continue
            active += 1
            remote = self._opt(n.nvmlDeviceGetNvLinkRemotePciInfo, h, link)
            if remote is not None:
                bus = normalize_bus_id(_text(remote.busId))
                # behind NVSwitch (or in a VM) the far end reads as ffffffff:ff:ff.0: no peer
                if not bus.startswith("ffff") and bus not in peers:
                    peers.append(bus)
        return tuple(sorted(peers)), (active if supported else None)

    def _processes(self, h: Any) -> tuple[GpuProcess, ...]:
        n = self._nvml
        seen: dict[int, GpuProcess] = {}
        for fn_name in (
            "nvmlDeviceGetComputeRunningProcesses",
            "nvmlDeviceGetGraphicsRunningProcesses",
        ):
            fn = getattr(n, fn_name, None)
            for p in (self._opt(fn, h) if fn else None) or []:
                used = getattr(p, "usedGpuMemory", None)
                seen[int(p.pid)] = GpuProcess(
                    int(p.pid), _process_name(int(p.pid)), int(used) if used is not None else None
                )
        return tuple(seen[pid] for pid in sorted(seen))

    def topology(self) -> list[PairLink]:
        """How every pair of cards connects. Slow (NVML walks the PCI tree): cached."""
        if not self.driver().available:
            return []
        with self._lock:
            if self._topology is not None:
                return self._topology
        n = self._nvml
        cards = self.cards()
        bus_to_index = {c.pci_bus_id: c.index for c in cards if c.pci_bus_id}
        links = []
        for i, hi in enumerate(self._handles):
            for j in range(i + 1, len(self._handles)):
                hj = self._handles[j]
                nv = 0
                if any(bus_to_index.get(peer) == j for peer in cards[i].nvlink_peers):
                    nv = self._count_links(hi, cards[j].pci_bus_id)  # direct links
                elif (
                    self._opt(n.nvmlDeviceGetP2PStatus, hi, hj, _P2P_NVLINK) == n.NVML_P2P_STATUS_OK
                ):
                    # through NVSwitch: every active link of the card reaches the peer
                    nv = cards[i].nvlink_active_links or 1
                level = self._opt(n.nvmlDeviceGetTopologyCommonAncestor, hi, hj)
                p2p = self._opt(n.nvmlDeviceGetP2PStatus, hi, hj, _P2P_READ)
                links.append(
                    PairLink(
                        i,
                        j,
                        "nvlink"
                        if nv
                        else _TOPOLOGY_LEVELS.get(level, "unknown")
                        if level is not None
                        else "unknown",
                        None if p2p is None else p2p == n.NVML_P2P_STATUS_OK,
                        nv,
                    )
                )
        with self._lock:
            self._topology = links
        return links

    def _count_links(self, h: Any, peer_bus: str | None) -> int:
        n = self._nvml
        count = 0
        for link in range(n.NVML_NVLINK_MAX_LINKS):
            if self._opt(n.nvmlDeviceGetNvLinkState, h, link) != n.NVML_FEATURE_ENABLED:
                continue
            remote = self._opt(n.nvmlDeviceGetNvLinkRemotePciInfo, h, link)
            if remote is not None and normalize_bus_id(_text(remote.busId)) == peer_bus:
                count += 1
        return count

    # -- live samples ---------------------------------------------------------------------

    def sample(self, index: int) -> GpuSample:
        """A live reading of card ``index``. Blocks about 40 ms (two PCIe counter windows)."""
        now = time.monotonic()
        if not self.driver().available or index >= len(self._handles):
            return GpuSample(index, now, error="no such card")
        n = self._nvml
        h = self._handles[index]
        try:
            mem = self._opt(n.nvmlDeviceGetMemoryInfo, h, n.nvmlMemory_v2) or self._opt(
                n.nvmlDeviceGetMemoryInfo, h
            )
            util = self._opt(n.nvmlDeviceGetUtilizationRates, h)
            rx = self._opt(n.nvmlDeviceGetPcieThroughput, h, n.NVML_PCIE_UTIL_RX_BYTES)
            tx = self._opt(n.nvmlDeviceGetPcieThroughput, h, n.NVML_PCIE_UTIL_TX_BYTES)
            power = self._opt(n.nvmlDeviceGetPowerUsage, h)
            return GpuSample(
                index,
                now,
                memory_used_bytes=int(mem.used) if mem is not None else None,
                gpu_busy_pct=float(util.gpu) if util is not None else None,
                memory_busy_pct=float(util.memory) if util is not None else None,
                dram_bandwidth_pct=self._dram_bandwidth(index, h),
                pcie_rx_kib_s=float(rx) if rx is not None else None,  # NVML reports KB/s
                pcie_tx_kib_s=float(tx) if tx is not None else None,
                pcie_gen_current=self._opt(n.nvmlDeviceGetCurrPcieLinkGeneration, h),
                power_draw_w=power / 1000 if power is not None else None,
                temperature_c=self._opt(n.nvmlDeviceGetTemperature, h, n.NVML_TEMPERATURE_GPU),
            )
        except n.NVMLError_GpuIsLost:
            return GpuSample(index, now, error="the GPU fell off the bus (lost)")

    def _dram_bandwidth(self, index: int, h: Any) -> float | None:
        """DRAM bandwidth use in % between this call and the previous one (GPM, Hopper+)."""
        with self._gpm_lock:
            return self._dram_bandwidth_locked(index, h)

    def _dram_bandwidth_locked(self, index: int, h: Any) -> float | None:
        n = self._nvml
        if not self._gpm_enabled:
            return None
        if index not in self._gpm_supported:
            support = self._opt(n.nvmlGpmQueryDeviceSupport, h)
            self._gpm_supported[index] = bool(support and support.isSupportedDevice)
        if not self._gpm_supported[index]:
            return None
        current = self._opt(n.nvmlGpmSampleAlloc)
        if current is None or self._opt(n.nvmlGpmSampleGet, h, current) is None:
            self._gpm_supported[index] = False
            return None
        previous = self._gpm_prev.get(index)
        self._gpm_prev[index] = current
        if previous is None:
            return None
        query = n.c_nvmlGpmMetricsGet_t()
        query.version = n.NVML_GPM_METRICS_GET_VERSION
        query.numMetrics = 1
        query.sample1 = previous
        query.sample2 = current
        query.metrics[0].metricId = n.NVML_GPM_METRIC_DRAM_BW_UTIL
        result = self._opt(n.nvmlGpmMetricsGet, query)
        self._opt(n.nvmlGpmSampleFree, previous)
        if result is None or result.metrics[0].nvmlReturn != n.NVML_SUCCESS:
            return None
        return float(result.metrics[0].value)


def _process_name(pid: int) -> str | None:
    try:
        return str(psutil.Process(pid).name())
    except Exception:  # gone, or another user's process
        return None


def card_identities() -> list[CardIdentity]:
    """The NVIDIA cards the driver sees, in PCI bus order (for choosing a build).

    Raises ``NvmlUnavailable`` when there is no usable driver.
    """
    backend = NvmlBackend()
    try:
        state = backend.driver()
        if not state.available:
            raise NvmlUnavailable(state.reason or "NVML is not available")
        return [
            CardIdentity(c.index, c.name, c.compute_capability)
            for c in backend.cards()
            if c.compute_capability is not None
        ]
    finally:
        backend.close()
