"""The fleet's router process, as its supervisor runs it: started with the listening socket
and one end of a socketpair (``launcher.router.process``), fed each poll, restarted within a
second when it dies, stopped with a drain. A router that crashes, runs out of descriptors or
memory takes no worker with it; the restarted one gets the spec and the latest snapshots at
once."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from launcher.errors import LauncherError
from launcher.llamacpp.poll import WorkerSnapshot
from launcher.router.server import STOP_CLOSE_S

PR_SET_PDEATHSIG = 1
START_TIMEOUT_S = 15.0
RESTART_DELAY_S = 0.2

Message = dict[str, Any]
Gauges = list[tuple[str, dict[str, str], float]]


def die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class RouterHost:
    """One router process and its channel."""

    def __init__(
        self,
        spec: Message,
        listener: socket.socket,
        on_message: Callable[[Message], None],
        say: Callable[[str], None],
    ) -> None:
        self.spec = spec
        self.listener = listener
        self.on_message = on_message
        self.say = say
        self.proc: asyncio.subprocess.Process | None = None
        self.stats: Message = {}
        self.restarts = 0
        self.stopping = False
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._last: Message | None = None  # the latest observe, for a restarted router
        self._failures = 0  # restarts in a row that did not come up
        self._retry_at = 0.0  # no restart before this (after a failed one)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def url(self) -> str:
        config = self.spec["config"]
        host = "127.0.0.1" if config["host"] in ("0.0.0.0", "::") else config["host"]
        return f"http://{host}:{config['port']}"

    async def start(self) -> None:
        """Start the router; returns once it listens (raises with why it did not)."""
        parent, child = socket.socketpair()
        self._listening.clear()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "launcher.router.process",
            str(child.fileno()),
            str(self.listener.fileno()),
            pass_fds=(child.fileno(), self.listener.fileno()),
            stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        child.close()
        reader, self._writer = await asyncio.open_connection(sock=parent)
        self._send(self.spec)
        if self._last is not None:
            self._send(self._last)
        self._reader = asyncio.create_task(self._read(reader))
        try:
            await asyncio.wait_for(self._listening.wait(), START_TIMEOUT_S)
        except TimeoutError as err:
            raise LauncherError(
                f"The router did not start within {START_TIMEOUT_S:.0f} s (exit code "
                f"{self.proc.returncode}); see the supervisor's log."
            ) from err

    async def _read(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                message = json.loads(line)
                if message["type"] == "listening":
                    self._listening.set()
                elif message["type"] == "stats":
                    self.stats = message
                else:
                    self.on_message(message)

    def _send(self, message: Message) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(json.dumps(message).encode() + b"\n")

    def observe(
        self,
        snapshots: dict[str, WorkerSnapshot],
        groups: dict[str, str],
        gauges: Gauges,
        ready_in: dict[str, float] | None = None,
    ) -> None:
        """Hand the router the latest poll."""
        self._last = {
            "type": "observe",
            "snapshots": {k: v.to_json() for k, v in snapshots.items()},
            "groups": groups,
            "gauges": gauges,
            "ready_in": ready_in or {},
        }
        self._send(self._last)

    def set_url(self, member: str, url: str) -> None:
        """A worker moved to another port."""
        for group in self.spec["groups"]:
            for m in group["members"]:
                if m["name"] == member:
                    m["url"] = url
        self._send({"type": "url", "member": member, "url": url})

    async def watch(self) -> None:
        """Start the router again if it died (within a second); say so. A restart that fails
        is said and tried again later (1, 2, 4 ... 30 s): it never stops the fleet."""
        proc = self.proc
        if self.stopping or proc is None or proc.returncode is None:
            return
        if time.monotonic() < self._retry_at:
            return
        code = proc.returncode
        started = time.monotonic()
        await asyncio.sleep(RESTART_DELAY_S)
        self.restarts += 1
        try:
            await self.start()
        except (LauncherError, OSError) as err:
            hung = self.proc
            if hung is not None and hung.returncode is None:  # so that the next tick retries
                with contextlib.suppress(ProcessLookupError):
                    hung.kill()
                await hung.wait()
            self._failures += 1
            delay = min(30.0, 2.0 ** (self._failures - 1))
            self._retry_at = time.monotonic() + delay
            self.say(f"The router could not be started again ({err}); next try in {delay:.0f} s.")
            return
        self._failures = 0
        self.say(
            f"The router exited with code {code}; started again in "
            f"{time.monotonic() - started:.2f} s (restart {self.restarts}); the workers kept "
            "running."
        )

    async def stop(self, drain_s: float) -> None:
        """Drain for ``drain_s`` (the router says the rest), then make sure it is gone."""
        self.stopping = True
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        self._send({"type": "stop", "drain_s": drain_s})
        try:
            await asyncio.wait_for(proc.wait(), drain_s + STOP_CLOSE_S + 3)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
        if self._writer is not None:
            self._writer.close()
