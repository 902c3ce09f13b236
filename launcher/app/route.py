"""``route``: the router alone, over llama-servers that are already running.

With no supervisor, this use case keeps one poller per server and hands the router their
snapshots, as a fleet's supervisor does. Servers given as ``NAME=URL`` form model groups by
name (requests pick one by their ``model`` field, as in a fleet); servers without a name are
one group.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from launcher.errors import LauncherError
from launcher.llamacpp.poll import POLL_INTERVAL_S, WorkerPoller
from launcher.router.balancer import Member
from launcher.router.server import RouteGroup, Router, RouterConfig, require_key_for
from launcher.run.supervisor import env_key


@dataclass(frozen=True)
class RouteRequest:
    urls: tuple[str, ...]  # [NAME=]http://HOST:PORT[@WEIGHT]
    host: str = "127.0.0.1"
    port: int = 8080
    api_key_env: str | None = None
    upstream_key_env: str | None = None
    max_queue: int = 256
    queue_timeout_s: float = 30.0
    affinity: bool = False


def members(request: RouteRequest) -> list[Member]:
    """The servers behind the router; raises one sentence for a bad URL or weight."""
    return [m for _, m in _named(request)]


def _named(request: RouteRequest) -> list[tuple[str, Member]]:
    """Each server with its group name ("default" when none is given)."""
    upstream_key = env_key(request.upstream_key_env, "upstream servers' API key")
    out = []
    for i, text in enumerate(request.urls):
        name, sep, rest = text.partition("=")
        if not sep or name.startswith(("http://", "https://")):
            name, rest = "default", text
        url, _, weight = rest.partition("@")
        if not url.startswith(("http://", "https://")):
            raise LauncherError(
                f"'{text}' is not a server URL; give [NAME=]http://HOST:PORT[@WEIGHT]."
            )
        try:
            w = float(weight) if weight else 1.0
        except ValueError as err:
            raise LauncherError(f"'{weight}' in '{text}' is not a weight; use a number.") from err
        out.append((name, Member(f"m{i}", url.rstrip("/"), w, upstream_key)))
    return out


def groups(request: RouteRequest) -> list[RouteGroup]:
    """The servers as model groups, in the order their names first appear."""
    by_name: dict[str, list[Member]] = {}
    for name, member in _named(request):
        by_name.setdefault(name, []).append(member)
    return [RouteGroup(name, found) for name, found in by_name.items()]


def serve(request: RouteRequest, say: Callable[[str], None]) -> int:
    """Run the router until Ctrl-C or SIGTERM."""
    key = env_key(request.api_key_env, "router's API key")
    require_key_for(request.host, key, request.api_key_env)
    served = groups(request)
    servers = [m for g in served for m in g.members]
    config = RouterConfig(
        request.host,
        request.port,
        key,
        request.max_queue,
        request.queue_timeout_s,
        request.affinity,
    )

    async def main() -> None:
        router = Router(served, config)
        pollers = {m.name: WorkerPoller(m.url, m.api_key) for m in servers}
        async with aiohttp.ClientSession() as session:

            async def poll() -> None:
                snaps = await asyncio.gather(*(p.poll(session) for p in pollers.values()))
                await router.observe(dict(zip(pollers, snaps, strict=True)))

            await poll()
            await router.start()
            healthy = sum(1 for m in router.members if m.healthy)
            say(
                f"Router on {router.url} over {len(servers)} server(s), {healthy} healthy now; "
                "Ctrl-C stops it."
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL_INTERVAL_S)
                await poll()
            await router.stop()

    asyncio.run(main())
    return 0
