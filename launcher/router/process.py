"""The router as a process of its own, driven by its supervisor over an inherited socketpair.

``python -m launcher.router.process CHANNEL_FD LISTEN_FD``: the supervisor keeps the other end
of the channel (a Unix socketpair, no listener anywhere) and the router's listening socket,
which it bound itself, is inherited as LISTEN_FD. Messages are JSON lines.

Supervisor → router: ``spec`` (first: the router's settings and the groups with their members,
API keys included: they never touch a file), ``observe`` (each poll: worker snapshots, group
states, when a loading or restarting group should be ready, GPU gauges), ``url`` (a worker
moved port), ``stop`` (drain for ``drain_s``, then exit).
Router → supervisor: ``load`` (an on-demand group), ``used`` (a group's requests in flight, for
its TTL), ``stats`` (once a second: per group requests, queue, overflow; per member requests
and tokens; what ``status`` and the Dashboard show). When the channel closes (the supervisor
died) the router stops at once: nothing outlives the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import Sequence
from typing import Any

from launcher.llamacpp.poll import WorkerSnapshot
from launcher.router.balancer import Member
from launcher.router.server import RouteGroup, Router, RouterConfig
from launcher.spec.fleet import GroupRoute

STATS_EVERY_S = 1.0


def spec_message(
    config: RouterConfig, groups: list[RouteGroup], default_model: str | None
) -> dict[str, Any]:
    """The ``spec`` message for ``groups`` behind a router with ``config``."""
    return {
        "type": "spec",
        "config": vars(config),
        "default_model": default_model,
        "groups": [
            {
                "name": g.name,
                "aliases": list(g.aliases),
                "kind": g.kind,
                "route": vars(g.route),
                "on_demand": g.on_demand,
                "state": g.state,
                "members": [
                    {
                        "name": m.name,
                        "url": m.url,
                        "weight": m.weight,
                        "api_key": m.api_key,
                        "cards": list(m.cards),
                    }
                    for m in g.members
                ],
            }
            for g in groups
        ],
    }


def _groups(data: list[dict[str, Any]]) -> list[RouteGroup]:
    return [
        RouteGroup(
            g["name"],
            [
                Member(m["name"], m["url"], m["weight"], m["api_key"], cards=tuple(m["cards"]))
                for m in g["members"]
            ],
            aliases=tuple(g["aliases"]),
            kind=g["kind"],
            route=GroupRoute(**g["route"]),
            on_demand=g["on_demand"],
            state=g["state"],
        )
        for g in data
    ]


class _Channel:
    """The router's end of the socketpair: ``RouterControl`` for the router, as messages."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(json.dumps(message).encode() + b"\n")

    def load_group(self, name: str) -> None:
        self.send({"type": "load", "group": name})

    def group_used(self, name: str, in_flight: int) -> None:
        self.send({"type": "used", "group": name, "in_flight": in_flight})


def stats(router: Router) -> dict[str, Any]:
    """What the supervisor shows of the router's counts."""
    return {
        "type": "stats",
        "groups": {
            g.name: {
                "requests": g.requests,
                "queued": g.balancer.waiting,
                "overflowed": g.overflowed,
                "rule_routed": g.rule_routed,
            }
            for g in router.groups.values()
        },
    }


async def serve(channel: socket.socket, listener: socket.socket) -> int:
    """Run the router the channel describes until told to stop or the channel closes."""
    reader, writer = await asyncio.open_connection(sock=channel)
    line = await reader.readline()
    if not line:
        return 0
    spec = json.loads(line)
    gauges: list[tuple[str, dict[str, str], float]] = []
    control = _Channel(writer)
    router = Router(
        _groups(spec["groups"]),
        RouterConfig(**spec["config"]),
        lambda: gauges,
        default_model=spec["default_model"],
        control=control,
    )
    await router.start(listener)
    control.send({"type": "listening", "url": router.url})

    async def report() -> None:
        while True:
            control.send(stats(router))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(STATS_EVERY_S)

    reporter = asyncio.create_task(report())
    drain_s = 0.0
    try:
        while line := await reader.readline():
            message = json.loads(line)
            kind = message["type"]
            if kind == "observe":
                snapshots = {
                    k: WorkerSnapshot.from_json(v) for k, v in message["snapshots"].items()
                }
                gauges[:] = [(n, labels, v) for n, labels, v in message.get("gauges", [])]
                await router.observe(snapshots, message["groups"], message.get("ready_in"))
            elif kind == "url":
                for m in router.members:
                    if m.name == message["member"]:
                        m.url = message["url"]
            elif kind == "stop":
                drain_s = float(message["drain_s"])
                break
    except (ConnectionError, ValueError):
        pass  # the supervisor is gone: stop at once
    finally:
        reporter.cancel()
        await router.stop(drain_s)
        writer.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    channel = socket.socket(fileno=int(args[0]))
    listener = socket.socket(fileno=int(args[1]))
    listener.setblocking(False)
    return asyncio.run(serve(channel, listener))


if __name__ == "__main__":
    sys.exit(main())
