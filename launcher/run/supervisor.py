"""Start, watch and stop the llama-server workers of one fleet, as its spec says.

A ``Supervisor`` owns one fleet and runs its ``FleetSpec`` as given: the workers of every
group, exactly as planned (no planning here). It starts every worker at once (each with
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and its cards in ``CUDA_VISIBLE_DEVICES``), moves a worker
whose port is taken to a free one, waits for ``/health`` with a timeout while showing
progress, and reports a worker that dies while loading with the last lines of its log. Once
up, a worker that crashes is restarted with back-off (1, 2, 4 ... 30 s) up to
``MAX_RESTARTS`` times in ``RESTART_WINDOW_S``. Workers get a parent-death signal, so they die
with the supervisor even if it is killed. Workers inherit the supervisor's environment less
``WORKER_ENV_DROPPED``. SIGTERM or Ctrl-C stops the fleet: SIGTERM to
each worker, SIGKILL after ``STOP_GRACE_S``. The fleet's state file (``fleet_state``) lets
``status``, ``logs`` and ``down`` work from any terminal.

One ``WorkerPoller`` per worker (and per remote member) polls ``/health``, ``/slots`` and
``/metrics`` every ``POLL_INTERVAL_S``; the router, the state file and the GPU readings all
take their numbers from those snapshots and from the one GPU backend the supervisor opens
(closed when it stops). The router is a process of its own (``router_host.RouterHost``):
the supervisor binds its port, hands it each poll over a socketpair and starts it again if it
dies; it does not poll on its own.

Each model group of the spec is a ``GroupRun``. On-demand groups start unloaded: the router
asks for one (``RouterControl.load_group``) on its first request, ``group load`` asks through
a file in the fleet's control folder, and either loads it (first unloading the on-demand
groups the plan says it cannot be resident with); it unloads once no request has used it for
its ``ttl_s`` (``group_used``), or on ``group unload``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from launcher.errors import LauncherError
from launcher.gpu.backend import GpuBackend, open_backend
from launcher.gpu.sampler import GpuSampler
from launcher.llamacpp.args import WORKER_ENV_DROPPED
from launcher.llamacpp.poll import POLL_INTERVAL_S, WorkerPoller, WorkerSnapshot
from launcher.router.balancer import Member
from launcher.router.process import spec_message
from launcher.router.server import RouteGroup, RouterConfig, require_key_for
from launcher.run import fleet_state
from launcher.run.fleet_state import FleetState, GroupState, WorkerState
from launcher.run.remote import RemoteSession, remote_fleet
from launcher.run.router_host import RouterHost, die_with_parent
from launcher.spec.fleet import NO_ROUTE, FleetSpec, GroupSpec, RouterSpec, WorkerSpec

HEALTH_TIMEOUT_S = 600.0
STOP_GRACE_S = 10.0
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600.0
LOG_MAX_BYTES = 10 << 20  # per file; one older file is kept
STATE_ERROR_EVERY_S = 60.0  # a state file that cannot be written is said once a minute
_ERROR_WORDS = re.compile(r"error|failed|out of memory|invalid|unknown|cannot", re.IGNORECASE)

Say = Callable[[str], None]


def worker_environ(additions: dict[str, str]) -> dict[str, str]:
    """A worker's environment: this process's, less ``WORKER_ENV_DROPPED``, with the cards'
    order and ``additions`` (its ``CUDA_VISIBLE_DEVICES``)."""
    inherited = {k: v for k, v in os.environ.items() if k not in WORKER_ENV_DROPPED}
    return {**inherited, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", **additions}


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket listening on the router's address, for the router to serve: the port is this
    fleet's from now on, and a second fleet on it fails at once."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as err:
        raise LauncherError(f"The router's address {host} is not usable ({err}).") from err
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise LauncherError(
            f"The router's port {port} on {host} is in use ({err.strerror}); stop what uses "
            "it or choose another port with --port."
        ) from err
    try:
        sock.listen(128)  # listening, the port is ours alone (SO_REUSEADDR or not)
    except OSError as err:
        sock.close()
        raise LauncherError(
            f"The router's port {port} on {host} is in use ({err.strerror}); stop what uses "
            "it or choose another port with --port."
        ) from err
    sock.setblocking(False)
    return sock


def free_port(avoid: set[int], start: int) -> int:
    for port in range(start, start + 1000):
        if port not in avoid and port_free(port):
            return port
    raise LauncherError(f"No free port found from {start} on; free some ports and try again.")


class RotatingLog:
    """A worker's log: appends, and keeps one older file when it passes ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        fleet_state.private_dir(path.parent)
        self._f = path.open("ab")
        with contextlib.suppress(OSError):
            path.chmod(0o600)
        self.tail: deque[str] = deque(maxlen=60)
        self.dropped = 0  # lines a full disk kept out of the file

    def write(self, line: bytes) -> None:
        """Append ``line``; on a full or read-only disk the line is dropped (the last lines
        stay in memory for error messages) and the worker keeps running."""
        self.tail.append(line.decode(errors="replace").rstrip())
        try:
            self._f.write(line)
            self._f.flush()
            if self._f.tell() > self.max_bytes:
                self._f.close()
                self.path.replace(self.path.with_suffix(".log.1"))
                self._f = self.path.open("ab")
        except (OSError, ValueError):  # ValueError: the file was closed by a failed rotation
            self.dropped += 1
            with contextlib.suppress(OSError):
                if self._f.closed:
                    self._f = self.path.open("ab")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._f.close()


class Worker:
    """One llama-server of the fleet and its life: start, health, restarts, stop."""

    def __init__(self, fleet: str, index: int, group: str, spec: WorkerSpec, echo: bool) -> None:
        self.id = f"{fleet}/w{index}"
        self.spec = spec
        self.echo = echo
        self.proc: asyncio.subprocess.Process | None = None
        self.log = RotatingLog(fleet_state.logs_dir(fleet) / f"w{index}.log")
        self.state = WorkerState(
            self.id,
            None,
            spec.port,
            f"http://127.0.0.1:{spec.port}",
            list(spec.cards),
            log=str(self.log.path),
            group=group,
            argv=list(spec.args.argv()),
        )
        self.poller = WorkerPoller(self.state.url)
        self.restart_times: list[float] = []
        self.back_at = 0.0  # a restarting worker starts loading again at this time
        self._pump: asyncio.Task[None] | None = None

    def set_rpc(self, endpoints: tuple[str, ...]) -> None:
        """Where its ``--rpc`` devices are now (a pooled-rpc worker's tunnel ends)."""
        self.spec = replace(self.spec, args=self.spec.args.replace(rpc=endpoints))
        self.state.argv = list(self.spec.args.argv())

    def set_port(self, port: int) -> None:
        self.spec = self.spec.with_port(port)
        self.state.port = port
        self.state.url = f"http://127.0.0.1:{port}"
        self.state.argv = list(self.spec.args.argv())
        self.poller = WorkerPoller(self.state.url)

    async def start(self) -> None:
        env = worker_environ(self.spec.env)
        argv = self.spec.args.argv()  # the one place settings become flags
        self.log.write(
            f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode()
        )
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        except OSError as err:
            raise LauncherError(
                f"{self.id} could not start {argv[0]} ({err}); check the llama-server path."
            ) from err
        self.state.pid = self.proc.pid
        self.state.started = fleet_state.process_started(self.proc.pid)
        self._pump = asyncio.create_task(self._read_output(self.proc))

    async def _read_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            self.log.write(line)
            if self.echo:
                sys.stdout.write(f"[{self.id}] {line.decode(errors='replace')}")
                sys.stdout.flush()

    def last_lines(self, n: int = 4) -> str:
        """The log lines that say what went wrong: error lines first, then the last ``n``."""
        lines = [line for line in self.log.tail if line.strip()]
        errors = [line for line in lines if _ERROR_WORDS.search(line)][-4:]
        chosen = errors + [line for line in lines[-n:] if line not in errors]
        return "\n".join(f"    {line}" for line in chosen)

    async def wait_healthy(self, session: aiohttp.ClientSession, timeout: float, say: Say) -> None:
        """Poll ``/health`` until 200; raises with the log tail if the process exits."""
        started = time.monotonic()
        next_note = started + 5
        while True:
            assert self.proc is not None
            if self.proc.returncode is not None:
                await self._drain()
                raise LauncherError(
                    f"{self.id} exited with code {self.proc.returncode} while "
                    f"loading; the end of its log ({self.log.path}):\n"
                    f"{self.last_lines()}"
                )
            if (await self.poller.poll(session)).healthy:
                return
            now = time.monotonic()
            if now - started > timeout:
                raise LauncherError(
                    f"{self.id} was not healthy after {timeout:.0f} s; the end "
                    f"of its log ({self.log.path}):\n{self.last_lines()}"
                )
            if now >= next_note:
                say(f"{self.id}: loading ({now - started:.0f} s)")
                next_note = now + 5
            await asyncio.sleep(0.25)

    async def _drain(self) -> None:
        if self._pump is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._pump, 2)

    async def stop(self) -> None:
        proc = self.proc
        self.state.state = "stopped"  # before it exits: a stop is not a crash to restart
        if proc is None or proc.returncode is not None:
            self.state.pid = None
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        await self._drain()
        self.state.state = "stopped"
        self.state.pid = None


def env_key(var: str | None, what: str) -> str | None:
    """The value of ``$var`` (None when no variable is named); raises when it is empty."""
    if not var:
        return None
    value = os.environ.get(var)
    if not value:
        raise LauncherError(f"${var} is empty; export the {what} in it, or drop {var}.")
    return value


def _rpc_port(workers: list[Worker]) -> int | None:
    """The tunnel port a pooled-rpc worker was planned with (``--rpc 127.0.0.1:PORT``)."""
    for w in workers:
        for endpoint in w.spec.args.rpc:
            host, _, port = endpoint.rpartition(":")
            if host == "127.0.0.1" and port.isdigit():
                return int(port)
    return None


def router_setup(router: RouterSpec) -> tuple[RouterConfig, list[tuple[str | None, Member]]]:
    """The router's settings and the remote members of a fleet's ``router`` spec (each with
    the group it serves, None for the first), with their API keys read from the environment;
    raises one sentence for a missing key."""
    key = env_key(router.api_key_env, "router's API key")
    require_key_for(router.host, key, router.api_key_env)
    remote = [
        (
            m.group,
            Member(
                f"remote{i}:{m.url}",
                m.url.rstrip("/"),
                m.weight,
                env_key(m.api_key_env, f"API key of {m.url}"),
            ),
        )
        for i, m in enumerate(router.members)
    ]
    config = RouterConfig(
        router.host,
        router.port,
        key,
        affinity=router.affinity,
        max_body_bytes=router.max_body_mb << 20,
        max_connections=router.max_connections,
        idle_timeout_s=router.idle_timeout_s,
        body_timeout_s=router.body_timeout_s,
        queue_timeout_s=router.queue_timeout_s,
    )
    return config, remote


class GroupRun:
    """One model group of a running fleet: its workers, state and last use."""

    def __init__(self, spec: GroupSpec, workers: list[Worker]) -> None:
        self.spec = spec
        self.workers = workers
        self.state = "unloaded" if spec.on_demand else "loading"
        self.last_used = time.monotonic()
        self.in_flight = 0
        self.message = ""
        self.unloading = False  # its workers are being stopped
        self.task: asyncio.Task[None] | None = None  # a load or unload in progress
        self.load_s: float | None = None  # how long its last load took
        self.loading_since = time.monotonic()

    @property
    def name(self) -> str:
        return self.spec.name

    def snapshot(self) -> GroupState:
        idle = time.monotonic() - self.last_used
        on_demand = self.spec.on_demand
        return GroupState(
            self.name,
            self.spec.kind,
            self.state,
            on_demand,
            list(self.spec.aliases),
            [w.id for w in self.workers],
            self.spec.ttl_s if on_demand else None,
            round(idle, 1) if on_demand and self.state == "running" else None,
            self.message,
        )


class Supervisor:
    """Runs one fleet spec until asked to stop; see the module docstring."""

    def __init__(
        self,
        spec: FleetSpec,
        *,
        echo: bool = False,
        say: Say | None = None,
        handle_signals: bool = True,
        queue_timeout_s: float | None = None,
        own_log: Path | None = None,
    ) -> None:
        if not spec.planned:
            raise LauncherError(
                f"Fleet '{spec.name}' has groups without planned workers; plan it first."
            )
        problems = spec.problems()
        if problems:
            raise LauncherError(f"Fleet '{spec.name}': {problems[0]}")
        self.spec = spec
        self.fleet = spec.name
        self.workers = [
            Worker(spec.name, i, group.name, worker, echo)
            for i, (group, worker) in enumerate((g, w) for g in spec.groups for w in g.workers)
        ]
        self.groups = {
            g.name: GroupRun(g, [w for w in self.workers if w.state.group == g.name])
            for g in spec.groups
        }
        for run in self.groups.values():
            if run.spec.on_demand:
                for w in run.workers:
                    w.state.state = "stopped"
        self.say: Say = say or (lambda line: print(line, flush=True))
        self.health_timeout = max(g.server.health_timeout_s for g in spec.groups)
        self.handle_signals = handle_signals
        self.router_config: RouterConfig | None = None
        self.remote_members: list[tuple[str | None, Member]] = []
        if spec.router.enabled:
            self.router_config, self.remote_members = router_setup(spec.router)
            if queue_timeout_s is not None:
                self.router_config.queue_timeout_s = queue_timeout_s
        self.remote_sessions = self._remote_sessions()
        self._remote_pollers = {
            m.name: WorkerPoller(m.url, m.api_key) for _, m in self.remote_members
        }
        self.router: RouterHost | None = None
        self._router_sock: socket.socket | None = None  # bound by _claim, listened on by the router
        self._members: dict[str, Member] = {}
        self.snapshots: dict[str, WorkerSnapshot] = {}  # latest poll, by worker id / member
        self._gpu_sampler: GpuSampler | None = None
        first = spec.groups[0]
        self.state = FleetState(
            spec.name,
            os.getpid(),
            None,
            [w.state for w in self.workers],
            [g.snapshot() for g in self.groups.values()],
            spec.source,
            first.model,
            ",".join(g.layout for g in spec.groups),
            time.time(),
            fleet_state.process_started(os.getpid()),
            spec.router.drain_s,
        )
        self.state.remote_hosts = [vars(h) for h in spec.remote_hosts]
        self._session: aiohttp.ClientSession | None = None
        self._state_error_at = -STATE_ERROR_EVERY_S  # when a failed state write was last said
        self.own_log = own_log  # a detached supervisor's log (its stdout), rotated as it grows
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()  # set once the fleet is serving, or has failed to start
        self._gpu: GpuBackend | None = None  # opened when a worker has cards; closed at the end

    def _remote_sessions(self) -> list[RemoteSession]:
        """One session per remote host, each with local tunnel ports: its groups become
        router members at one, each pooled-rpc group that borrows its cards reaches its
        rpc-server at another (docs/remote.md)."""
        sessions = []
        taken = {w.spec.port for w in self.workers} | {self.spec.router.port}
        for host in self.spec.remote_hosts:
            groups = [g for g in self.spec.remote_groups if g.host == host.name]
            borrowers = [g for g in self.spec.rpc_groups if g.rpc_host == host.name]
            if not groups and not borrowers:
                continue
            if groups and self.router_config is None:
                continue  # FleetSpec.problems says so before planning
            port = free_port(taken, self.spec.router.port + 100)
            taken.add(port)
            rpc_ports = {}
            for g in borrowers:
                planned = _rpc_port(self.groups[g.name].workers)
                rpc_port = (
                    planned
                    if planned and planned not in taken and port_free(planned)
                    else (free_port(taken, self.spec.router.port + 90))
                )
                taken.add(rpc_port)
                rpc_ports[g.name] = rpc_port
            remote_spec = (
                FleetSpec(
                    remote_fleet(self.fleet, host.name),
                    # the main router routes between groups; there each group serves alone
                    tuple(replace(g, host=None, workers=(), route=NO_ROUTE) for g in groups),
                    replace(self.spec.router, members=()),
                ).to_json()
                if groups
                else None
            )
            binaries = {g.name: g.server.llama_server for g in borrowers}
            key = self.router_config.api_key if self.router_config else None
            session = RemoteSession(host, remote_spec, port, self.say, rpc_ports, binaries, key)
            sessions.append(session)
            for g in groups:
                member = Member(
                    f"{host.name}/{g.name}", session.url, api_key=key if session.lan else None
                )
                self.remote_members.append((g.name, member))
        return sessions

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked for (Ctrl-C, SIGTERM or ``request_stop``)."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        self._stop.set()

    def _save(self) -> None:
        groups = [g.snapshot() for g in self.groups.values()]
        for g in groups:
            workers = self.groups[g.name].workers
            g.tok_s = round(sum(w.state.tok_s for w in workers), 1)
            if g.state == "running" and workers and all(w.state.state == "failed" for w in workers):
                g.state = "failed"  # out of restarts
            routed = (self.router.stats.get("groups") or {}) if self.router is not None else {}
            if g.name in routed:
                counts = routed[g.name]
                g.requests = counts["requests"]
                g.queued = counts["queued"]
                g.overflowed = counts["overflowed"]
                g.rule_routed = counts["rule_routed"]
        self.state.groups = groups
        self.state.remote_cards = [
            {"host": r.host.name, **c} for r in self.remote_sessions for c in r.cards
        ]
        try:
            fleet_state.write_state(self.state)
        except OSError as err:  # a full or read-only disk must not stop the fleet
            now = time.monotonic()
            if now - self._state_error_at > STATE_ERROR_EVERY_S:
                self._state_error_at = now
                self.say(
                    f"Cannot write the state of fleet {self.fleet} ({err.strerror or err}); "
                    "the fleet keeps serving, 'status' shows old figures until it can. "
                    "Free space under the state folder."
                )

    def _claim(self) -> None:
        existing = fleet_state.read_state(fleet_state.state_path(self.fleet))
        if (
            existing
            and fleet_state.supervisor_alive(existing)
            and (existing.supervisor_pid != os.getpid())
        ):
            raise LauncherError(
                f"Fleet '{self.fleet}' is already running (supervisor pid "
                f"{existing.supervisor_pid}); stop it with 'llama-launcher down "
                f"{self.fleet}' or choose another name."
            )
        if self.router_config is not None:
            self._router_sock = reserve_port(self.router_config.host, self.router_config.port)
        taken = {w.spec.port for w in self.workers}
        if self.router_config is not None:
            taken.add(self.router_config.port)
        used: set[int] = set()
        for w in self.workers:
            if w.spec.port in used or not port_free(w.spec.port):
                new = free_port(used | taken, w.spec.port + 1)
                self.say(f"Port {w.spec.port} is in use; {w.id} moves to port {new}.")
                w.set_port(new)
            used.add(w.spec.port)

    def _backend(self) -> GpuBackend:
        if self._gpu is None:
            self._gpu = open_backend()
        return self._gpu

    async def run(self) -> int:
        """Start the fleet, supervise it until stopped; 0 on a clean stop, 1 if it failed."""
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
        self._claim()
        self._save()
        try:
            async with aiohttp.ClientSession() as session:
                self._session = session
                # the router listens first: a second fleet on its port fails at once, and
                # requests that come while the models load queue (then 503 saying so)
                if self.router_config is not None:
                    await self._start_router()
                remote = asyncio.create_task(self._start_remote())
                if not await self._start_all(session):
                    remote.cancel()
                    return 1
                await remote
                await self._poll(session)
                self._observe()
                self.ready.set()
                await self._watch(session)
            return 0
        finally:
            self.ready.set()
            for run in self.groups.values():
                if run.task is not None and not run.task.done():
                    run.task.cancel()
            if self.router is not None:
                await self.router.stop(self.spec.router.drain_s)
            await asyncio.gather(*(r.stop(self.spec.router.drain_s) for r in self.remote_sessions))
            if self._router_sock is not None:
                self._router_sock.close()
            if self._gpu_sampler is not None:
                self._gpu_sampler.stop()
            await asyncio.gather(*(w.stop() for w in self.workers))
            for w in self.workers:
                w.log.close()
            if self._gpu is not None:
                self._gpu.close()
            fleet_state.remove_state(self.fleet)
            self.say(f"Fleet {self.fleet} stopped.")

    async def _start_all(self, session: aiohttp.ClientSession) -> bool:
        """Start every group that is not on demand; False (and said why) if one failed."""
        started = time.monotonic()
        resident = [
            g
            for g in self.groups.values()
            if not g.spec.on_demand and g.spec.host is None and g.spec.rpc_host is None
        ]
        workers = [w for g in resident for w in g.workers]
        on_demand = [g.name for g in self.groups.values() if g.spec.on_demand]
        self.say(
            f"Starting fleet {self.fleet}: {len(workers)} worker(s) in {len(resident)} "
            "group(s)" + (f"; on demand: {', '.join(on_demand)}" if on_demand else "") + "."
        )
        failed = await self._start_workers(workers, session, started)
        for g in resident:
            g.state = "failed" if any(w in failed for w in g.workers) else "running"
            g.load_s = time.monotonic() - started
        self._save()
        if failed:
            self.say(
                f"Fleet {self.fleet} did not start: {len(failed)} of {len(workers)} "
                "worker(s) failed; stopping the others."
            )
            return False
        self.say(f"Fleet {self.fleet} is up in {time.monotonic() - started:.1f} s.")
        return True

    async def _start_remote(self) -> None:
        """Start each remote host's groups (at once); a host that cannot be reached marks its
        groups down and the rest of the fleet serves on (overflow skips them)."""

        async def one(remote: RemoteSession) -> None:
            names = remote.group_names
            borrowers = list(remote.rpc_ports)
            what = ", ".join(
                [f"group(s) {', '.join(names)}"] * bool(names)
                + [f"rpc-server(s) for {', '.join(borrowers)}"] * bool(borrowers)
            )
            self.say(f"Starting {what} on host {remote.host.name} over SSH.")
            started = time.monotonic()
            ok = await remote.start()
            for name in names:
                run = self.groups[name]
                run.load_s = time.monotonic() - started
                run.state = "running" if ok else "down"
                run.message = "" if ok else f"host {remote.host.name}: {remote.reason}"
            if ok and names:
                self.say(
                    f"Group(s) {', '.join(names)} serve on host {remote.host.name} "
                    f"(through {remote.url})."
                )
            elif not ok:
                self.say(
                    f"Host {remote.host.name} is down: {remote.reason}. Its group(s) "
                    f"{', '.join(names + borrowers)} are marked down; the rest of the fleet "
                    "serves on."
                )
                for name in borrowers:
                    run = self.groups[name]
                    run.state = "down"
                    run.message = f"host {remote.host.name}: {remote.reason}"
            if ok and borrowers and self._session is not None:
                await self._start_borrowers(remote, borrowers, self._session)
            self._save()
            self._observe()

        await asyncio.gather(*(one(r) for r in self.remote_sessions))

    async def _start_borrowers(
        self, remote: RemoteSession, names: list[str], session: aiohttp.ClientSession
    ) -> None:
        """Start the pooled-rpc groups whose rpc-servers on ``remote`` are now reachable."""
        started = time.monotonic()
        workers = []
        for name in names:
            for w in self.groups[name].workers:
                w.set_rpc((remote.rpc_endpoint(name),))
                workers.append(w)
        failed = await self._start_workers(workers, session, started)
        for name in names:
            run = self.groups[name]
            run.load_s = time.monotonic() - started
            run.state = "failed" if any(w in failed for w in run.workers) else "running"
            if run.state == "running":
                self.say(
                    f"Group {name} serves, pooling host {remote.host.name}'s cards over RPC "
                    f"({remote.rpc_endpoint(name)})."
                )

    async def _start_workers(
        self, workers: list[Worker], session: aiohttp.ClientSession, started: float
    ) -> list[Worker]:
        """Start ``workers`` at once and wait for each to be healthy; the ones that failed
        (each said, with the end of its log)."""
        for w in workers:
            w.state.state = "starting"
            await w.start()
        self._save()
        results = await asyncio.gather(
            *(self._until_healthy(w, session, started) for w in workers),
            return_exceptions=True,
        )
        failed = [(w, r) for w, r in zip(workers, results, strict=True) if r is not None]
        for w, err in failed:
            w.state.state = "failed"
            w.state.message = str(err).splitlines()[0]
            self.say(str(err))
        return [w for w, _ in failed]

    # -- on-demand groups (RouterControl) ---------------------------------------------------

    def load_group(self, name: str) -> None:
        """Load group ``name`` in the background (nothing if loaded or loading); after an
        unload in progress, once it is done."""
        run = self.groups.get(name)
        if run is None or self._session is None:
            return
        if run.state in ("running", "loading") and not run.unloading:
            return
        run.state = "loading"
        run.unloading = False
        run.task = asyncio.create_task(self._load(run, self._session, after=run.task))

    def group_used(self, name: str, in_flight: int) -> None:
        run = self.groups.get(name)
        if run is not None:
            run.last_used = time.monotonic()
            run.in_flight = in_flight

    def unload_group(self, name: str, why: str) -> None:
        """Stop group ``name``'s workers in the background; it is "unloaded" once they are."""
        run = self.groups.get(name)
        if run is None or run.state == "unloaded" or run.unloading:
            return
        if run.task is not None and not run.task.done():
            run.task.cancel()  # a load in progress
        run.unloading = True
        run.task = asyncio.create_task(self._unload(run, why))

    async def _load(
        self,
        run: GroupRun,
        session: aiohttp.ClientSession,
        after: asyncio.Task[None] | None = None,
    ) -> None:
        if after is not None and not after.done():
            with contextlib.suppress(asyncio.CancelledError):
                await after
        started = time.monotonic()
        for other in run.spec.exclusive_with:
            evicted = self.groups[other]
            if evicted.state in ("running", "loading"):
                self.say(
                    f"Unloading {other} to make room for {run.name} (the plan says they "
                    "cannot be resident together)."
                )
                if evicted.task is not None and not evicted.task.done():
                    evicted.task.cancel()
                await self._unload(evicted, f"to make room for {run.name}")
        run.loading_since = started
        self.say(f"Loading group {run.name} on demand: {len(run.workers)} worker(s).")
        self._publish_groups()
        self._save()
        used = {x.spec.port for x in self.workers if x not in run.workers}
        for w in run.workers:
            if not port_free(w.spec.port):
                new = free_port(used | {x.spec.port for x in run.workers}, w.spec.port + 1)
                self.say(f"Port {w.spec.port} is in use; {w.id} moves to port {new}.")
                w.set_port(new)
                self._moved(w)
        failed = await self._start_workers(run.workers, session, started)
        if failed:
            await asyncio.gather(*(w.stop() for w in run.workers))
            for w in failed:
                w.state.state = "failed"
            run.state = "failed"
            run.message = failed[0].state.message
        else:
            run.state = "running"
            run.message = ""
            run.last_used = time.monotonic()
            run.load_s = run.last_used - started
            self.say(f"Group {run.name} loaded in {time.monotonic() - started:.1f} s.")
        self._publish_groups()
        self._save()

    async def _unload(self, run: GroupRun, why: str) -> None:
        run.unloading = True
        await asyncio.gather(*(w.stop() for w in run.workers))
        run.unloading = False
        run.state = "unloaded"
        run.message = f"unloaded {why}"
        self.say(f"Group {run.name} unloaded {why}.")
        self._publish_groups()
        self._save()

    def _expire(self) -> None:
        """Unload the on-demand groups unused for their TTL."""
        now = time.monotonic()
        for run in self.groups.values():
            idle = now - run.last_used
            if (
                run.spec.on_demand
                and run.state == "running"
                and not run.unloading
                and run.in_flight == 0
                and idle > run.spec.ttl_s
            ):
                self.unload_group(run.name, f"after {idle:.0f} s unused (ttl {run.spec.ttl_s:g} s)")

    def _take_requests(self) -> None:
        """``group load|unload`` from other terminals (files in the control folder)."""
        for action, name in fleet_state.take_requests(self.fleet):
            if name not in self.groups:
                self.say(f"Ignored a request to {action} {name}: no such group.")
            elif action == "load":
                self.load_group(name)
            elif action == "unload":
                self.unload_group(name, "on request")

    def _group_states(self) -> dict[str, str]:
        """Each group's state for the router: a running group whose workers are all out of
        restarts is failed (503 at once), one whose workers are all restarting is restarting
        (requests queue for it)."""
        out = {}
        for remote in self.remote_sessions:
            for name in remote.group_names + list(remote.rpc_ports):
                run = self.groups[name]
                if name in remote.rpc_ports and remote.state != "down":
                    continue  # its worker runs here: its own state
                if remote.state == "down" and run.state != "down":
                    run.state = "down"
                    run.message = f"host {remote.host.name}: {remote.reason}"
                elif remote.state == "running":
                    run.state = remote.groups.get(run.name, "running")
        for name, run in self.groups.items():
            state = run.state
            if state == "running":
                workers = {w.state.state for w in run.workers}
                if workers and workers <= {"failed"}:
                    state = "failed"
                elif "healthy" not in workers and "restarting" in workers:
                    state = "restarting"
            out[name] = state
        return out

    def _publish_groups(self) -> None:
        self._observe()

    def _observe(self) -> None:
        """Hand the router the latest poll, the groups' states, when a group that is not
        serving should be ready, and the GPU readings."""
        if self.router is not None:
            self.router.observe(
                self.snapshots, self._group_states(), self._gpu_gauges(), self._ready_in()
            )

    def _ready_in(self) -> dict[str, float]:
        """Seconds until each loading or restarting group should serve, where known: the
        rest of its last load time, after the back-off of a restarting worker."""
        now = time.monotonic()
        out = {}
        for name, state in self._group_states().items():
            run = self.groups[name]
            if run.load_s is None:
                continue
            if state == "unloaded":  # as long as its last load, once it is asked for
                out[name] = run.load_s
            elif state == "loading":
                out[name] = max(0.0, run.load_s - (now - run.loading_since))
            elif state == "restarting":
                waits = [w.back_at - now for w in run.workers if w.state.state == "restarting"]
                out[name] = max(0.0, min(waits, default=0.0)) + run.load_s
        return out

    def _router_message(self, message: dict[str, Any]) -> None:
        """What the router asks (``RouterControl`` over the channel)."""
        if message["type"] == "load":
            self.load_group(str(message["group"]))
        elif message["type"] == "used":
            self.group_used(str(message["group"]), int(message["in_flight"]))

    def _moved(self, w: Worker) -> None:
        """A worker's port changed: the router reaches it there."""
        if w.id in self._members:
            self._members[w.id].url = w.state.url
        if self.router is not None:
            self.router.set_url(w.id, w.state.url)

    async def _start_router(self) -> None:
        """Serve the fleet's endpoint: every worker, plus the profile's remote members."""
        assert self.router_config is not None
        for w in self.workers:
            self._members[w.id] = Member(w.id, w.state.url, cards=w.spec.cards)
        first = self.spec.groups[0].name
        groups = [
            RouteGroup(
                g.name,
                [self._members[w.id] for w in self.groups[g.name].workers]
                + [m for group, m in self.remote_members if (group or first) == g.name],
                aliases=g.aliases,
                kind=g.kind,
                route=g.route,
                on_demand=g.on_demand,
                state=self.groups[g.name].state,
            )
            for g in self.spec.groups
        ]
        cards = sorted({c for w in self.workers for c in w.spec.cards})
        if cards:
            self._gpu_sampler = GpuSampler(self._backend(), cards, lambda samples, tick: None)
            self._gpu_sampler.start()
        assert self._router_sock is not None
        self.router = RouterHost(
            spec_message(self.router_config, groups, self.spec.router.default_model),
            self._router_sock,
            self._router_message,
            self.say,
        )
        await self.router.start()
        self._observe()
        self.state.router = {
            "url": self.router.url,
            "host": self.router_config.host,
            "port": self.router_config.port,
            "members": [m.url for _, m in self.remote_members],
            "pid": self.router.pid,
        }
        members = sum(len(g.members) for g in groups)
        self.say(f"Router for fleet {self.fleet} on {self.router.url} ({members} member(s)).")
        self._save()

    def _gpu_gauges(self) -> list[tuple[str, dict[str, str], float]]:
        """Per-card NVML readings for the router's /metrics."""
        out: list[tuple[str, dict[str, str], float]] = []
        if self._gpu_sampler is None:
            return out
        for index, s in sorted(self._gpu_sampler.latest.items()):
            labels = {"gpu": str(index)}
            readings = [
                ("gpu_memory_used_bytes", s.memory_used_bytes),
                ("gpu_pcie_rx_kib_s", s.pcie_rx_kib_s),
                ("gpu_pcie_tx_kib_s", s.pcie_tx_kib_s),
                ("gpu_power_watts", s.power_draw_w),
                ("gpu_temperature_celsius", s.temperature_c),
                ("gpu_busy_percent", s.gpu_busy_pct),
            ]
            if s.bandwidth_pct is not None:
                kind = "dram" if s.dram_bandwidth_pct is not None else "memory_busy"
                out.append(
                    (
                        "gpu_memory_bandwidth_percent",
                        {**labels, "source": kind},
                        float(s.bandwidth_pct),
                    )
                )
            out += [(name, labels, float(v)) for name, v in readings if v is not None]
        return out

    async def _until_healthy(
        self, w: Worker, session: aiohttp.ClientSession, started: float
    ) -> BaseException | None:
        try:
            await w.wait_healthy(session, self.health_timeout, self.say)
        except LauncherError as err:
            return err
        w.state.state = "healthy"
        self.say(f"{w.id} healthy on {w.state.url} ({time.monotonic() - started:.1f} s)")
        self._save()
        return None

    async def _poll(self, session: aiohttp.ClientSession) -> None:
        """One poll of every worker and remote member: the snapshots the router, the state
        file and the TUI read. A worker that is not serving (starting, restarting, failed)
        counts as unhealthy without being asked."""
        serving = [w for w in self.workers if w.state.state == "healthy"]
        polled = await asyncio.gather(
            *(w.poller.poll(session) for w in serving),
            *(p.poll(session) for p in self._remote_pollers.values()),
        )
        now = time.monotonic()
        for w in self.workers:
            self.snapshots[w.id] = WorkerSnapshot(now, False)
        for w, snap in zip(serving, polled, strict=False):
            self.snapshots[w.id] = snap
            if snap.healthy:
                w.state.tok_s = round(snap.tok_s, 1)
                w.state.slots_busy = snap.slots_busy
                w.state.slots_total = snap.slots_total
        for name, snap in zip(self._remote_pollers, polled[len(serving) :], strict=True):
            self.snapshots[name] = snap

    def _retry_remote(self, retrying: set[asyncio.Task[None]]) -> None:
        """Try each host that went down again, backing off (5 s, doubling to a minute)."""
        for remote in self.remote_sessions:
            remote.check()
            if remote.due() and not any(t.get_name() == remote.host.name for t in retrying):
                task = asyncio.create_task(self._reconnect(remote), name=remote.host.name)
                retrying.add(task)
                task.add_done_callback(retrying.discard)

    async def _reconnect(self, remote: RemoteSession) -> None:
        names = remote.group_names + list(remote.rpc_ports)
        self.say(f"Trying host {remote.host.name} again (attempt {remote.retries + 1}).")
        if await remote.reconnect():
            for name in remote.group_names:
                self.groups[name].state = "running"
                self.groups[name].message = ""
            if remote.rpc_ports and self._session is not None:
                # their workers lost their devices with the host: start them afresh
                borrowers = list(remote.rpc_ports)
                await asyncio.gather(
                    *(w.stop() for name in borrowers for w in self.groups[name].workers)
                )
                await self._start_borrowers(remote, borrowers, self._session)
            self.say(f"Host {remote.host.name} is back: group(s) {', '.join(names)} serve again.")
        else:
            wait = (remote.retry_at or time.monotonic()) - time.monotonic()
            self.say(
                f"Host {remote.host.name} is still down ({remote.reason}); next try in "
                f"{max(wait, 0):.0f} s."
            )
        self._save()
        self._observe()

    async def _watch(self, session: aiohttp.ClientSession) -> None:
        restarting: set[asyncio.Task[None]] = set()
        retrying: set[asyncio.Task[None]] = set()
        tick = 0
        while not self._stop.is_set():
            for w in self.workers:
                proc = w.proc
                down = self.groups[w.state.group].state == "down"  # waits for its host
                if (
                    w.state.state == "healthy"
                    and proc is not None
                    and proc.returncode is not None
                    and not down
                ):
                    task = asyncio.create_task(self._restart(w, session, proc.returncode))
                    restarting.add(task)
                    task.add_done_callback(restarting.discard)
            self._take_requests()
            self._expire()
            self._retry_remote(retrying)
            await self._poll(session)
            if self.router is not None:
                await self.router.watch()
                if self.state.router is not None:
                    self.state.router["pid"] = self.router.pid
                    self.state.router["restarts"] = self.router.restarts
            self._observe()
            tick += 1
            if tick % 10 == 0:
                self._rotate_own_log()
            if tick % 10 == 1 and any(w.spec.cards for w in self.workers):
                await self._gpu_usage()
            if tick % 2 == 1:
                self._save()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), POLL_INTERVAL_S)
        for task in (*restarting, *retrying):
            task.cancel()

    def _rotate_own_log(self) -> None:
        """A detached supervisor's log past ``LOG_MAX_BYTES``: kept as ``.log.1``, and this
        process (and the router it starts next) writes a new one."""
        path = self.own_log
        try:
            if path is None or path.stat().st_size <= LOG_MAX_BYTES:
                return
            sys.stdout.flush()
            path.replace(path.with_suffix(".log.1"))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        except OSError:
            pass  # a full or read-only disk: keep writing where it was

    async def _gpu_usage(self) -> None:
        """Which cards NVML sees each worker on, and how much memory it holds there."""
        try:
            cards = await asyncio.to_thread(self._backend().cards)
        except Exception as err:  # NVML trouble must not stop the fleet
            self.say(f"GPU memory per worker unavailable: {err}")
            return
        for w in self.workers:
            used = [
                (c.index, p.used_bytes or 0)
                for c in cards
                for p in c.processes
                if p.pid == w.state.pid
            ]
            w.state.nvml_cards = [i for i, _ in used]
            w.state.vram_bytes = sum(b for _, b in used) if used else None

    async def _restart(self, w: Worker, session: aiohttp.ClientSession, code: int) -> None:
        """Start a crashed worker again after a back-off, until healthy or out of restarts."""
        while True:
            now = time.monotonic()
            w.restart_times = [t for t in w.restart_times if now - t < RESTART_WINDOW_S]
            await w._drain()
            if len(w.restart_times) >= MAX_RESTARTS:
                w.state.state = "failed"
                w.state.message = (
                    f"exited with code {code}; {MAX_RESTARTS} restarts in "
                    f"{RESTART_WINDOW_S / 60:.0f} min, giving up"
                )
                self.say(f"{w.id} {w.state.message}. The end of its log:\n{w.last_lines()}")
                self._save()
                return
            delay = min(30.0, 2.0 ** len(w.restart_times))
            w.back_at = now + delay  # when it starts loading again
            w.restart_times.append(now)
            w.state.state = "restarting"
            w.state.restarts += 1
            w.state.message = (
                f"exited with code {code}; restart {w.state.restarts} in {delay:.0f} s"
            )
            w.state.tok_s = 0.0
            self.say(f"{w.id} {w.state.message}")
            self._save()
            await asyncio.sleep(delay)
            if self._stop.is_set():
                return
            if not port_free(w.spec.port):
                new = free_port({x.spec.port for x in self.workers}, w.spec.port + 1)
                self.say(f"Port {w.spec.port} is in use; {w.id} moves to port {new}.")
                w.set_port(new)
                self._moved(w)
            await w.start()
            try:
                await w.wait_healthy(session, self.health_timeout, self.say)
                break
            except LauncherError as err:
                self.say(str(err))
                proc = w.proc
                if proc is not None and proc.returncode is None:  # hung while loading
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
                code = proc.returncode if proc is not None and proc.returncode is not None else -1
        w.state.state = "healthy"
        w.state.message = ""
        self.say(f"{w.id} is back and healthy (restart {w.state.restarts}).")
        self._save()


def run_supervisor(supervisor: Supervisor) -> int:
    """Run ``supervisor`` on a fresh event loop; returns its exit code."""
    return asyncio.run(supervisor.run())
