"""``llama-launcher agent``: the far end of a fleet's SSH session (docs/remote.md).

Run by the main box's supervisor over ``ssh`` (``run/remote.py``), never by hand. It reads the
groups this box is to run (a fleet spec, one JSON line on stdin), plans them on this box's own
cards, runs them under a supervisor with a router on 127.0.0.1 (reached through the main box's
SSH tunnel), and reports on stdout in JSON lines: ``planned``, ``ready`` (the router's port,
each group's state), ``groups`` (states as they change), ``failed``. Human lines go to stderr,
which ssh carries back into the main fleet's output.

It stops on ``{"stop": true}``, and when stdin ends (the SSH session is gone: the main
supervisor stopped or died) after ``GRACE_S``, so that nothing outlives the fleet.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
from dataclasses import replace
from typing import TextIO

from launcher.app import fleet
from launcher.errors import LauncherError
from launcher.run.supervisor import Supervisor, free_port
from launcher.spec.fleet import FleetSpec

GRACE_S = 10.0  # after the session is lost, before the groups stop
ROUTER_PORTS_FROM = 18800


def _emit(out: TextIO, event: str, **fields: object) -> None:
    out.write(json.dumps({"event": event, **fields}) + "\n")
    out.flush()


def serve(stdin: TextIO, stdout: TextIO, grace_s: float = GRACE_S) -> int:
    """Serve the groups the first stdin line gives until told to stop or stdin ends."""
    if stdin.isatty():
        raise LauncherError(
            "'llama-launcher agent' is started by a fleet's 'up' on another box, over SSH; "
            "to run groups here, use 'llama-launcher up'."
        )
    first = stdin.readline()
    try:
        spec = FleetSpec.from_json(json.loads(first)["spec"])
    except (ValueError, KeyError, TypeError) as err:
        _emit(stdout, "failed", message=f"the agent got no fleet spec ({err})")
        return 2
    try:
        port = free_port(set(), ROUTER_PORTS_FROM)
        router = replace(spec.router, host="127.0.0.1", port=port, api_key_env=None, members=())
        local = replace(spec, router=router, hardware=None, remote_hosts=())
        prepared = fleet.plan_spec(local, llama_server=None, replan=False)
    except LauncherError as err:
        _emit(stdout, "failed", message=str(err))
        return 1
    _emit(stdout, "planned", lines=list(prepared.lines))

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        supervisor = Supervisor(prepared.spec, say=say, handle_signals=True)
    except LauncherError as err:
        _emit(stdout, "failed", message=str(err))
        return 1
    return asyncio.run(_run(supervisor, stdin, stdout, port, grace_s))


async def _run(
    supervisor: Supervisor, stdin: TextIO, stdout: TextIO, port: int, grace_s: float
) -> int:
    loop = asyncio.get_running_loop()

    def stop() -> None:
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
    task = asyncio.create_task(supervisor.run())
    await supervisor.ready.wait()
    states = {name: run.state for name, run in supervisor.groups.items()}
    if task.done() or any(s == "failed" for s in states.values()):
        _emit(stdout, "failed", message="its groups did not start (the lines above say why)")
    else:
        _emit(stdout, "ready", port=port, groups=states)
    last = states
    while not task.done():
        await asyncio.sleep(1.0)
        states = {name: run.state for name, run in supervisor.groups.items()}
        if states != last:
            _emit(stdout, "groups", groups=states)
            last = states
    return task.result()
