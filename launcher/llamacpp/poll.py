"""One poll of a llama-server: ``/health``, then ``/slots`` and ``/metrics``.

The supervisor keeps one ``WorkerPoller`` per worker (and per remote member) and polls it every
``POLL_INTERVAL_S``; the router and ``status`` read the snapshots, which are plain values that
serialise to JSON. Tokens/s is the change, between two polls, of the tokens the worker has
produced: the ``llamacpp:tokens_predicted_total`` counter (finished requests) plus the
``n_decoded`` of requests still in flight; a request that finishes between two polls moves its
tokens from the second term to the first, so nothing is counted twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from launcher.llamacpp.wire import SlotState, parse_prometheus, parse_slots

POLL_INTERVAL_S = 0.5


@dataclass(frozen=True)
class WorkerSnapshot:
    """One poll of a worker. ``healthy``: ``/health`` said 200. ``tok_s`` is over the interval
    since the previous poll; ``time_s`` is ``time.monotonic()`` of the poll."""

    time_s: float
    healthy: bool
    tokens_total: int = 0
    tok_s: float = 0.0
    slots: tuple[SlotState, ...] = field(default=())
    requests_processing: int = 0
    requests_deferred: int = 0
    error: str | None = None

    @property
    def slots_busy(self) -> int:
        return sum(1 for s in self.slots if s.processing)

    @property
    def slots_total(self) -> int:
        return len(self.slots)

    def to_json(self) -> dict[str, Any]:
        return {
            "time_s": self.time_s,
            "healthy": self.healthy,
            "tokens_total": self.tokens_total,
            "tok_s": self.tok_s,
            "slots": [s.to_json() for s in self.slots],
            "requests_processing": self.requests_processing,
            "requests_deferred": self.requests_deferred,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerSnapshot:
        return cls(**{**data, "slots": tuple(SlotState.from_json(s) for s in data["slots"])})


class WorkerPoller:
    """Polls one llama-server; keep one per worker and call ``poll`` about twice a second."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._last: tuple[float, int] | None = None

    async def poll(self, session: aiohttp.ClientSession) -> WorkerSnapshot:
        now = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=2)
        try:
            async with session.get(f"{self.url}/health", timeout=timeout) as resp:
                healthy = resp.status == 200
            if not healthy:
                self._last = None
                return WorkerSnapshot(now, False, error=f"/health answered {resp.status}")
            async with session.get(
                f"{self.url}/slots", headers=self.headers, timeout=timeout
            ) as resp:
                slots = parse_slots(await resp.json()) if resp.status == 200 else ()
            async with session.get(
                f"{self.url}/metrics", headers=self.headers, timeout=timeout
            ) as resp:
                metrics = parse_prometheus(await resp.text()) if resp.status == 200 else {}
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            self._last = None
            return WorkerSnapshot(now, False, error=str(err) or type(err).__name__)
        total = int(metrics.get("llamacpp:tokens_predicted_total", 0)) + sum(
            s.decoded for s in slots if s.processing
        )
        tok_s = 0.0
        if self._last is not None and now > self._last[0]:
            tok_s = max(0.0, (total - self._last[1]) / (now - self._last[0]))
        self._last = (now, total)
        return WorkerSnapshot(
            now,
            True,
            total,
            tok_s,
            slots,
            int(metrics.get("llamacpp:requests_processing", 0)),
            int(metrics.get("llamacpp:requests_deferred", 0)),
        )
