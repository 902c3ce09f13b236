"""What routing by model name costs: a router over 8 model groups against one over 1 group.

Both routers (``route NAME=URL ...``, processes of their own) front the same stub upstream of
``router_cost`` (it answers ``/completion`` at once); N sequential small requests name the
last group. The routing decision for several groups adds p50(8 groups) - p50(1 group).
Target (issue 18): under 0.5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import aiohttp

from launcher.app import route
from launcher.benchmarks.router_cost import _free_port, _stub, _wait_up


@dataclass(frozen=True)
class GroupRouting:
    requests: int
    groups: int
    one_group_p50_ms: float
    many_groups_p50_ms: float

    @property
    def added_ms_p50(self) -> float:
        return self.many_groups_p50_ms - self.one_group_p50_ms


def _router(urls: tuple[str, ...], port: int) -> None:
    route.serve(route.RouteRequest(urls, port=port), lambda line: None)


async def _latency(url: str, model: str, n: int) -> list[float]:
    import time

    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            t0 = time.perf_counter()
            async with s.post(f"{url}/completion", json={"model": model, "prompt": "x"}) as r:
                await r.read()
                assert r.status == 200, await r.text()
            out.append((time.perf_counter() - t0) * 1000)
    return out


def measure(requests: int, groups: int = 8) -> GroupRouting:
    """Start the stub and the two routers, then time ``requests`` through each (alternating
    rounds of 50, so drift on the machine falls on both)."""
    sport, one_port, many_port = _free_port(), _free_port(), _free_port()
    upstream = f"http://127.0.0.1:{sport}"
    one = (f"g0={upstream}",)
    many = tuple(f"g{i}={upstream}" for i in range(groups))
    stub = multiprocessing.Process(target=_stub, args=(sport, 1, 1.0), daemon=True)
    routers = [
        multiprocessing.Process(target=_router, args=(urls, port), daemon=True)
        for urls, port in ((one, one_port), (many, many_port))
    ]
    stub.start()
    try:
        _wait_up(upstream)
        for r in routers:
            r.start()
        one_url, many_url = f"http://127.0.0.1:{one_port}", f"http://127.0.0.1:{many_port}"
        _wait_up(one_url)
        _wait_up(many_url)
        last = f"g{groups - 1}"
        asyncio.run(_latency(one_url, "g0", 50))  # warm-up
        asyncio.run(_latency(many_url, last, 50))
        a: list[float] = []
        b: list[float] = []
        for _ in range(max(requests // 50, 1)):
            a += asyncio.run(_latency(one_url, "g0", 50))
            b += asyncio.run(_latency(many_url, last, 50))
    finally:
        for proc in (*routers, stub):
            if proc.is_alive():
                proc.terminate()
                proc.join(10)
    return GroupRouting(len(a), groups, statistics.median(a), statistics.median(b))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.benchmarks.group_routing")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--groups", type=int, default=8)
    args = parser.parse_args(argv)
    c = measure(args.requests, args.groups)
    print(
        f"{c.requests} sequential requests each: 1 group p50 {c.one_group_p50_ms:.3f} ms, "
        f"{c.groups} groups p50 {c.many_groups_p50_ms:.3f} ms: routing by name adds "
        f"{c.added_ms_p50:.3f} ms at p50"
    )
    print(json.dumps({**asdict(c), "added_ms_p50": c.added_ms_p50}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
