"""Fleets of CPU llama-servers on a tiny synthetic model:

1. start: four workers become healthy in about the time of the slowest one, not the sum
   (``up --layout cpu:4`` against ``cpu:1``; times from the supervisor's own log).
2. polling: what the supervisor's pollers cost (``/health``, ``/slots``, ``/metrics`` of 8
   workers every ``POLL_INTERVAL_S``), CPU as a share of one core, measured in this process.
Needs llama-server (``$LLAMA_SERVER`` or the cache). Runs in a home of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from launcher import paths
from launcher.app import fleet, models
from launcher.llamacpp.poll import POLL_INTERVAL_S, WorkerPoller


@dataclass(frozen=True)
class FleetTimes:
    one_worker_s: float
    each_of_four_s: tuple[float, ...]
    four_workers_s: float
    poll_workers: int
    poll_wall_s: float
    poll_cpu_s: float
    polls: int

    @property
    def poll_cpu_pct(self) -> float:
        return 100 * self.poll_cpu_s / self.poll_wall_s


def _up(model: Path, workers: int, port: int) -> tuple[float, list[float], list[str]]:
    """Start ``cpu:workers`` detached; (fleet up in s, each worker healthy at s, worker URLs)."""
    name = f"b{workers}"
    request = fleet.UpRequest(
        str(model), layout=f"cpu:{workers}", users=(workers,), ctx=(512,), port=port, name=name
    )
    prepared = fleet.prepare_up(request)
    if fleet.start(prepared.spec, detach=True, say=lambda line: None) != 0:
        raise RuntimeError(f"fleet {name} did not start; see its supervisor.log")
    text = (paths.state_dir() / "logs" / name / "supervisor.log").read_text()
    each = [float(x) for x in re.findall(r"healthy on \S+ \(([\d.]+) s\)", text)]
    total = re.search(r"is up in ([\d.]+) s", text)
    assert total is not None
    running = next(f for f in fleet.fleets() if f.name == name)
    return float(total.group(1)), each, [w.url for w in running.workers]


async def _poll(urls: list[str], seconds: float) -> tuple[float, float, int]:
    pollers = [WorkerPoller(u) for u in urls]
    polls = 0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as session:
        tick = t0
        while time.monotonic() - t0 < seconds:
            snaps = await asyncio.gather(*(p.poll(session) for p in pollers))
            polls += sum(1 for s in snaps if s.healthy)
            tick += POLL_INTERVAL_S
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime - cpu0, time.monotonic() - t0, polls


@contextlib.contextmanager
def private_home(prefix: str) -> Iterator[Path]:
    """A fresh ``$LLAMA_LAUNCHER_HOME`` for a benchmark: every fleet started in it is stopped
    and the variable is put back, whatever happens."""
    with tempfile.TemporaryDirectory(prefix=prefix) as home:
        before = os.environ.get(paths.HOME_ENV)
        os.environ[paths.HOME_ENV] = home
        try:
            yield Path(home)
        finally:
            for f in fleet.fleets():
                fleet.stop(f.name, lambda line: None)
            if before is None:
                os.environ.pop(paths.HOME_ENV, None)
            else:
                os.environ[paths.HOME_ENV] = before


def measure(seconds: float, base_port: int = 18500, poll_workers: int = 8) -> FleetTimes:
    """Both measurements in a fresh home (``$LLAMA_LAUNCHER_HOME``); every fleet is stopped."""
    with private_home("bench-fleet-") as home:
        model = models.make_model(home / "tiny.gguf", "llama", "tiny")[0]
        one, _, _ = _up(model, 1, base_port)
        fleet.stop("b1", lambda line: None)
        four, each, _ = _up(model, 4, base_port + 10)
        fleet.stop("b4", lambda line: None)
        _, _, urls = _up(model, poll_workers, base_port + 20)
        cpu, wall, polls = asyncio.run(_poll(urls, seconds))
    return FleetTimes(one, tuple(each), four, len(urls), wall, cpu, polls)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.benchmarks.fleet")
    parser.add_argument("--seconds", type=float, default=30.0, help="of polling (30)")
    parser.add_argument("--port", type=int, default=18500, help="first router port (18500)")
    args = parser.parse_args(argv)
    t = measure(args.seconds, args.port)
    print(
        f"start: 1 worker healthy in {t.one_worker_s:.2f} s; 4 workers: each at "
        f"{', '.join(f'{x:.2f}' for x in t.each_of_four_s)} s, fleet up in "
        f"{t.four_workers_s:.2f} s (the sum of the four would be {sum(t.each_of_four_s):.2f} s)"
    )
    print(
        f"polling: {t.poll_workers} workers every {POLL_INTERVAL_S:g} s for {t.poll_wall_s:.1f} s, "
        f"{t.polls} polls: CPU {t.poll_cpu_s * 1000:.0f} ms = {t.poll_cpu_pct:.2f}% of one core"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
