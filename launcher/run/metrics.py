"""Live metrics of one llama-server worker, from its ``/slots`` and ``/metrics``.

Tokens/s is the change, between two polls, of the tokens the worker has produced: the
``llamacpp:tokens_predicted_total`` counter (finished requests) plus ``n_decoded`` of the
requests still in flight. A request that finishes between two polls moves its tokens from the
second term to the first, so nothing is counted twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass(frozen=True)
class WorkerSnapshot:
    """One poll of a worker. ``tok_s`` is over the interval since the previous poll."""

    time_s: float
    ok: bool
    tokens_total: int = 0
    tok_s: float = 0.0
    slots_busy: int = 0
    slots_total: int = 0
    requests_processing: int = 0
    requests_deferred: int = 0
    error: str | None = None


def parse_prometheus(text: str) -> dict[str, float]:
    """``name value`` lines of a Prometheus text exposition (labels kept in the name)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            continue
    return out


def decoded_tokens(slot: dict[str, Any]) -> int:
    """Tokens a busy slot of ``/slots`` has decoded for its current request."""
    nxt = slot.get("next_token")
    if isinstance(nxt, list) and nxt:
        nxt = nxt[0]
    if isinstance(nxt, dict) and isinstance(nxt.get("n_decoded"), int):
        return int(nxt["n_decoded"])
    value = slot.get("n_decoded")
    return int(value) if isinstance(value, int) else 0


class WorkerSampler:
    """Polls one worker; keep one per worker and call ``poll`` about once a second."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._last: tuple[float, int] | None = None

    async def poll(self, session: aiohttp.ClientSession) -> WorkerSnapshot:
        now = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=2)
        try:
            async with session.get(
                f"{self.url}/slots", headers=self.headers, timeout=timeout
            ) as resp:
                slots = await resp.json() if resp.status == 200 else []
            async with session.get(
                f"{self.url}/metrics", headers=self.headers, timeout=timeout
            ) as resp:
                metrics = parse_prometheus(await resp.text()) if resp.status == 200 else {}
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            self._last = None
            return WorkerSnapshot(now, False, error=str(err) or type(err).__name__)
        if not isinstance(slots, list):
            slots = []
        busy = [s for s in slots if isinstance(s, dict) and s.get("is_processing")]
        total = int(metrics.get("llamacpp:tokens_predicted_total", 0)) + sum(
            decoded_tokens(s) for s in busy
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
            len(busy),
            len(slots),
            int(metrics.get("llamacpp:requests_processing", 0)),
            int(metrics.get("llamacpp:requests_deferred", 0)),
        )
