"""The router's own cost, on loopback, against a stub upstream.

The stub (a process of its own) answers ``/completion`` at once, or streams SSE chunks at a
fixed rate, so what differs between "direct" and "via router" is the router alone.
1. latency: N sequential small requests, direct and through ``route``; the router adds
   p50(via) - p50(direct). Target (docs/router.md): under 1 ms.
2. streams: 64 concurrent streams of CHUNKS chunks every INTERVAL ms; chunks per second
   received through the router against direct. Target: at least 97%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import statistics
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import aiohttp
from aiohttp import web

from launcher.app import route


@dataclass(frozen=True)
class RouterCost:
    requests: int
    direct_p50_ms: float
    via_p50_ms: float
    streams: int
    chunks: int
    direct_chunks_s: float
    via_chunks_s: float
    via_chunks: int  # received through the router, of streams x (chunks + 1)

    @property
    def added_ms_p50(self) -> float:
        return self.via_p50_ms - self.direct_p50_ms

    @property
    def stream_ratio(self) -> float:
        return self.via_chunks_s / self.direct_chunks_s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stub(port: int, chunks: int, interval_ms: float) -> None:
    """The upstream: /health, /slots (64 free slots), /completion (streamed or not)."""

    async def completion(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.json_response({"content": "ok", "tokens_predicted": 1, "stop": True})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        start = time.monotonic()
        for i in range(chunks):
            await resp.write(b'data: {"content":"x","stop":false}\n\n')
            delay = start + (i + 1) * interval_ms / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await resp.write(b'data: {"content":"","stop":true,"tokens_predicted":%d}\n\n' % chunks)
        return resp

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def slots(request: web.Request) -> web.Response:
        return web.json_response([{"id": i, "is_processing": False} for i in range(64)])

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/slots", slots)
    app.router.add_post("/completion", completion)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _router(upstream: str, port: int) -> None:
    route.serve(route.RouteRequest((upstream,), port=port), lambda line: None)


async def _latency(url: str, n: int) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            t0 = time.perf_counter()
            async with s.post(f"{url}/completion", json={"prompt": "x"}) as r:
                await r.read()
            out.append((time.perf_counter() - t0) * 1000)
    return out


async def _streams(url: str, n: int) -> tuple[int, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def one() -> int:
            count = 0
            async with s.post(f"{url}/completion", json={"prompt": "x", "stream": True}) as r:
                async for line in r.content:
                    if line.startswith(b"data:"):
                        count += 1
            return count

        t0 = time.monotonic()
        counts = await asyncio.gather(*(one() for _ in range(n)))
        return sum(counts), time.monotonic() - t0


def _wait_up(url: str) -> None:
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def measure(requests: int, chunks: int, interval_ms: float, streams: int = 64) -> RouterCost:
    """Start the stub and a router over it (processes of their own), measure both ways."""
    sport, rport = _free_port(), _free_port()
    direct, via = f"http://127.0.0.1:{sport}", f"http://127.0.0.1:{rport}"
    stub = multiprocessing.Process(target=_stub, args=(sport, chunks, interval_ms), daemon=True)
    router = multiprocessing.Process(target=_router, args=(direct, rport), daemon=True)
    stub.start()
    try:
        _wait_up(direct)
        router.start()
        _wait_up(via)
        asyncio.run(_latency(direct, 50))  # warm-up
        asyncio.run(_latency(via, 50))
        d = asyncio.run(_latency(direct, requests))
        v = asyncio.run(_latency(via, requests))
        dc, dt = asyncio.run(_streams(direct, streams))
        vc, vt = asyncio.run(_streams(via, streams))
    finally:
        for proc in (router, stub):
            if proc.is_alive():
                proc.terminate()
                proc.join(10)
    return RouterCost(
        requests,
        statistics.median(d),
        statistics.median(v),
        streams,
        chunks,
        dc / dt,
        vc / vt,
        vc,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.benchmarks.router_cost")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    c = measure(args.requests, args.chunks, args.interval_ms)
    print(
        f"latency, {c.requests} sequential requests: direct p50 {c.direct_p50_ms:.3f} ms, via "
        f"router p50 {c.via_p50_ms:.3f} ms: the router adds {c.added_ms_p50:.3f} ms at p50"
    )
    print(
        f"{c.streams} streams x {c.chunks} chunks every {args.interval_ms:g} ms: direct "
        f"{c.direct_chunks_s:.0f} chunks/s, via router {c.via_chunks_s:.0f}/s "
        f"({100 * c.stream_ratio:.1f}% of direct; {c.via_chunks} of "
        f"{c.streams * (c.chunks + 1)} chunks through the router)"
    )
    print(json.dumps({**asdict(c), "added_ms_p50": c.added_ms_p50, "ratio": c.stream_ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
