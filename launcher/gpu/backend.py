"""Where GPU facts come from: the real driver (NVML) or a fixed set, for tests and demos.

``open_backend()`` returns the NVML backend unless ``LLAMA_LAUNCHER_GPU_BACKEND=fixed:FILE``
names a JSON file written by ``FixedBackend.save``: that is how CI, which has no GPU, runs
the CLI and the TUI against known cards. Nothing else is replaced.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import types
import typing
from pathlib import Path
from typing import Any, Protocol

from launcher.errors import LauncherError
from launcher.gpu.card import DriverState, GpuCard, GpuProcess, GpuSample, PairLink, PcieLink

BACKEND_ENV = "LLAMA_LAUNCHER_GPU_BACKEND"


class GpuBackend(Protocol):
    """What the rest of the program may ask about GPUs."""

    def driver(self) -> DriverState:
        """Whether GPUs can be read at all, and why not."""
        ...

    def cards(self) -> list[GpuCard]:
        """The cards, in PCI bus order (empty when the driver is not available)."""
        ...

    def topology(self) -> list[PairLink]:
        """How each pair of cards connects."""
        ...

    def sample(self, index: int) -> GpuSample:
        """A live reading of one card; may block for tens of milliseconds."""
        ...

    def close(self) -> None: ...


class FixedBackend:
    """A backend that answers from fixed data; ``delay_s`` makes ``sample`` block like NVML."""

    def __init__(
        self,
        cards: list[GpuCard],
        topology: list[PairLink] | None = None,
        samples: dict[int, GpuSample] | None = None,
        driver: DriverState | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self._cards = cards
        self._topology = topology or []
        self._samples = samples or {}
        self._driver = driver or DriverState(True, driver_version="fixed", cuda_version="fixed")
        self.delay_s = delay_s

    def driver(self) -> DriverState:
        return self._driver

    def cards(self) -> list[GpuCard]:
        return list(self._cards) if self._driver.available else []

    def topology(self) -> list[PairLink]:
        return list(self._topology)

    def sample(self, index: int) -> GpuSample:
        if self.delay_s:
            time.sleep(self.delay_s)
        now = time.monotonic()
        base = self._samples.get(index)
        if base is None:
            card = next((c for c in self._cards if c.index == index), None)
            if card is None:
                return GpuSample(index, now, error="no such card")
            return GpuSample(
                index,
                now,
                memory_used_bytes=card.memory_used_bytes,
                power_draw_w=card.power_draw_w,
                temperature_c=card.temperature_c,
            )
        return dataclasses.replace(base, time_s=now)

    def close(self) -> None:
        pass

    # -- JSON form, so a subprocess (the CLI in a test) can use the same cards -------------

    def to_json(self) -> dict[str, Any]:
        return {
            "driver": dataclasses.asdict(self._driver),
            "cards": [dataclasses.asdict(c) for c in self._cards],
            "topology": [dataclasses.asdict(p) for p in self._topology],
            "samples": {str(i): dataclasses.asdict(s) for i, s in self._samples.items()},
            "delay_s": self.delay_s,
        }

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: Path) -> FixedBackend:
        try:
            data = json.loads(path.read_text())
            return cls(
                cards=[_build(GpuCard, c) for c in data.get("cards", [])],
                topology=[_build(PairLink, p) for p in data.get("topology", [])],
                samples={int(k): _build(GpuSample, v) for k, v in data.get("samples", {}).items()},
                driver=_build(DriverState, data["driver"]) if "driver" in data else None,
                delay_s=float(data.get("delay_s", 0.0)),
            )
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise LauncherError(
                f"{path} (from ${BACKEND_ENV}) is not a fixed GPU backend file ({err}); fix or "
                "unset it."
            ) from err


_NESTED: dict[str, type] = {"pcie": PcieLink}


def _build(cls: type[Any], data: dict[str, Any]) -> Any:
    """A dataclass from its ``asdict`` form, restoring tuples and nested dataclasses."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name in _NESTED and isinstance(value, dict):
            value = _build(_NESTED[f.name], value)
        elif f.name == "processes":
            value = tuple(_build(GpuProcess, p) for p in value)
        elif isinstance(value, list) and _is_tuple(hints[f.name]):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def _is_tuple(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_tuple(arg) for arg in typing.get_args(hint))
    return origin is tuple or hint is tuple


def open_backend() -> GpuBackend:
    """The backend this process should use: NVML, or the fixed file the env var names."""
    spec = os.environ.get(BACKEND_ENV, "")
    if spec.startswith("fixed:"):
        return FixedBackend.load(Path(spec.removeprefix("fixed:")))
    if spec and spec != "nvml":
        raise LauncherError(f"${BACKEND_ENV} must be 'nvml' or 'fixed:FILE', not '{spec}'.")
    from launcher.gpu.nvml import NvmlBackend  # deferred: fixed backends never load NVML

    return NvmlBackend()
