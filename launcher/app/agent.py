"""``llama-launcher agent``: the far end of a fleet's SSH session (docs/remote.md).

Run by the main box's supervisor over ``ssh`` (``run/remote.py``), never by hand. It reads the
groups this box is to run (a fleet spec, one JSON line on stdin), plans them on this box's own
cards, runs them under a supervisor with a router on 127.0.0.1 (reached through the main box's
SSH tunnel), and starts an rpc-server on 127.0.0.1 for each pooled-rpc group of the main box
that lends this box's cards. It reports on stdout in JSON lines: ``planned``, ``ready`` (the
router's port, each group's state, each rpc-server's port), ``groups`` (states as they
change), ``cards`` (this box's cards, every 2 s), ``failed``. Human lines go to stderr,
which ssh carries back into the main fleet's output.

It stops on ``{"stop": true}``, and when stdin ends (the SSH session is gone: the main
supervisor stopped or died) after ``GRACE_S``, so that nothing outlives the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from dataclasses import replace
from typing import TextIO

from launcher.app import fleet, server
from launcher.errors import LauncherError
from launcher.gpu.backend import GpuBackend, open_backend
from launcher.gpu.nvml import NvmlUnavailable
from launcher.gpu.sampler import GpuSampler
from launcher.run.rpc import RpcServer, rpc_server_beside
from launcher.run.supervisor import Supervisor, free_port
from launcher.spec.fleet import FleetSpec

GRACE_S = 10.0  # after the session is lost, before the groups stop
CARDS_EVERY_S = 2.0  # how often this box's card samples go to the main box
ROUTER_PORTS_FROM = 18800
RPC_PORTS_FROM = 50052  # rpc-server's own default port
AGENT_KEY_ENV = "LLAMA_LAUNCHER_AGENT_KEY"  # the fleet's key, for a router on the LAN


def _emit(out: TextIO, event: str, **fields: object) -> None:
    out.write(json.dumps({"event": event, **fields}) + "\n")
    out.flush()


def serve(stdin: TextIO, stdout: TextIO, grace_s: float = GRACE_S) -> int:
    """Serve what the first stdin line asks (``spec``: groups to run here; ``rpc``: groups of
    the main box that pool this box's cards, one rpc-server each) until told to stop or stdin
    ends."""
    if stdin.isatty():
        raise LauncherError(
            "'llama-launcher agent' is started by a fleet's 'up' on another box, over SSH; "
            "to run groups here, use 'llama-launcher up'."
        )
    first = stdin.readline()
    try:
        message = json.loads(first)
        spec = FleetSpec.from_json(message["spec"]) if message.get("spec") else None
        # each pooled-rpc group of the main box: its name and the llama-server its profile
        # names (whose build's rpc-server is used here too, as for the groups that run here)
        lenders = {str(r["group"]): r.get("llama_server") for r in message.get("rpc", ())}
        bind = message.get("bind")  # reach = "lan": "host:port", with the fleet's API key
        key = message.get("api_key")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        _emit(stdout, "failed", message=f"the agent got no fleet spec ({err})")
        return 2
    port: int | None = None
    supervisor: Supervisor | None = None
    try:
        rpc_servers = _rpc_servers(lenders)
        if spec is not None:
            host, port, key_env = "127.0.0.1", free_port(set(), ROUTER_PORTS_FROM), None
            if bind:
                if not key:
                    raise LauncherError(
                        "A router on the LAN needs the fleet's API key, and none came."
                    )
                host, _, port_text = str(bind).rpartition(":")
                port, key_env = int(port_text), AGENT_KEY_ENV
                os.environ[AGENT_KEY_ENV] = str(key)
            router = replace(spec.router, host=host, port=port, api_key_env=key_env, members=())
            local = replace(spec, router=router, hardware=None, remote_hosts=())
            prepared = fleet.plan_spec(local, llama_server=None, replan=False)
            _emit(stdout, "planned", lines=list(prepared.lines))
            supervisor = Supervisor(prepared.spec, say=_say, handle_signals=True)
    except LauncherError as err:
        _emit(stdout, "failed", message=str(err))
        return 1
    return asyncio.run(_run(supervisor, rpc_servers, stdin, stdout, port, grace_s))


class CardReport:
    """This box's cards, sampled every second, for the main box's Dashboard and ``status``
    (a ``cards`` event: each card's name, total memory and latest sample)."""

    def __init__(self) -> None:
        self.sampler: GpuSampler | None = None
        self.backend: GpuBackend | None = None
        self.names: dict[int, tuple[str, int]] = {}
        try:
            self.backend = backend = open_backend()
            cards = backend.cards()
        except (NvmlUnavailable, LauncherError, OSError):
            return  # no cards to show (a CPU box, no driver)
        self.names = {c.index: (c.name, c.memory_total_bytes) for c in cards}
        if cards:
            self.sampler = GpuSampler(backend, list(self.names), lambda samples, tick: None)
            self.sampler.start()

    def event(self) -> list[dict[str, object]]:
        if self.sampler is None:
            return []
        out = []
        for index, sample in sorted(self.sampler.latest.items()):
            name, total = self.names[index]
            out.append({"name": name, "memory_total_bytes": total, **sample.to_json()})
        return out

    def stop(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        if self.backend is not None:
            self.backend.close()


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _rpc_servers(groups: dict[str, str | None]) -> dict[str, RpcServer]:
    """One rpc-server per pooled-rpc group of the main box, on this box's 127.0.0.1."""
    taken: set[int] = set()
    out = {}
    for name, llama_server in groups.items():
        binary = rpc_server_beside(server.required_target(llama_server).path)
        port = free_port(taken, RPC_PORTS_FROM)
        taken.add(port)
        out[name] = RpcServer(binary, port)
    return out


async def _run(
    supervisor: Supervisor | None,
    rpc_servers: dict[str, RpcServer],
    stdin: TextIO,
    stdout: TextIO,
    port: int | None,
    grace_s: float,
) -> int:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()

    def stop() -> None:
        stopped.set()
        if supervisor is not None:
            supervisor.request_stop()

    def read_stdin() -> None:
        for line in stdin:
            try:
                if json.loads(line).get("stop"):
                    loop.call_soon_threadsafe(stop)
                    return
            except (ValueError, AttributeError):
                continue
        say_lost = f"the session to the main box ended; stopping in {grace_s:.0f} s"
        print(say_lost, file=sys.stderr, flush=True)
        loop.call_soon_threadsafe(loop.call_later, grace_s, stop)

    threading.Thread(target=read_stdin, daemon=True).start()
    # a dropped SSH connection may hang up on us: stop after the grace period, never leave the
    # workers running without their supervisor
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.call_later(grace_s, stop))
    report = CardReport()

    async def send_cards() -> None:
        while True:
            await asyncio.sleep(CARDS_EVERY_S)
            cards = report.event()
            if cards:
                _emit(stdout, "cards", cards=cards)

    sender = asyncio.create_task(send_cards())
    try:
        for name, rpc in rpc_servers.items():
            try:
                await rpc.start()
            except LauncherError as err:
                _emit(stdout, "failed", message=f"the rpc-server for group {name}: {err}")
                return 1
            _say(f"rpc-server for group {name} lends this box's devices on 127.0.0.1:{rpc.port}")
        lent = {name: rpc.port for name, rpc in rpc_servers.items()}
        if supervisor is None:
            _emit(stdout, "ready", port=None, groups={}, rpc=lent)
            return await _watch_rpc(rpc_servers, stopped, stdout)
        return await _supervise(supervisor, rpc_servers, stdout, port, lent)
    finally:
        sender.cancel()
        report.stop()
        await asyncio.gather(*(rpc.stop() for rpc in rpc_servers.values()))


async def _watch_rpc(
    rpc_servers: dict[str, RpcServer], stopped: asyncio.Event, stdout: TextIO
) -> int:
    """Until stopped: an rpc-server that exits is a failure the main box hears of (it tries
    the host again later)."""
    while not stopped.is_set():
        for name, rpc in rpc_servers.items():
            if rpc.proc is not None and rpc.proc.returncode is not None:
                said = rpc.tail[-1] if rpc.tail else f"exit code {rpc.proc.returncode}"
                _emit(stdout, "failed", message=f"the rpc-server for group {name} ended: {said}")
                return 1
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopped.wait(), 1.0)
    return 0


async def _supervise(
    supervisor: Supervisor,
    rpc_servers: dict[str, RpcServer],
    stdout: TextIO,
    port: int | None,
    lent: dict[str, int],
) -> int:
    task = asyncio.create_task(supervisor.run())
    await supervisor.ready.wait()
    states = {name: run.state for name, run in supervisor.groups.items()}
    if task.done() or any(s == "failed" for s in states.values()):
        _emit(stdout, "failed", message="its groups did not start (the lines above say why)")
    else:
        _emit(stdout, "ready", port=port, groups=states, rpc=lent)
    last = states
    while not task.done():
        await asyncio.sleep(1.0)
        states = {name: run.state for name, run in supervisor.groups.items()}
        if states != last:
            _emit(stdout, "groups", groups=states)
            last = states
        for name, rpc in rpc_servers.items():
            if rpc.proc is not None and rpc.proc.returncode is not None:
                _emit(stdout, "failed", message=f"the rpc-server for group {name} ended")
                supervisor.request_stop()
    return task.result()
