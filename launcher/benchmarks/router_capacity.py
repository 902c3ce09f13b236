"""How many requests per second the router passes on one core, and what it adds.

The router (``route`` over the stub upstream of ``router_cost``) is pinned to one core with
``os.sched_setaffinity`` (what ``taskset`` does), the stub and the clients to the others, so
the router's core is the bottleneck. C concurrent clients send short non-streamed completions
for D seconds, directly to the stub and through the router; then the same with streams of
CHUNKS events. Reported: requests per second each way, and the router's added p50 and p99.
Target (issue 19): at least 2,000 short requests per second through the router on one core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import aiohttp

from launcher.app import route
from launcher.benchmarks.router_cost import _free_port, _stub, _wait_up


@dataclass(frozen=True)
class Capacity:
    clients: int
    seconds: float
    direct_rps: float
    via_rps: float
    direct_p50_ms: float
    via_p50_ms: float
    direct_p99_ms: float
    via_p99_ms: float
    stream_direct_rps: float
    stream_via_rps: float
    router_core: int | None


def _pinned_router(upstream: str, port: int, core: int | None) -> None:
    if core is not None:
        os.sched_setaffinity(0, {core})
    route.serve(route.RouteRequest((upstream,), port=port, max_queue=4096), lambda line: None)


def _pinned_stub(port: int, chunks: int, cores: set[int] | None) -> None:
    if cores:
        os.sched_setaffinity(0, cores)
    _stub(port, chunks, 0.0)


async def _load(url: str, clients: int, seconds: float, stream: bool) -> tuple[int, list[float]]:
    """Closed loop: ``clients`` at once for ``seconds``; (requests done, latencies in ms)."""
    done = 0
    times: list[float] = []
    stop = time.monotonic() + seconds
    body = {"prompt": "x", "stream": stream}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as s:

        async def client() -> None:
            nonlocal done
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                async with s.post(f"{url}/completion", json=body) as r:
                    await r.read()
                times.append((time.perf_counter() - t0) * 1000)
                done += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    return done, times


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


def measure(clients: int = 32, seconds: float = 5.0, chunks: int = 20) -> Capacity:
    cores = sorted(os.sched_getaffinity(0))
    router_core = cores[0] if len(cores) > 1 else None
    others = set(cores[1:]) if router_core is not None else None
    if others:
        os.sched_setaffinity(0, others)  # the clients stay off the router's core
    sport, rport = _free_port(), _free_port()
    direct, via = f"http://127.0.0.1:{sport}", f"http://127.0.0.1:{rport}"
    stub = multiprocessing.Process(target=_pinned_stub, args=(sport, chunks, others), daemon=True)
    router = multiprocessing.Process(
        target=_pinned_router, args=(direct, rport, router_core), daemon=True
    )
    stub.start()
    try:
        _wait_up(direct)
        router.start()
        _wait_up(via)
        asyncio.run(_load(via, clients, 1.0, False))  # warm-up
        d, dt = asyncio.run(_load(direct, clients, seconds, False))
        v, vt = asyncio.run(_load(via, clients, seconds, False))
        sd, _ = asyncio.run(_load(direct, clients, seconds, True))
        sv, _ = asyncio.run(_load(via, clients, seconds, True))
    finally:
        for proc in (router, stub):
            if proc.is_alive():
                proc.terminate()
                proc.join(10)
        os.sched_setaffinity(0, set(cores))
    return Capacity(
        clients,
        seconds,
        d / seconds,
        v / seconds,
        statistics.median(dt),
        statistics.median(vt),
        _pct(dt, 99),
        _pct(vt, 99),
        sd / seconds,
        sv / seconds,
        router_core,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.benchmarks.router_capacity")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--chunks", type=int, default=20)
    args = parser.parse_args(argv)
    c = measure(args.clients, args.seconds, args.chunks)
    core = f"core {c.router_core}" if c.router_core is not None else "an unpinned core"
    print(
        f"router on {core}, {c.clients} clients, {c.seconds:g} s each: short requests "
        f"{c.direct_rps:.0f}/s direct, {c.via_rps:.0f}/s through the router "
        f"(p50 {c.direct_p50_ms:.2f} / {c.via_p50_ms:.2f} ms, p99 {c.direct_p99_ms:.2f} / "
        f"{c.via_p99_ms:.2f} ms); streams of {args.chunks} events {c.stream_direct_rps:.0f}/s "
        f"direct, {c.stream_via_rps:.0f}/s through the router"
    )
    print(json.dumps(asdict(c)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
