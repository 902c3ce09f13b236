"""The router: one OpenAI-compatible endpoint in front of the fleet's workers (aiohttp).

Routes: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/models``,
llama.cpp's ``/completion``, ``/health`` and ``/metrics`` (Prometheus text). Streams pass
through chunk by chunk; a client that goes away cancels its upstream request. A request is
retried on another member only when the first failed before any byte reached the client.
Members leave rotation at their first failed request or unhealthy snapshot and come back
with the next healthy one: the router does not poll, it reads the snapshots its owner passes
to ``observe`` (the supervisor's pollers). A non-loopback address requires an API key,
checked on every route but ``/health``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from launcher.errors import LauncherError
from launcher.llamacpp.poll import WorkerSnapshot
from launcher.llamacpp.wire import tokens_in
from launcher.router.balancer import Balancer, Member, QueueFull, SpeedMeter, affinity_key

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

GaugeSource = Callable[[], list[tuple[str, dict[str, str], float]]]
"""Extra gauges for /metrics: (name, labels, value), e.g. per-card NVML readings."""


@dataclass
class RouterConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    max_queue: int = 256
    queue_timeout_s: float = 30.0
    affinity: bool = False
    upstream_timeout_s: float = 600.0


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
        self, members: list[Member], config: RouterConfig, gauges: GaugeSource | None = None
    ) -> None:
        require_key_for(config.host, config.api_key, None)
        self.config = config
        self.balancer = Balancer(members, config.max_queue, config.affinity)
        self.gauges = gauges
        self.queued_total = 0
        self.rejected_total = 0
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._meters: dict[str, SpeedMeter] = {}

    @property
    def members(self) -> list[Member]:
        return self.balancer.members

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::") else self.config.host
        return f"http://{host}:{self.config.port}"

    # -- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
        )
        app = web.Application(middlewares=[self._auth], client_max_size=64 << 20)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/models", self._models)
        for path in (
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/completion",
            "/completions",
            "/embedding",
            "/embeddings",
            "/tokenize",
            "/detokenize",
        ):
            app.router.add_post(path, self._proxy)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        try:
            await site.start()
        except OSError as err:
            await self.stop()
            raise LauncherError(
                f"The router cannot listen on {self.config.host}:"
                f"{self.config.port} ({err.strerror}); stop what uses it or "
                "choose another --port."
            ) from err

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # -- what the pollers saw ------------------------------------------------------------

    def _headers(self, m: Member) -> dict[str, str]:
        return {"Authorization": f"Bearer {m.api_key}"} if m.api_key else {}

    async def observe(self, snapshots: dict[str, WorkerSnapshot]) -> None:
        """Take the latest poll of each member (by name): health, slots, decode speed."""
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
        await self.balancer.notify()

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
            },
            status=status,
        )

    async def _models(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        for m in [m for m in self.members if m.healthy]:
            try:
                async with self._session.get(
                    f"{m.url}/v1/models",
                    headers=self._headers(m),
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as resp:
                    if resp.status == 200:
                        return web.json_response(await resp.json())
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
        return web.json_response(
            {"error": {"message": "no healthy worker", "code": 503}},
            status=503,
            headers={"Retry-After": "1"},
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

        per = [({"worker": m.name}, m) for m in self.members]
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
            "queued", "gauge", "Requests waiting for a free slot.", [({}, self.balancer.waiting)]
        )
        metric(
            "rejected_total",
            "counter",
            "Requests turned away: queue full or timed out.",
            [({}, self.rejected_total)],
        )
        if self.gauges is not None:
            grouped: dict[str, list[tuple[dict[str, str], float]]] = {}
            for name, labels, value in self.gauges():
                grouped.setdefault(name, []).append((labels, value))
            for name, values in grouped.items():
                metric(name, "gauge", f"GPU {name.replace('_', ' ')} (NVML).", values)
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None  # passed through: the worker answers with its own 400
        key = affinity_key(body) if isinstance(body, dict) else None
        tried: set[str] = set()
        last_error = "no healthy worker"
        for _ in range(max(len(self.members), 1)):
            try:
                member = await self.balancer.acquire(self.config.queue_timeout_s, key, tried)
            except QueueFull:
                self.rejected_total += 1
                return self._busy("all workers are busy and the queue is full")
            except TimeoutError:
                self.rejected_total += 1
                return self._busy(f"no slot freed within {self.config.queue_timeout_s:g} s")
            tried.add(member.name)
            slot = self._slot_for(request.path, body, member, key)
            sent = raw
            if slot is not None and isinstance(body, dict):
                sent = json.dumps({**body, "id_slot": slot}).encode()
            try:
                response, started = await self._forward(request, member, sent)
            finally:
                if slot is not None:
                    member.slots_taken.discard(slot)
                await self.balancer.release(member)
            if response is not None:
                return response
            last_error = started or last_error
            if not any(m.healthy and m.name not in tried for m in self.members):
                break
        return web.json_response(
            {"error": {"message": f"upstream failed: {last_error}", "code": 502}}, status=502
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

    def _busy(self, why: str) -> web.Response:
        return web.json_response(
            {"error": {"message": why, "type": "unavailable", "code": 503}},
            status=503,
            headers={"Retry-After": "1"},
        )

    async def _forward(
        self, request: web.Request, m: Member, raw: bytes
    ) -> tuple[web.StreamResponse | None, str | None]:
        """Send to ``m``; (response, None), or (None, why) if it failed before any byte."""
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers.update(self._headers(m))
        try:
            upstream = await self._session.post(
                f"{m.url}{request.path_qs}",
                data=raw,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.config.upstream_timeout_s, sock_connect=5),
            )
        except (aiohttp.ClientError, TimeoutError) as err:
            m.errors += 1
            m.healthy = False
            m.last_failure = time.monotonic()
            return None, f"{m.name}: {err or type(err).__name__}"
        async with upstream:
            out = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in _HOP},
            )
            streaming = "text/event-stream" in upstream.headers.get("Content-Type", "")
            tail = b""  # the end of a stream carries the token count
            whole: list[bytes] = []  # a plain answer is kept whole (it is small)
            try:
                await out.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await out.write(chunk)
                    if streaming:
                        tail = (tail + chunk)[-4096:]
                    else:
                        whole.append(chunk)
                await out.write_eof()
            except (ConnectionResetError, asyncio.CancelledError):
                # the client went away: leaving this block closes the upstream connection, and
                # llama-server stops generating for it
                return out, None
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                # the worker died mid-answer: bytes were sent, so no retry; end this response
                m.errors += 1
                m.healthy = False
                m.last_failure = time.monotonic()
                return out, None
            if upstream.status >= 500:
                m.errors += 1
            m.tokens += tokens_in(tail if streaming else b"".join(whole), streaming)
            return out, None


def _number(value: float) -> str:
    """A sample value at full precision (Prometheus reads any float)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
