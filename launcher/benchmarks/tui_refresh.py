"""One Dashboard refresh with 8 cards and 8 workers, in event-loop time.

Drives the real app headless (``App.run_test``) with a fixed 8-card box and 8 workers, posts a
tick of GPU samples and a fleet snapshot, and times the handlers plus the repaint that
follows. Target (docs/tui.md): under 30 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from launcher.app.fleet import FleetState, WorkerState
from launcher.benchmarks.boxes import h100s
from launcher.gpu.backend import FixedBackend
from launcher.gpu.card import GpuSample
from launcher.gpu.host import HostInfo
from launcher.tui.app import FleetSnapshot, GpuSamples, LauncherApp
from launcher.tui.services import Services


@dataclass(frozen=True)
class RefreshTimes:
    rounds: int
    total_ms: tuple[float, ...]
    handlers_ms: tuple[float, ...]
    paint_ms: tuple[float, ...]


async def measure(rounds: int) -> RefreshTimes:
    backend = FixedBackend(h100s(8))
    workers = [
        WorkerState(f"big/w{i}", 1000 + i, 8081 + i, f"http://127.0.0.1:{8081 + i}", [i],
                    "healthy", 0, 100.0 + i, 3, 16)
        for i in range(8)
    ]  # fmt: skip
    fleet = FleetState("big", 999, {"url": "http://127.0.0.1:8080", "port": 8080}, workers)
    app = LauncherApp(
        Services(
            gpu_backend=lambda: backend,
            host=lambda: HostInfo("bench", 1 << 40, 1 << 40, 64),
            fleets=lambda: [],
            sample_interval_s=3600,
        )
    )
    total: list[float] = []
    handlers: list[float] = []
    paints: list[float] = []
    async with app.run_test(size=(160, 50)) as pilot:
        app.action_show("dashboard")
        await pilot.pause()
        for r in range(rounds):
            samples = [
                GpuSample(i, time.monotonic(), memory_used_bytes=(40 + r % 5) << 30,
                          gpu_busy_pct=90.0, memory_busy_pct=60.0,
                          dram_bandwidth_pct=55.0 + r % 7, pcie_rx_kib_s=1000.0,
                          pcie_tx_kib_s=500.0, power_draw_w=500.0, temperature_c=60)
                for i in range(8)
            ]  # fmt: skip
            for w in workers:
                w.tok_s = 100.0 + r % 9
            t0 = time.perf_counter()
            app.on_gpu_samples(GpuSamples(samples))
            app.on_fleet_snapshot(FleetSnapshot([fleet]))
            t1 = time.perf_counter()
            app.screen._compositor.render_update(full=True)  # paint the whole screen now
            t2 = time.perf_counter()
            handlers.append((t1 - t0) * 1000)
            paints.append((t2 - t1) * 1000)
            total.append((t2 - t0) * 1000)
            await pilot.pause()
    return RefreshTimes(rounds, tuple(total), tuple(handlers), tuple(paints))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.benchmarks.tui_refresh")
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args(argv)
    t = asyncio.run(measure(args.rounds))
    ordered = sorted(t.total_ms)
    print(
        f"dashboard refresh, 8 cards + 8 workers, {t.rounds} rounds: median "
        f"{statistics.median(t.total_ms):.1f} ms, p95 {ordered[int(0.95 * len(ordered))]:.1f} "
        f"ms, max {ordered[-1]:.1f} ms (target: under 30 ms); handlers median "
        f"{statistics.median(t.handlers_ms):.1f} ms, full repaint median "
        f"{statistics.median(t.paint_ms):.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
