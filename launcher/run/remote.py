"""A fleet's groups on a second box, started and kept over SSH (docs/remote.md).

For each remote host the supervisor holds one ``RemoteSession``: an ``ssh`` running
``llama-launcher agent`` there (the user's own ssh, keys and ~/.ssh/config; no daemon or port
of ours), which plans and runs that host's groups behind a router on the remote box's
127.0.0.1 and starts an rpc-server there for each pooled-rpc group of this box, and a second
``ssh -L`` that tunnels local ports to that router and those rpc-servers. The fleet's router
reaches the remote groups through the tunnel; a pooled-rpc worker takes ``--rpc`` at its port.

Both ssh processes read from pipes this process holds: when the supervisor stops, or dies,
the pipes close, the agent stops its workers after a grace period, and the tunnel's remote
``cat`` ends; nothing outlives the fleet on either box. Messages are JSON lines: the spec and
a stop to the agent, its plan, readiness, group states and failures back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

from launcher.errors import LauncherError
from launcher.spec.fleet import RemoteHost

SSH_OPTIONS_ENV = "LLAMA_LAUNCHER_SSH_OPTIONS"  # extra ssh options, e.g. "-F /path/config"
RETRY_FIRST_S = 5.0  # a host that went down is tried again after this, doubling to RETRY_MAX_S
RETRY_MAX_S = 60.0
READY_TIMEOUT_S = 600.0  # planning and loading the remote groups
Say = Callable[[str], None]


def ssh_base(host: RemoteHost) -> list[str]:
    """``ssh`` with the options a fleet needs (no prompts; a dead link noticed in 15 s)."""
    target, _, port = host.ssh.partition(":")
    argv = [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "ServerAliveInterval=5",
        "-o",
        "ServerAliveCountMax=3",
    ]
    if port:
        argv += ["-p", port]
    argv += shlex.split(os.environ.get(SSH_OPTIONS_ENV, ""))
    return [*argv, target]


def agent_command(host: RemoteHost) -> str:
    """The command the agent's ssh runs there (a non-interactive shell: full paths)."""
    parts = ["exec"]
    if host.home:
        parts += ["env", f"LLAMA_LAUNCHER_HOME={shlex.quote(host.home)}"]
    parts += [shlex.quote(host.launcher), "agent"]
    return " ".join(parts)


def remote_fleet(fleet: str, host: str) -> str:
    """The name the agent on ``host`` runs ``fleet``'s groups under."""
    return f"{fleet}-{host}"


def log_lines(host: RemoteHost, fleet: str, worker: str, follow: bool) -> Iterator[str]:
    """``logs`` of a worker on ``host`` (its agent's fleet ``fleet``), read over ssh: the
    lines as they come; raises with what the other box said when it has no such log."""
    parts = ["exec"]
    if host.home:
        parts += ["env", f"LLAMA_LAUNCHER_HOME={shlex.quote(host.home)}"]
    parts += [shlex.quote(host.launcher), "logs", shlex.quote(f"{fleet}/{worker}")]
    if follow:
        parts.append("-f")
    try:
        proc = subprocess.Popen(
            [*ssh_base(host), " ".join(parts)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as err:
        raise LauncherError(
            f"Cannot run ssh ({err.strerror}); install the OpenSSH client."
        ) from err
    assert proc.stdout is not None and proc.stderr is not None
    try:
        for raw in proc.stdout:
            yield raw.decode(errors="replace")
    except GeneratorExit:  # the reader stopped (Ctrl-C on -f): so does ssh
        proc.terminate()
        proc.wait()
        raise
    code = proc.wait()
    said = proc.stderr.read().decode(errors="replace").strip().splitlines()
    if code != 0:
        reason = said[-1].removeprefix("llama-launcher: ") if said else f"ssh exit code {code}"
        raise LauncherError(f"Host {host.name}: {reason}")


class RemoteSession:
    """One remote host's groups: the agent, the tunnel, their state."""

    def __init__(
        self,
        host: RemoteHost,
        spec: dict[str, Any] | None,
        local_port: int,
        say: Say,
        rpc_ports: dict[str, int] | None = None,
        rpc_servers: dict[str, str | None] | None = None,
        api_key: str | None = None,
    ) -> None:
        self.host = host
        # the groups that run there as a fleet spec (FleetSpec.to_json()); None: only rpc
        self.spec = spec
        self.local_port = local_port  # the tunnel's end of its router
        # pooled-rpc groups of this box that lend its cards -> the tunnel's end of each one's
        # rpc-server here
        self.rpc_ports = dict(rpc_ports or {})
        self.remote_rpc: dict[str, int] = {}  # the same, their ports there
        self.cards: list[dict[str, Any]] = []  # its cards' latest samples (the agent's)
        # the llama-server each pooled-rpc group's profile names (its build's rpc-server)
        self.rpc_servers = dict(rpc_servers or {})
        # reach = "lan": its router listens on host.address with the fleet's ``api_key``
        self.lan = host.reach == "lan" and spec is not None and host.address is not None
        self.api_key = api_key
        self.say = say
        self.state = "starting"  # starting, running, down, stopped
        self.message = ""
        self.groups: dict[str, str] = {}  # group -> state, as the agent reports it
        self.remote_port: int | None = None
        self.last_error = ""  # the last line the agent's ssh wrote to stderr
        self.agent: asyncio.subprocess.Process | None = None
        self.tunnel: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = asyncio.Event()
        self.started_at = time.monotonic()
        self.retry_at: float | None = None  # when a down host is tried again
        self.retries = 0

    @property
    def url(self) -> str:
        """Where the fleet's router reaches its groups: the tunnel's end, or its address."""
        if self.lan:
            return f"http://{self.host.address}"
        return f"http://127.0.0.1:{self.local_port}"

    @property
    def group_names(self) -> list[str]:
        """The groups that run there (not those that only borrow its cards)."""
        return [str(g["name"]) for g in self.spec["groups"]] if self.spec else []

    def rpc_endpoint(self, group: str) -> str:
        """``--rpc`` for pooled-rpc group ``group``: its rpc-server through the tunnel."""
        return f"127.0.0.1:{self.rpc_ports[group]}"

    @property
    def reason(self) -> str:
        """Why it is down, to go inside a sentence."""
        return self.message.rstrip(".")

    def _down(self, why: str) -> None:
        if self.state != "stopped":
            self.state = "down"
            self.message = why
            delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2**self.retries)
            self.retry_at = time.monotonic() + delay
        self._ready.set()

    def check(self) -> None:
        """A running session whose tunnel closed is down (its groups cannot be reached)."""
        if (
            self.state == "running"
            and self.tunnel is not None
            and self.tunnel.returncode is not None
        ):
            self._down(f"the tunnel to it closed (ssh exit code {self.tunnel.returncode})")
            self.say(f"Host {self.host.name} is down: {self.reason}.")

    def due(self) -> bool:
        """Whether a down host should be tried again now."""
        return (
            self.state == "down"
            and self.retry_at is not None
            and (time.monotonic() >= self.retry_at)
        )

    async def reconnect(self) -> bool:
        """Try a down host again: what is left of the old session goes, a new one starts."""
        self.retries += 1
        await self._close_processes()
        self.state = "starting"
        self.message = ""
        self.last_error = ""
        self.remote_port = None
        self.remote_rpc = {}
        self._ready = asyncio.Event()
        ok = await self.start()
        if ok:
            self.retries = 0
        return ok

    async def start(self, timeout_s: float = READY_TIMEOUT_S) -> bool:
        """Start the agent, hand it the groups, wait until they serve, open the tunnel; False
        (and ``message`` says why) when the host cannot be reached or the groups failed."""
        try:
            self.agent = await asyncio.create_subprocess_exec(
                *ssh_base(self.host),
                agent_command(self.host),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as err:
            self._down(f"cannot run ssh ({err.strerror}); install the OpenSSH client")
            return False
        assert self.agent.stdin is not None
        rpc = [{"group": g, "llama_server": self.rpc_servers.get(g)} for g in self.rpc_ports]
        asked: dict[str, Any] = {"spec": self.spec, "rpc": rpc}
        if self.lan:  # over the SSH session's stdin: the key never is on a command line
            asked |= {"bind": self.host.address, "api_key": self.api_key}
        self.agent.stdin.write((json.dumps(asked) + "\n").encode())
        with contextlib.suppress(ConnectionError):
            await self.agent.stdin.drain()
        self._tasks = [
            asyncio.create_task(self._read_events()),
            asyncio.create_task(self._read_log()),
        ]
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except asyncio.TimeoutError:
            self._down(f"its groups were not ready within {timeout_s:.0f} s")
        if self.state != "starting" or (self.spec is not None and self.remote_port is None):
            return False
        missing = [g for g in self.rpc_ports if g not in self.remote_rpc]
        if missing:
            self._down(f"it started no rpc-server for group {missing[0]}")
            return False
        if not await self._open_tunnel():
            return False
        self.state = "running"
        return True

    async def _open_tunnel(self) -> bool:
        tunnel_router = self.remote_port is not None and not self.lan
        pairs = [(self.local_port, self.remote_port)] if tunnel_router else []
        pairs += [(self.rpc_ports[g], self.remote_rpc[g]) for g in self.rpc_ports]
        if not pairs:
            return True  # its router is on the LAN, nothing to tunnel
        forwards = []
        for here, there in pairs:
            forwards += ["-L", f"127.0.0.1:{here}:127.0.0.1:{there}"]
        self.tunnel = await asyncio.create_subprocess_exec(
            *ssh_base(self.host)[:-1],
            "-o",
            "ExitOnForwardFailure=yes",
            *forwards,
            ssh_base(self.host)[-1],
            "exec cat",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.tunnel.returncode is not None:
                err = b""
                if self.tunnel.stderr is not None:
                    err = await self.tunnel.stderr.read()
                self._down(f"the tunnel to it failed ({err.decode(errors='replace').strip()})")
                return False
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", pairs[0][0])
                writer.close()
                return True
            except OSError:
                await asyncio.sleep(0.1)
        self._down("the tunnel to it did not open within 20 s")
        return False

    async def _read_events(self) -> None:
        assert self.agent is not None and self.agent.stdout is not None
        async for raw in self.agent.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            kind = event.get("event")
            if kind == "planned":
                for line in event.get("lines", []):
                    self.say(f"{self.host.name}: {line}")
            elif kind == "ready":
                port = event.get("port")
                self.remote_port = int(port) if port is not None else None
                self.remote_rpc = {str(g): int(p) for g, p in event.get("rpc", {}).items()}
                self.groups = dict(event.get("groups", {}))
                self._ready.set()
            elif kind == "groups":
                self.groups = dict(event.get("groups", {}))
            elif kind == "cards":
                self.cards = [c for c in event.get("cards", []) if isinstance(c, dict)]
            elif kind == "failed":
                self._down(str(event.get("message", "its groups failed")))
        code = await self.agent.wait()
        if len(self._tasks) > 1:  # what ssh said last is the reason
            await asyncio.wait([self._tasks[1]], timeout=2)
        if self.state in ("starting", "running"):
            if code == 127:  # the shell there found no such command
                self._down(
                    f"there is no llama-launcher at {self.host.launcher} on it; install it there "
                    "(see its README) or set launcher = PATH for that host in the hardware profile"
                )
            else:
                said = f": {self.last_error}" if self.last_error else ""
                self._down(f"its SSH session ended (exit code {code}){said}")
            self.say(f"Host {self.host.name} is down: {self.reason}.")

    async def _read_log(self) -> None:
        assert self.agent is not None and self.agent.stderr is not None
        async for raw in self.agent.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.last_error = line
                self.say(f"{self.host.name}: {line}")

    async def _close_processes(self, drain_s: float = 0.0) -> None:
        if self.agent is not None and self.agent.returncode is None:
            assert self.agent.stdin is not None
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.agent.stdin.write(b'{"stop": true}\n')
                await self.agent.stdin.drain()
                self.agent.stdin.close()
            try:
                await asyncio.wait_for(self.agent.wait(), drain_s + 20)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.agent.kill()
                await self.agent.wait()
        if self.tunnel is not None and self.tunnel.returncode is None:
            assert self.tunnel.stdin is not None
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.tunnel.stdin.close()
            try:
                await asyncio.wait_for(self.tunnel.wait(), 5)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.tunnel.kill()
                await self.tunnel.wait()
        for task in self._tasks:
            task.cancel()

    async def stop(self, drain_s: float) -> None:
        """Ask the agent to stop its groups and wait for it; close the tunnel."""
        was = self.state
        self.state = "stopped"
        await self._close_processes(drain_s)
        if was in ("running", "starting"):
            self.say(f"Host {self.host.name}: its groups stopped.")
