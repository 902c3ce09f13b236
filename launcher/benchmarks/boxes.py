"""Boxes the benchmarks plan for without owning them: cards from the shipped hardware profiles."""

from __future__ import annotations

import dataclasses

from launcher.app import hardware
from launcher.gpu.card import GpuCard


def h100s(count: int) -> list[GpuCard]:
    """``count`` H100 80GB cards as the shipped ``four-h100-nvlink`` profile describes them,
    numbered 0..count-1 with UUIDs of their own."""
    base = hardware.inventory("four-h100-nvlink").cards
    return [
        dataclasses.replace(base[i % len(base)], index=i, uuid=f"GPU-bench-{i}")
        for i in range(count)
    ]
