"""The GPU sampler's cost: 8 cards read at 1 Hz through a backend that blocks like NVML.

Each sample blocks 40 ms (NVML's two 20 ms PCIe counter windows). Reports the process CPU time
per second of wall time (share of one core) and how late each tick's samples arrive after the
tick. Targets (docs/hardware.md): under 3% of one core, every sample within 100 ms of its tick.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from launcher.benchmarks.boxes import h100s
from launcher.gpu.backend import FixedBackend, GpuBackend, open_backend
from launcher.gpu.card import GpuSample
from launcher.gpu.sampler import GpuSampler


@dataclass(frozen=True)
class SamplerCost:
    cards: int
    wall_s: float
    cpu_s: float
    ticks: int
    samples: int
    late_ms_p50: float
    late_ms_max: float

    @property
    def cpu_share_pct(self) -> float:
        return 100 * self.cpu_s / self.wall_s


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(backend: GpuBackend, indices: Sequence[int], seconds: float) -> SamplerCost:
    """Run a 1 Hz sampler over ``indices`` for ``seconds``; its CPU cost and lateness."""
    late_ms: list[float] = []
    counts: list[int] = []

    def on_samples(samples: list[GpuSample], tick: float) -> None:
        counts.append(len(samples))
        late_ms.append((time.monotonic() - tick) * 1000)

    backend.cards()  # NVML's initialisation is not part of the steady state
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    with GpuSampler(backend, indices, on_samples, interval_s=1.0):
        time.sleep(seconds)
    cpu, wall = cpu_seconds() - cpu0, time.monotonic() - wall0
    return SamplerCost(
        len(indices),
        wall,
        cpu,
        len(counts),
        sum(counts),
        statistics.median(late_ms) if late_ms else 0.0,
        max(late_ms, default=0.0),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.benchmarks.gpu_sampler")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--nvml", action="store_true", help="this box's real cards")
    args = parser.parse_args(argv)
    if args.nvml:
        backend = open_backend()
        indices = [c.index for c in backend.cards()]
        label = f"NVML, {len(indices)} real card(s)"
    else:
        backend = FixedBackend(h100s(8), delay_s=0.040)
        indices = list(range(8))
        label = "fixed backend, 8 cards, 40 ms blocking per sample"
    cost = measure(backend, indices, args.seconds)
    backend.close()
    print(
        f"{label}, 1 Hz for {cost.wall_s:.1f} s: {cost.ticks} ticks, {cost.samples} samples "
        f"(expected {cost.ticks * cost.cards})"
    )
    print(
        f"CPU: {cost.cpu_s * 1000:.0f} ms in {cost.wall_s:.1f} s = {cost.cpu_share_pct:.2f}% of "
        "one core"
    )
    print(
        f"tick to samples delivered: p50 {cost.late_ms_p50:.1f} ms, max {cost.late_ms_max:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
