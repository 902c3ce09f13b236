"""What a worker killed under load costs: requests lost, and the time until it is back.

A ``cpu:2`` fleet of the tiny synthetic model serves C streaming clients through its router
(each request 64 tokens); after a second one worker gets ``kill -9``. Reported: the requests
in flight on that worker at the kill (from its ``/slots`` just before), the requests that
failed (each must reach its client as an error: a 503 or an error event, never a clean
200), the requests served in all, and when the worker was healthy again. Target (issue 19):
only the requests in flight on the killed worker are lost, each reported to its client.
Needs llama-server (``$LLAMA_SERVER`` or the cache). Runs in a home of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import aiohttp

from launcher.app import fleet, models
from launcher.benchmarks.fleet import private_home


@dataclass(frozen=True)
class WorkerKill:
    clients: int
    served: int
    failed: int  # answered 503 or with an error event (reported to the client)
    clean_but_cut: int  # a 200 that ended without its final event (must be 0)
    in_flight_on_killed: int
    back_healthy_s: float


async def _client(url: str, stop: float, counts: dict[str, int]) -> None:
    body = {"prompt": "Hi", "n_predict": 64, "ignore_eos": True, "stream": True}
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < stop:
            try:
                async with s.post(f"{url}/completion", json=body) as r:
                    text = (await r.read()).decode(errors="replace")
                if r.status != 200 or '"error"' in text:
                    counts["failed"] += 1
                elif '"stop":true' in text:
                    counts["served"] += 1
                else:
                    counts["cut"] += 1
            except aiohttp.ClientError:
                counts["failed"] += 1


async def _back(name: str, index: int, pid: int) -> float:
    """Seconds until worker ``index`` of fleet ``name`` is healthy again with a new PID."""
    started = time.monotonic()
    while time.monotonic() - started < 60:
        state = next(f for f in await asyncio.to_thread(fleet.fleets) if f.name == name)
        worker = state.workers[index]
        if worker.state == "healthy" and worker.pid not in (None, pid):
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    return -1.0


async def _run(
    router: str, worker_pid: int, worker_url: str, clients: int, seconds: float
) -> tuple[dict[str, int], int, float]:
    counts = {"served": 0, "failed": 0, "cut": 0}
    stop = time.monotonic() + seconds
    tasks = [asyncio.create_task(_client(router, stop, counts)) for _ in range(clients)]
    await asyncio.sleep(1.0)
    async with aiohttp.ClientSession() as s, s.get(f"{worker_url}/slots") as r:
        busy = sum(1 for slot in await r.json() if slot.get("is_processing"))
    os.kill(worker_pid, signal.SIGKILL)
    back = await _back("k", 1, worker_pid)
    await asyncio.gather(*tasks)
    return counts, busy, back


def measure(clients: int = 4, seconds: float = 8.0, port: int = 18560) -> WorkerKill:
    with private_home("bench-kill-") as home:
        model = models.make_model(home / "tiny.gguf", "llama", "tiny")[0]
        request = fleet.UpRequest(
            str(model), layout="cpu:2", users=(clients,), ctx=(512,), port=port, name="k"
        )
        spec = fleet.prepare_up(request).spec
        if fleet.start(spec, detach=True, say=lambda line: None) != 0:
            raise RuntimeError("the fleet did not start; see its supervisor.log")
        state = next(f for f in fleet.fleets() if f.name == "k")
        victim = state.workers[1]
        assert victim.pid is not None and state.router is not None
        counts, busy, back = asyncio.run(
            _run(state.router["url"], victim.pid, victim.url, clients, seconds)
        )
    return WorkerKill(clients, counts["served"], counts["failed"], counts["cut"], busy, back)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.benchmarks.worker_kill")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--port", type=int, default=18560)
    args = parser.parse_args(argv)
    k = measure(args.clients, args.seconds, args.port)
    print(
        f"{k.clients} streaming clients, one of 2 workers killed: {k.in_flight_on_killed} "
        f"request(s) in flight on it, {k.failed} failed (each told to its client), "
        f"{k.clean_but_cut} cut without an error, {k.served} served; the worker healthy "
        f"again {k.back_healthy_s:.1f} s after the kill"
    )
    print(json.dumps(asdict(k)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
