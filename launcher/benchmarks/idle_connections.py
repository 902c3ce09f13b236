"""Idle connections against the router while it serves steady load (issue 19's fault 1).

The router (``route`` over ``router_cost``'s stub, in a process of its own) serves a steady
closed loop of short requests; N idle TCP connections are opened to it, held for a few seconds
(less than its 15 s idle timeout), then closed. Reported: requests per second before and
while the connections are held, failed requests, how many connections the router took and
how many it turned away (past its bound), and the router's memory (RSS) at the peak.
Target (issue 19, measured, not gated): 10,000 idle connections, service unaffected, router
memory under 200 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import resource
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import aiohttp
import psutil

from launcher.app import route
from launcher.benchmarks.router_cost import _free_port, _stub, _wait_up


@dataclass(frozen=True)
class IdleConnections:
    idle: int  # connections opened
    refused: int  # answered 503 at once (past the router's bound) or not accepted
    rps_before: float
    rps_during: float
    errors_during: int
    router_rss_mb: float


def _router(upstream: str, port: int) -> None:
    route.serve(route.RouteRequest((upstream,), port=port), lambda line: None)


async def _steady(url: str, seconds: float, clients: int = 4) -> tuple[int, int]:
    ok = errors = 0
    stop = time.monotonic() + seconds
    async with aiohttp.ClientSession() as s:

        async def client() -> None:
            nonlocal ok, errors
            while time.monotonic() < stop:
                try:
                    async with s.post(f"{url}/completion", json={"prompt": "x"}) as r:
                        await r.read()
                        ok += r.status == 200
                        errors += r.status != 200
                except aiohttp.ClientError:
                    errors += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    return ok, errors


def measure(idle: int = 10_000, seconds: float = 4.0) -> IdleConnections:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < idle + 256:
        raise SystemExit(f"this shell allows {hard} open files; {idle} connections need more")
    sport, rport = _free_port(), _free_port()
    direct, via = f"http://127.0.0.1:{sport}", f"http://127.0.0.1:{rport}"
    stub = multiprocessing.Process(target=_stub, args=(sport, 1, 0.0), daemon=True)
    router = multiprocessing.Process(target=_router, args=(direct, rport), daemon=True)
    stub.start()
    held: list[socket.socket] = []
    try:
        _wait_up(direct)
        router.start()
        _wait_up(via)
        rss = psutil.Process(router.pid)
        before, _ = asyncio.run(_steady(via, seconds))
        refused = 0
        for _ in range(idle):
            try:
                held.append(socket.create_connection(("127.0.0.1", rport), timeout=5))
            except OSError:
                refused += 1
        during, errors = asyncio.run(_steady(via, seconds))
        peak = rss.memory_info().rss / 2**20
        for s in held:  # a 503 waiting to be read: turned away at once
            s.setblocking(False)
            with contextlib.suppress(OSError):
                refused += s.recv(12).startswith(b"HTTP/1.1 503")
    finally:
        for s in held:
            s.close()
        for proc in (router, stub):
            if proc.is_alive():
                proc.terminate()
                proc.join(10)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return IdleConnections(idle, refused, before / seconds, during / seconds, errors, peak)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.benchmarks.idle_connections")
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    c = measure(args.idle, args.seconds)
    print(
        f"{c.idle} idle connections ({c.refused} turned away): {c.rps_before:.0f} requests/s "
        f"before, {c.rps_during:.0f}/s while held, {c.errors_during} failed; router RSS "
        f"{c.router_rss_mb:.0f} MB"
    )
    print(json.dumps(asdict(c)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
