"""A stand-in for the ``pynvml`` module: the NVML boundary, with cards described as dicts.

Only what ``launcher/gpu/nvml.py`` calls is here. Behaviour follows nvidia-ml-py 13: errors are
``NVMLError`` subclasses, except ``NVMLLibraryMismatchError``; bytes or str names; KB/s PCIe.
"""

from __future__ import annotations

import time
import types
from dataclasses import dataclass, field
from typing import Any


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


class NVMLError_DriverNotLoaded(NVMLError):
    pass


class NVMLError_LibRmVersionMismatch(NVMLError):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_GpuIsLost(NVMLError):
    pass


class NVMLLibraryMismatchError(Exception):  # deliberately not an NVMLError, as in pynvml
    pass


@dataclass
class FakeCard:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    bus_id: str = "00000000:18:00.0"
    cc: tuple[int, int] = (9, 0)
    total: int = 85520809984
    free: int = 84494712832
    used: int = 522190848
    reserved: int = 503775232
    gen: tuple[int, int, int] = (5, 5, 5)  # current, max (link), card max
    width: tuple[int, int] = (16, 16)  # current, max
    bus_width: int = 5120
    mem_clock_max: int = 2619
    nvlinks: list[str | None] = field(default_factory=list)  # remote bus id per active link
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    power_mw: int = 70000
    limit_mw: int = 700000
    temp: int = 34
    sm_clock: int = 345
    mem_clock: int = 2619
    throttle: int = 0x1
    display: int = 0
    mig: tuple[int, int] = (0, 0)
    util: tuple[int, int] = (0, 0)
    pcie_kb_s: tuple[int, int] = (1000, 2000)  # rx, tx
    gpm: bool = True
    dram_bw: float = 42.5
    unsupported: set[str] = field(default_factory=set)  # function names that raise NotSupported
    lost: bool = False


@dataclass
class Memory:
    total: int
    free: int
    used: int
    reserved: int | None = None


def make_module(
    cards: list[FakeCard],
    init_error: Exception | None = None,
    driver: str = "580.95.05",
    cuda: int = 13000,
) -> types.ModuleType:
    """A module object that behaves like ``pynvml`` over ``cards``."""
    m = types.ModuleType("pynvml")
    for cls in (
        NVMLError,
        NVMLError_LibraryNotFound,
        NVMLError_DriverNotLoaded,
        NVMLError_LibRmVersionMismatch,
        NVMLError_NotSupported,
        NVMLError_GpuIsLost,
        NVMLLibraryMismatchError,
    ):
        setattr(m, cls.__name__, cls)
    consts = dict(
        nvmlMemory_v2=0x02000028,
        NVML_CLOCK_SM=1,
        NVML_CLOCK_MEM=2,
        NVML_TEMPERATURE_GPU=0,
        NVML_NVLINK_MAX_LINKS=18,
        NVML_FEATURE_ENABLED=1,
        NVML_P2P_STATUS_OK=0,
        NVML_PCIE_UTIL_TX_BYTES=0,
        NVML_PCIE_UTIL_RX_BYTES=1,
        NVML_GPM_METRICS_GET_VERSION=1,
        NVML_GPM_METRIC_DRAM_BW_UTIL=10,
        NVML_SUCCESS=0,
    )
    for k, v in consts.items():
        setattr(m, k, v)
    state = {"init": False, "shutdowns": 0}
    m.state = state  # type: ignore[attr-defined]

    def card(h: Any) -> FakeCard:
        return cards[h]

    def api(name: str) -> Any:
        def deco(fn: Any) -> Any:
            def wrapper(h: Any = None, *args: Any) -> Any:
                if not state["init"]:
                    raise NVMLError("Uninitialized")
                if isinstance(h, int) and h < len(cards):
                    c = card(h)
                    if c.lost:
                        raise NVMLError_GpuIsLost("GPU is lost")
                    if name in c.unsupported:
                        raise NVMLError_NotSupported("Not Supported")
                return fn(h, *args)

            setattr(m, name, wrapper)
            return wrapper

        return deco

    def nvmlInit() -> None:
        if init_error is not None:
            raise init_error
        state["init"] = True

    def nvmlShutdown() -> None:
        state["init"] = False
        state["shutdowns"] += 1

    m.nvmlInit = nvmlInit  # type: ignore[attr-defined]
    m.nvmlShutdown = nvmlShutdown  # type: ignore[attr-defined]
    m.nvmlDeviceGetCount = lambda: len(cards)  # type: ignore[attr-defined]
    m.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    m.nvmlSystemGetDriverVersion = lambda: driver  # type: ignore[attr-defined]
    m.nvmlSystemGetCudaDriverVersion_v2 = lambda: cuda  # type: ignore[attr-defined]
    m.nvmlSystemGetNVMLVersion = lambda: "13." + driver  # type: ignore[attr-defined]

    api("nvmlDeviceGetPciInfo")(lambda h: types.SimpleNamespace(busId=card(h).bus_id.encode()))
    api("nvmlDeviceGetName")(lambda h: card(h).name)
    api("nvmlDeviceGetUUID")(lambda h: card(h).uuid)
    api("nvmlDeviceGetCudaComputeCapability")(lambda h: card(h).cc)

    def memory(h: int, version: int | None = None) -> Memory:
        c = card(h)
        if version is not None and "memory_v2" in c.unsupported:
            raise NVMLError_NotSupported("v2 not supported")
        return Memory(c.total, c.free, c.used, c.reserved if version else None)

    api("nvmlDeviceGetMemoryInfo")(memory)
    api("nvmlDeviceGetMemoryBusWidth")(lambda h: card(h).bus_width)
    api("nvmlDeviceGetMaxClockInfo")(lambda h, clock: card(h).mem_clock_max)
    api("nvmlDeviceGetCurrPcieLinkGeneration")(lambda h: card(h).gen[0])
    api("nvmlDeviceGetMaxPcieLinkGeneration")(lambda h: card(h).gen[1])
    api("nvmlDeviceGetGpuMaxPcieLinkGeneration")(lambda h: card(h).gen[2])
    api("nvmlDeviceGetCurrPcieLinkWidth")(lambda h: card(h).width[0])
    api("nvmlDeviceGetMaxPcieLinkWidth")(lambda h: card(h).width[1])

    def link_state(h: int, link: int) -> int:
        c = card(h)
        if not c.nvlinks:
            raise NVMLError_NotSupported("no NVLink")
        return 1 if link < len(c.nvlinks) and c.nvlinks[link] else 0

    api("nvmlDeviceGetNvLinkState")(link_state)
    api("nvmlDeviceGetNvLinkRemotePciInfo")(
        lambda h, link: types.SimpleNamespace(busId=card(h).nvlinks[link])
    )
    api("nvmlDeviceGetComputeRunningProcesses")(
        lambda h: [types.SimpleNamespace(pid=p, usedGpuMemory=u) for p, u in card(h).processes]
    )
    api("nvmlDeviceGetGraphicsRunningProcesses")(lambda h: [])
    api("nvmlDeviceGetPowerUsage")(lambda h: card(h).power_mw)
    api("nvmlDeviceGetEnforcedPowerLimit")(lambda h: card(h).limit_mw)
    api("nvmlDeviceGetTemperature")(lambda h, sensor: card(h).temp)
    api("nvmlDeviceGetClockInfo")(
        lambda h, clock: card(h).sm_clock if clock == 1 else card(h).mem_clock
    )
    api("nvmlDeviceGetCurrentClocksEventReasons")(lambda h: card(h).throttle)
    api("nvmlDeviceGetDisplayActive")(lambda h: card(h).display)
    api("nvmlDeviceGetMigMode")(lambda h: card(h).mig)
    api("nvmlDeviceGetUtilizationRates")(
        lambda h: types.SimpleNamespace(gpu=card(h).util[0], memory=card(h).util[1])
    )
    api("nvmlDeviceGetPcieThroughput")(
        lambda h, counter: card(h).pcie_kb_s[0] if counter == 1 else card(h).pcie_kb_s[1]
    )

    def common_ancestor(h1: int, h2: int) -> int:
        return 10 if abs(h1 - h2) == 1 else 50

    def p2p(h1: int, h2: int, index: int) -> int:
        if index == 2:  # NVLink
            return (
                0
                if card(h2).bus_id.lower().encode()
                in [(b or "").lower().encode() for b in card(h1).nvlinks]
                else 1
            )
        return 0

    api("nvmlDeviceGetTopologyCommonAncestor")(common_ancestor)
    api("nvmlDeviceGetP2PStatus")(p2p)

    counter = {"n": 0}
    freed: set[int] = set()

    def gpm_support(h: int) -> Any:
        return types.SimpleNamespace(isSupportedDevice=1 if card(h).gpm else 0)

    api("nvmlGpmQueryDeviceSupport")(gpm_support)

    def sample_alloc(h: Any = None) -> Any:
        counter["n"] += 1
        return types.SimpleNamespace(id=counter["n"], card=None)

    m.nvmlGpmSampleAlloc = lambda: sample_alloc()  # type: ignore[attr-defined]

    def sample_get(h: int, s: Any) -> Any:
        time.sleep(0.002 * (s.id % 3))  # readings of one card finish out of order
        s.card = h
        return s

    api("nvmlGpmSampleGet")(sample_get)

    def sample_free(s: Any) -> None:
        # the real call frees a C buffer: a second free of one sample crashes the process
        if s.id in freed:
            raise AssertionError(f"GPM sample {s.id} freed twice")
        time.sleep(0.001)  # widen the window a racing reader would hit
        freed.add(s.id)

    m.nvmlGpmSampleFree = sample_free  # type: ignore[attr-defined]
    m.gpm_freed = freed  # type: ignore[attr-defined]

    class MetricsGet:
        def __init__(self) -> None:
            self.version = 0
            self.numMetrics = 0
            self.sample1: Any = None
            self.sample2: Any = None
            self.metrics = [types.SimpleNamespace(metricId=0, nvmlReturn=0, value=0.0)]

    def metrics_get(q: MetricsGet) -> MetricsGet:
        time.sleep(0.001 * (q.sample2.id % 2))
        if q.sample1.id in freed or q.sample2.id in freed:
            raise AssertionError("GPM metrics read from a freed sample")
        q.metrics[0].value = card(q.sample2.card).dram_bw
        return q

    m.c_nvmlGpmMetricsGet_t = MetricsGet  # type: ignore[attr-defined]
    m.nvmlGpmMetricsGet = metrics_get  # type: ignore[attr-defined]
    return m
