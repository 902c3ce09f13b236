"""The router: one OpenAI-compatible endpoint in front of the fleet's workers (aiohttp).

Routes: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/rerank``,
``/v1/models``, llama.cpp's ``/completion``, ``/health`` and ``/metrics`` (Prometheus text).

The fleet's model groups each have their own members and queue (``RouteGroup``). A request's
``model`` picks the group by exact name or alias (with one group, any name or none goes to
it); no name goes to the fleet's default model (or the only group of the route's kind), else
400; an unknown name gets 404; both list the names served. A group's rules may send it
elsewhere: prompts under a size to ``short_to``, and, when its slots are full and its queue
passes a bound (or its predicted wait a time), to ``overflow_to``. An on-demand group that is
not loaded is asked for through ``RouterControl`` (the supervisor) and its requests queue
while it loads. Responses name the group and worker that served them (``X-Llama-Launcher-*``
headers; the ``model`` the worker answers with is the group's name). Streams pass
through chunk by chunk; a client that goes away cancels its upstream request. A request is
retried on another member only when the first failed before any byte reached the client.
Members leave rotation at their first failed request or unhealthy snapshot and come back
with the next healthy one: the router does not poll, it reads the snapshots its owner passes
to ``observe`` (the supervisor's pollers). A non-loopback address requires an API key,
checked on every route but ``/health``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from launcher.errors import LauncherError
from launcher.llamacpp.poll import WorkerSnapshot
from launcher.llamacpp.wire import tokens_in
from launcher.router.balancer import Balancer, Member, QueueFull, SpeedMeter, affinity_key
from launcher.spec.fleet import NO_ROUTE, GroupRoute

LOOPBACK = ("127.0.0.1", "localhost", "::1")
_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "host",
    "authorization",
}

_GENERATION = {"/completion", "/completions", "/v1/completions", "/v1/chat/completions"}
_EMBEDDING = {"/v1/embeddings", "/embedding", "/embeddings"}
_RERANK = {"/v1/rerank", "/rerank", "/reranking", "/v1/reranking"}
_ROUTE_FOR_KIND = {
    "generation": "/v1/chat/completions",
    "embedding": "/v1/embeddings",
    "rerank": "/v1/rerank",
}
GROUP_HEADER = "X-Llama-Launcher-Group"
WORKER_HEADER = "X-Llama-Launcher-Worker"
ROUTED_HEADER = "X-Llama-Launcher-Routed"  # "overflow" or "rule" when another group served it
CHARS_PER_TOKEN = 4  # the size rule's estimate of a prompt's tokens
# "down": a group on another box that cannot be reached (docs/remote.md)
GROUP_STATES = ("running", "loading", "restarting", "unloaded", "failed", "down")

GaugeSource = Callable[[], list[tuple[str, dict[str, str], float]]]
"""Extra gauges for /metrics: (name, labels, value), e.g. per-card NVML readings."""


MIB = 1 << 20
STOP_CLOSE_S = 2.0  # after the drain, how long handlers get before they are cancelled
UPSTREAM_IDLE_S = 2.0  # how long an idle upstream connection is kept for the next request
BUSY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: 108\r\n\r\n"
    b'{"error": {"message": "the router has too many connections open", '
    b'"type": "unavailable", "code": 503}}'
)


@dataclass
class RouterConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    max_queue: int = 256
    queue_timeout_s: float = 30.0
    affinity: bool = False
    upstream_timeout_s: float = 600.0
    max_body_bytes: int = 8 * MIB  # a request body beyond this gets 413
    max_held_bytes: int = 256 * MIB  # request bodies held at once (queued or in flight)
    max_connections: int = 0  # 0: from the file-descriptor limit (``connection_bound``)
    idle_timeout_s: float = 15.0  # a connection that sends no (complete) request is closed
    body_timeout_s: float = 30.0  # a request body that has not all arrived by then gets 408


def connection_bound() -> int:
    """How many client connections the router keeps open: its file-descriptor limit, raised
    to the hard limit, less what the workers' connections, logs and the rest need."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return max(64, min(soft - 256, soft * 3 // 4))


class RouterControl(Protocol):
    """What the router asks of the supervisor (DESIGN.md, "Processes"): load an on-demand
    group, and note that a group is in use (``in_flight`` requests now), for its TTL."""

    def load_group(self, name: str) -> None: ...

    def group_used(self, name: str, in_flight: int) -> None: ...


@dataclass
class RouteGroup:
    """One model group behind the router: the names it serves, its members and queue, its
    rules, and what happened to its requests (for ``/metrics``)."""

    name: str
    members: list[Member]
    aliases: tuple[str, ...] = ()
    kind: str = "generation"
    route: GroupRoute = NO_ROUTE
    on_demand: bool = False
    state: str = "running"  # GROUP_STATES, as the supervisor last said
    max_queue: int = 256
    affinity: bool = False
    requests: int = 0  # requests for this group (by name, default or rule)
    overflowed: int = 0  # of those, served by its overflow group
    rule_routed: int = 0  # of those, sent to short_to by the size rule
    latency_s: float = 0.0  # moving average of a request's time, for the predicted wait
    ready_in_s: float | None = None  # loading or restarting: seconds until it should serve
    balancer: Balancer = field(init=False)

    def __post_init__(self) -> None:
        self.balancer = Balancer(self.members, self.max_queue, self.affinity)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def in_flight(self) -> int:
        return sum(m.in_flight for m in self.members)

    @property
    def serving(self) -> bool:
        return any(m.healthy for m in self.members)

    def predicted_wait_s(self) -> float:
        """How long a request that queues now would wait: the queue ahead of it, served
        ``slots`` at a time at the recent request time."""
        slots = sum(m.slots for m in self.members if m.healthy) or 1
        return (self.balancer.waiting + 1) * self.latency_s / slots

    def served(self, seconds: float) -> None:
        self.latency_s = seconds if self.latency_s == 0 else 0.8 * self.latency_s + 0.2 * seconds


def prompt_tokens(body: dict[str, Any]) -> int:
    """An estimate of a request's prompt tokens, from its characters (the size rule)."""
    prompt = body.get("prompt", body.get("input", ""))
    chars = len(prompt) if isinstance(prompt, str) else len(json.dumps(prompt))
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            chars += len(content) if isinstance(content, str) else len(json.dumps(content or ""))
    return chars // CHARS_PER_TOKEN


def path_kind(path: str) -> str | None:
    """The group kind a route serves (None: any, e.g. /tokenize)."""
    if path in _GENERATION:
        return "generation"
    if path in _EMBEDDING:
        return "embedding"
    if path in _RERANK:
        return "rerank"
    return None


def require_key_for(host: str, api_key: str | None, env_name: str | None) -> None:
    """Refuse a network-reachable router without an API key."""
    if host not in LOOPBACK and not api_key:
        where = f"${env_name} is empty" if env_name else "no API key is set"
        raise LauncherError(
            f"The router would listen on {host}, reachable from the network, but "
            f"{where}; pass --api-key-env VAR with the key in VAR, or listen on "
            "127.0.0.1."
        )


class Router:
    """The endpoint; ``start()`` inside a running event loop, ``stop()`` to close it."""

    def __init__(
        self,
        groups: list[RouteGroup],
        config: RouterConfig,
        gauges: GaugeSource | None = None,
        *,
        default_model: str | None = None,
        control: RouterControl | None = None,
    ) -> None:
        require_key_for(config.host, config.api_key, None)
        if not groups:
            raise LauncherError("A router needs at least one model group.")
        self.config = config
        self.groups = {g.name: g for g in groups}
        for g in groups:
            g.balancer.max_queue = config.max_queue
            g.balancer.affinity = config.affinity
        self.by_name = {n: g for g in groups for n in g.names}
        self.default_model = default_model
        self.control = control
        self.gauges = gauges
        self.queued_total = 0
        self.rejected_total = 0
        self.truncated_total = 0  # answers a worker cut short (each told to its client)
        self.too_large_total = 0
        self.held_bytes = 0  # request bodies the router holds now
        self.stopping = False  # a stop was asked: no new requests
        self._streams: set[web.StreamResponse] = set()  # answers being streamed now
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._meters: dict[str, SpeedMeter] = {}
        self._started = int(time.time())

    @property
    def members(self) -> list[Member]:
        return [m for g in self.groups.values() for m in g.members]

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::") else self.config.host
        return f"http://{host}:{self.config.port}"

    # -- life ---------------------------------------------------------------------------

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on the configured address, or on ``sock`` (bound already, by the
        supervisor, so that a second fleet on the port fails at once)."""
        # upstream connections are kept for reuse, for less than llama-server keeps an idle
        # one (5 s): a request never goes out on a connection the worker is closing
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=UPSTREAM_IDLE_S),
        )
        app = web.Application(middlewares=[self._auth], client_max_size=self.config.max_body_bytes)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/models", self._models)
        for path in (
            "/v1/chat/completions",
            "/v1/completions",
            "/completion",
            "/completions",
            *_EMBEDDING,
            *_RERANK,
            "/tokenize",
            "/detokenize",
        ):
            app.router.add_post(path, self._proxy)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            keepalive_timeout=self.config.idle_timeout_s,
            shutdown_timeout=STOP_CLOSE_S,  # after the drain (``stop``), not instead of it
        )
        await self._runner.setup()
        self._bound_connections()
        site: web.BaseSite = (
            web.SockSite(self._runner, sock)
            if sock is not None
            else web.TCPSite(self._runner, self.config.host, self.config.port)
        )
        try:
            await site.start()
        except OSError as err:
            await self.stop()
            raise LauncherError(
                f"The router cannot listen on {self.config.host}:"
                f"{self.config.port} ({err.strerror}); stop what uses it or "
                "choose another --port."
            ) from err

    def _bound_connections(self) -> None:
        """Past the bound, a new connection is answered 503 and closed at once, so that idle
        or half-sent connections cannot use up the descriptors the fleet needs."""
        assert self._runner is not None and self._runner.server is not None
        server = self._runner.server
        limit = self.config.max_connections or connection_bound()
        self.connection_limit = limit
        accept = server.connection_made

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            accept(handler, transport)
            if len(server.connections) > limit:
                self.rejected_total += 1
                transport.write(BUSY_ANSWER)
                transport.close()

        server.connection_made = connection_made  # type: ignore[method-assign]

    async def stop(self, drain_s: float = 0.0) -> None:
        """Stop: new requests get 503 at once; those in flight have ``drain_s`` seconds to
        finish; streams still open then end with an error event that says the answer is cut
        short (never a clean end), and the rest is closed."""
        self.stopping = True
        deadline = time.monotonic() + drain_s
        while self._busy_now() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for out in list(self._streams):
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await out.write(_cut_event("", "the fleet is stopping"))
                await out.write_eof()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _busy_now(self) -> bool:
        return any(g.in_flight or g.balancer.waiting for g in self.groups.values())

    # -- what the pollers saw ------------------------------------------------------------

    def _headers(self, m: Member) -> dict[str, str]:
        return {"Authorization": f"Bearer {m.api_key}"} if m.api_key else {}

    async def observe(
        self,
        snapshots: dict[str, WorkerSnapshot],
        group_states: dict[str, str] | None = None,
        ready_in: dict[str, float] | None = None,
    ) -> None:
        """Take the latest poll of each member (by name): health, slots, decode speed; each
        group's state as the supervisor sees it (running, loading, restarting, unloaded,
        failed) and, for one that is not serving, when it should be ready (seconds)."""
        for name, state in (group_states or {}).items():
            if name in self.groups:
                self.groups[name].state = state
                self.groups[name].ready_in_s = (ready_in or {}).get(name)
        for m in self.members:
            snap = snapshots.get(m.name)
            if snap is None:
                continue
            if snap.healthy and snap.slots:
                m.slots = len(snap.slots)
                m.pin_slots = all(s.id is not None for s in snap.slots)
                if m.pin_slots:
                    busy = {s.id for s in snap.slots if s.processing and s.id is not None}
                    m.slots_foreign = busy - m.slots_taken
                meter = self._meters.setdefault(m.name, SpeedMeter())
                rate = meter.update(snap.time_s, snap.slots)
                if rate is not None:
                    m.tok_s_per_slot = rate
                m.speeds = meter.by_slots()
            if snap.healthy and not m.healthy and m.last_failure:
                m.last_failure = 0.0
            m.healthy = snap.healthy
        for g in self.groups.values():
            await g.balancer.notify()

    # -- routes ---------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        key = self.config.api_key
        if key and request.path != "/health":
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                return web.json_response(
                    {
                        "error": {
                            "message": "Invalid or missing API key",
                            "type": "authentication_error",
                            "code": 401,
                        }
                    },
                    status=401,
                )
        response: web.StreamResponse = await handler(request)
        return response

    async def _health(self, request: web.Request) -> web.Response:
        healthy = [m for m in self.members if m.healthy]
        status = 200 if healthy else 503
        return web.json_response(
            {
                "status": "ok" if healthy else "no healthy worker",
                "healthy": len(healthy),
                "members": len(self.members),
                "groups": {g.name: self._group_state(g) for g in self.groups.values()},
            },
            status=status,
        )

    def _group_state(self, g: RouteGroup) -> str:
        if g.on_demand or g.state != "running":
            return g.state
        return "running" if g.serving else "failed"

    async def _models(self, request: web.Request) -> web.StreamResponse:
        """Every name the fleet serves, with its group, kind and state (OpenAI's list)."""
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": name,
                        "object": "model",
                        "created": self._started,
                        "owned_by": "llama-launcher",
                        "group": g.name,
                        "kind": g.kind,
                        "state": self._group_state(g),
                    }
                    for g in self.groups.values()
                    for name in g.names
                ],
            }
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        lines = []

        def metric(
            name: str, kind: str, help_text: str, values: Sequence[tuple[dict[str, str], float]]
        ) -> None:
            lines.append(f"# HELP llama_launcher_{name} {help_text}")
            lines.append(f"# TYPE llama_launcher_{name} {kind}")
            for labels, value in values:
                text = ",".join(f'{k}="{v}"' for k, v in labels.items())
                lines.append(
                    f"llama_launcher_{name}{{{text}}} {_number(value)}"
                    if text
                    else f"llama_launcher_{name} {_number(value)}"
                )

        per = [
            ({"worker": m.name, "group": g.name}, m)
            for g in self.groups.values()
            for m in g.members
        ]
        groups = self.groups.values()
        metric(
            "requests_total",
            "counter",
            "Requests sent to each worker.",
            [(lab, m.requests) for lab, m in per]
            + [({"worker": "all"}, sum(m.requests for _, m in per))],
        )
        metric(
            "requests_in_flight",
            "gauge",
            "Requests in flight on each worker.",
            [(lab, m.in_flight) for lab, m in per],
        )
        metric(
            "errors_total",
            "counter",
            "Requests that failed on each worker.",
            [(lab, m.errors) for lab, m in per],
        )
        metric(
            "tokens_total",
            "counter",
            "Tokens generated, as the workers reported them.",
            [(lab, m.tokens) for lab, m in per]
            + [({"worker": "all"}, sum(m.tokens for _, m in per))],
        )
        metric(
            "worker_healthy",
            "gauge",
            "1 when the worker is in rotation.",
            [(lab, 1.0 if m.healthy else 0.0) for lab, m in per],
        )
        metric(
            "queued",
            "gauge",
            "Requests waiting for a free slot.",
            [({"group": g.name}, g.balancer.waiting) for g in groups],
        )
        metric(
            "group_requests_total",
            "counter",
            "Requests for each group (by name, default model or rule).",
            [({"group": g.name}, g.requests) for g in groups],
        )
        metric(
            "overflowed_total",
            "counter",
            "Requests for each group served by its overflow group.",
            [({"group": g.name, "to": g.route.overflow_to or ""}, g.overflowed) for g in groups],
        )
        metric(
            "rule_routed_total",
            "counter",
            "Requests for each group sent to another by its size rule.",
            [({"group": g.name, "to": g.route.short_to or ""}, g.rule_routed) for g in groups],
        )
        metric(
            "group_loaded",
            "gauge",
            "1 when the group's workers are loaded (on-demand groups load on first request).",
            [
                ({"group": g.name}, 1.0 if self._group_state(g) == "running" else 0.0)
                for g in groups
            ],
        )
        metric(
            "rejected_total",
            "counter",
            "Requests or connections turned away: queue full, timed out, too many connections.",
            [({}, self.rejected_total)],
        )
        metric(
            "truncated_total",
            "counter",
            "Answers a worker cut short (the client got an error event or a 502).",
            [({}, self.truncated_total)],
        )
        metric(
            "too_large_total",
            "counter",
            "Requests refused for a body over the limit (413).",
            [({}, self.too_large_total)],
        )
        if self.gauges is not None:
            grouped: dict[str, list[tuple[dict[str, str], float]]] = {}
            for name, labels, value in self.gauges():
                grouped.setdefault(name, []).append((labels, value))
            for name, values in grouped.items():
                metric(name, "gauge", f"GPU {name.replace('_', ' ')} (NVML).", values)
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    def _error(self, status: int, message: str, kind: str) -> web.Response:
        return web.json_response(
            {"error": {"message": message, "type": kind, "code": status}}, status=status
        )

    def _group_for(self, path: str, body: object) -> RouteGroup | web.Response:
        """The group a request names (see the module docstring), or the error response."""
        groups = list(self.groups.values())
        wanted = body.get("model") if isinstance(body, dict) else None
        kind = path_kind(path)
        names = ", ".join(self.by_name)
        if len(groups) == 1:
            return groups[0]
        if isinstance(wanted, str) and wanted:
            group = self.by_name.get(wanted)
            if group is None:
                return self._error(
                    404,
                    f"The model '{wanted}' is not served here; models: {names}.",
                    "model_not_found",
                )
            if kind is not None and group.kind != kind:
                return self._error(
                    400,
                    f"The model '{wanted}' is a {group.kind} model; send it to "
                    f"{_ROUTE_FOR_KIND[group.kind]}.",
                    "invalid_request_error",
                )
            return group
        default = self.by_name.get(self.default_model or "")
        if default is not None and kind in (None, default.kind):
            return default
        of_kind = [g for g in groups if g.kind == kind]
        if len(of_kind) == 1:
            return of_kind[0]
        return self._error(
            400,
            f"Name a model in the request's 'model' field; models: {names}.",
            "invalid_request_error",
        )

    def _reroute(self, group: RouteGroup, body: object) -> tuple[RouteGroup, str | None]:
        """Where a request for ``group`` goes, by its rules: (group, None) to stay, or the
        other group and why ("rule", "overflow")."""
        route = group.route
        if (
            route.short_to
            and route.short_prompt_tokens
            and isinstance(body, dict)
            and prompt_tokens(body) < route.short_prompt_tokens
        ):
            return self.groups[route.short_to], "rule"
        if route.overflow_to and group.balancer.pick() is None:
            # a group whose box cannot be reached waits for nothing: its overflow takes it all
            queued = group.state == "down" or group.balancer.waiting >= route.overflow_queue
            slow = (
                route.overflow_wait_s is not None
                and group.predicted_wait_s() > route.overflow_wait_s
            )
            other = self.groups[route.overflow_to]
            if (queued or slow) and other.balancer.pick() is not None:
                return other, "overflow"
        return group, None

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        if self.stopping:
            return self._busy("the fleet is stopping")
        try:
            raw = await asyncio.wait_for(request.read(), self.config.body_timeout_s)
        except TimeoutError:
            self.rejected_total += 1
            return self._error(
                408,
                f"The request body did not arrive within {self.config.body_timeout_s:g} s.",
                "invalid_request_error",
            )
        except web.HTTPRequestEntityTooLarge:
            self.too_large_total += 1
            return self._error(
                413,
                f"The request body is over {self.config.max_body_bytes // MIB} MiB, this "
                "fleet's limit (router.max_body_mb in its profile).",
                "invalid_request_error",
            )
        if self.held_bytes + len(raw) > self.config.max_held_bytes:
            self.rejected_total += 1
            return self._busy("the router holds too many request bodies; retry shortly")
        self.held_bytes += len(raw)
        try:
            return await self._route(request, raw)
        finally:
            self.held_bytes -= len(raw)

    async def _route(self, request: web.Request, raw: bytes) -> web.StreamResponse:
        try:
            body = json.loads(raw) if raw else {}
        except (ValueError, RecursionError):
            body = None  # passed through: the worker answers with its own 400
        chosen = self._group_for(request.path, body)
        if isinstance(chosen, web.Response):
            return chosen
        chosen.requests += 1
        group, why = self._reroute(chosen, body)
        if why == "rule":
            chosen.rule_routed += 1
        elif why == "overflow":
            chosen.overflowed += 1
        if group.on_demand and group.state in ("unloaded", "failed") and self.control:
            self.control.load_group(group.name)
            group.state = "loading"
        elif group.state == "failed":
            self.rejected_total += 1
            return self._busy(
                f"model {group.name} has failed: its workers are out of restarts; "
                "'llama-launcher status' says why"
            )
        elif group.state == "down":
            self.rejected_total += 1
            return self._busy(
                f"model {group.name} runs on another box that cannot be reached now; it is "
                "tried again in the background, and 'llama-launcher status' says why"
            )
        elif not group.serving and group.state not in ("loading", "restarting"):
            self.rejected_total += 1
            return self._busy(f"no worker of model {group.name} is healthy now; retry shortly")
        ready_in = group.ready_in_s
        if not group.serving and ready_in is not None and ready_in > self.config.queue_timeout_s:
            # it will not be ready before this request would give up waiting: say so now
            self.rejected_total += 1
            return self._busy(
                f"model {group.name} is {group.state}; it should be ready in about "
                f"{ready_in:.0f} s, later than requests wait here "
                f"({self.config.queue_timeout_s:g} s); retry then",
                retry_after=ready_in,
            )
        if self.control:
            self.control.group_used(group.name, group.in_flight + 1)
        try:
            return await self._send(request, raw, body, group, why)
        finally:
            if self.control:
                self.control.group_used(group.name, group.in_flight)

    async def _send(
        self, request: web.Request, raw: bytes, body: object, group: RouteGroup, why: str | None
    ) -> web.StreamResponse:
        """Send to a member of ``group``, retrying on another when one fails before any
        byte reached the client."""
        key = affinity_key(body) if isinstance(body, dict) else None
        renamed = isinstance(body, dict) and "model" in body and body["model"] != group.name
        tried: set[str] = set()
        last_error = "no healthy worker"
        for _ in range(max(len(group.members), 1)):
            try:
                member = await group.balancer.acquire(self.config.queue_timeout_s, key, tried)
            except QueueFull:
                self.rejected_total += 1
                return self._busy(f"all workers of {group.name} are busy and the queue is full")
            except TimeoutError:
                self.rejected_total += 1
                if group.state in ("loading", "restarting"):
                    return self._busy(
                        f"model {group.name} is still {group.state} after "
                        f"{self.config.queue_timeout_s:g} s; retry shortly"
                    )
                return self._busy(f"no slot freed within {self.config.queue_timeout_s:g} s")
            tried.add(member.name)
            slot = self._slot_for(request.path, body, member, key)
            sent = raw
            if isinstance(body, dict) and (slot is not None or renamed):
                changed = {**body, "model": group.name} if renamed else dict(body)
                if slot is not None:
                    changed["id_slot"] = slot
                sent = json.dumps(changed).encode()
            labels = {GROUP_HEADER: group.name, WORKER_HEADER: member.name}
            if why:
                labels[ROUTED_HEADER] = why
            began = time.monotonic()
            try:
                response, started = await self._forward(request, member, sent, labels)
            finally:
                if slot is not None:
                    member.slots_taken.discard(slot)
                await group.balancer.release(member)
            if response is not None:
                if response.status < 400:
                    group.served(time.monotonic() - began)  # the service time, not the wait
                return response
            last_error = started or last_error
            if not any(m.healthy and m.name not in tried for m in group.members):
                break
        self.rejected_total += 1
        return self._busy(
            f"no worker of model {group.name} answered ({last_error}); the supervisor restarts "
            "failed workers, retry shortly"
        )

    def _slot_for(self, path: str, body: object, m: Member, key: str | None) -> int | None:
        """The llama-server slot to ask for (``id_slot``): the lowest one free (one that last
        served the same prompt start first), for generation requests to a llama-server; None
        to leave the choice to the worker (other endpoints,
        a remote member, a request that names its slot, or affinity, where llama-server's own
        choice of the slot holding the same prompt start is the point)."""
        if (
            not m.pin_slots
            or self.config.affinity
            or path not in _GENERATION
            or not isinstance(body, dict)
            or "id_slot" in body
        ):
            return None
        return m.take_slot(key)

    def _busy(self, why: str, retry_after: float = 1.0) -> web.Response:
        return web.json_response(
            {"error": {"message": why, "type": "unavailable", "code": 503}},
            status=503,
            headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
        )

    async def _forward(
        self, request: web.Request, m: Member, raw: bytes, labels: dict[str, str]
    ) -> tuple[web.StreamResponse | None, str | None]:
        """Send to ``m``; (response, None), or (None, why) if it failed before any byte."""
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers.update(self._headers(m))
        timeout = aiohttp.ClientTimeout(total=self.config.upstream_timeout_s, sock_connect=5)
        try:
            try:
                upstream = await self._session.post(
                    f"{m.url}{request.path_qs}", data=raw, headers=headers, timeout=timeout
                )
            except aiohttp.ServerDisconnectedError:
                # a kept connection the worker had just closed: once more, on a new one
                upstream = await self._session.post(
                    f"{m.url}{request.path_qs}", data=raw, headers=headers, timeout=timeout
                )
        except (aiohttp.ClientError, TimeoutError) as err:
            self._failed(m)
            return None, f"{m.name}: {err or type(err).__name__}"
        async with upstream:
            out_headers = {
                **{k: v for k, v in upstream.headers.items() if k.lower() not in _HOP},
                **labels,
            }
            if "text/event-stream" not in upstream.headers.get("Content-Type", ""):
                return await self._whole(upstream, m, out_headers), None
            out = web.StreamResponse(status=upstream.status, headers=out_headers)
            tail = b""  # the end of a stream carries the token count
            self._streams.add(out)
            try:
                await out.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await out.write(chunk)
                    tail = (tail + chunk)[-4096:]
            except (ConnectionResetError, asyncio.CancelledError):
                # the client went away: leaving this block closes the upstream connection, and
                # llama-server stops generating for it
                return out, None
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError):
                # the worker died mid-answer: bytes were sent, so no retry; the client gets a
                # last event that says the answer is cut, not a clean end
                self._failed(m)
                self.truncated_total += 1
                with contextlib.suppress(ConnectionResetError, RuntimeError):
                    await out.write(_cut_event(m.name))
                    await out.write_eof()
                return out, None
            finally:
                self._streams.discard(out)
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await out.write_eof()
            if upstream.status >= 500:
                m.errors += 1
            m.tokens += tokens_in(tail, True)
            return out, None

    async def _whole(
        self, upstream: aiohttp.ClientResponse, m: Member, headers: dict[str, str]
    ) -> web.Response:
        """A plain (not streamed) answer, read whole before the client gets a byte: one the
        worker cut short becomes a 502 that says so."""
        try:
            body = await upstream.read()
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError):
            self._failed(m)
            self.truncated_total += 1
            return self._error(
                502,
                f"worker {m.name} failed in the middle of the answer; it was lost, retry",
                "upstream_error",
            )
        if upstream.status >= 500:
            m.errors += 1
        m.tokens += tokens_in(body, False)
        return web.Response(status=upstream.status, body=body, headers=headers)

    def _failed(self, m: Member) -> None:
        m.errors += 1
        m.healthy = False
        m.last_failure = time.monotonic()


def _cut_event(worker: str, why: str = "") -> bytes:
    """The last SSE event of a stream cut short (OpenAI's error shape)."""
    why = why or f"worker {worker} failed in the middle of the answer"
    error = {
        "error": {
            "message": f"{why}; the answer is truncated",
            "type": "upstream_error",
            "code": 502,
        }
    }
    return f"data: {json.dumps(error)}\n\n".encode()


def _number(value: float) -> str:
    """A sample value at full precision (Prometheus reads any float)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
