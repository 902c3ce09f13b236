"""A closed-loop load generator: N concurrent streaming clients, fixed prompt and output.

Each client sends a request, reads the stream to the end, and sends the next, until the
total request count is reached. By default every client starts at once (lockstep: with answers
of one length their prompts keep arriving together). With ``stagger_s`` client i starts i x
``stagger_s`` later and sends its share of the requests plus one before and one after them,
while the others start or finish; the aggregate is then the sum over clients of the tokens of
their shares over the time those took, so only requests sent while every client was busy count
(the tokens and request counts still include every request). Works against llama-server's
native ``/completion`` and any OpenAI-compatible ``/v1/completions``. Output tokens are
counted from the server's own figures when it gives them (``tokens_predicted`` in llama.cpp's
last chunk, ``usage`` in OpenAI's), else one per streamed chunk.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

# A prompt word that is one token in common vocabularies; repeated to the requested length.
_WORD = " hello"


@dataclass(frozen=True)
class LoadSpec:
    urls: tuple[str, ...]  # base URLs; request i goes to urls[i % len(urls)]
    concurrency: int = 4
    requests: int = 16
    max_tokens: int = 128
    prompt_tokens: int = 64
    api: str = "completion"  # completion (llama.cpp native) or openai
    api_key: str | None = None
    model: str | None = None  # the model (group) to ask for; None: the server's default
    timeout_s: float = 600.0
    stagger_s: float = 0.0  # client i sends its first request i x this later (0: lockstep)


@dataclass
class RequestResult:
    ok: bool
    tokens: int = 0
    ttft_s: float | None = None
    latency_s: float = 0.0
    error: str | None = None


@dataclass
class LoadResult:
    requests: int
    errors: int
    tokens: int
    wall_s: float
    aggregate_tok_s: float
    per_user_tok_s_p50: float
    ttft_ms_p50: float | None
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_p99: float
    error_samples: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def _body(spec: LoadSpec, index: int) -> tuple[str, dict[str, Any]]:
    # a distinct first word per request keeps the prompt cache from hiding prompt work
    prompt = f"Request {index}:" + _WORD * max(spec.prompt_tokens - 3, 1)
    named = {"model": spec.model} if spec.model else {}
    if spec.api == "openai":
        return "/v1/completions", {
            **named,
            "prompt": prompt,
            "max_tokens": spec.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
            "temperature": 0,
        }
    return "/completion", {
        **named,
        "prompt": prompt,
        "n_predict": spec.max_tokens,
        "stream": True,
        "ignore_eos": True,
        "cache_prompt": False,
    }


async def _one(session: aiohttp.ClientSession, spec: LoadSpec, index: int) -> RequestResult:
    path, body = _body(spec, index)
    headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
    started = time.monotonic()
    ttft = None
    chunks = 0
    reported: int | None = None
    try:
        base = spec.urls[index % len(spec.urls)].rstrip("/")
        async with session.post(base + path, json=body, headers=headers) as resp:
            if resp.status != 200:
                text = (await resp.text())[:200]
                return RequestResult(
                    False, latency_s=time.monotonic() - started, error=f"HTTP {resp.status}: {text}"
                )
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                data = json.loads(payload)
                if spec.api == "openai":
                    if data.get("usage"):
                        reported = int(data["usage"].get("completion_tokens", 0))
                    if data.get("choices") and data["choices"][0].get("text"):
                        chunks += 1
                        ttft = ttft if ttft is not None else time.monotonic() - started
                else:
                    if data.get("content"):
                        chunks += 1
                        ttft = ttft if ttft is not None else time.monotonic() - started
                    if data.get("stop") and "tokens_predicted" in data:
                        reported = int(data["tokens_predicted"])
    except (aiohttp.ClientError, TimeoutError, ValueError) as err:
        return RequestResult(
            False, latency_s=time.monotonic() - started, error=str(err) or type(err).__name__
        )
    tokens = reported if reported is not None else chunks
    return RequestResult(True, tokens, ttft, time.monotonic() - started)


def _share(spec: LoadSpec) -> int:
    """Staggered: the timed requests of each client."""
    return -(-spec.requests // max(spec.concurrency, 1))


def requests_sent(spec: LoadSpec) -> int:
    """How many requests ``run_load(spec)`` sends: ``requests``, or when staggered each
    client's share plus its two untimed ones."""
    if spec.stagger_s > 0:
        return max(spec.concurrency, 1) * (_share(spec) + 2)
    return spec.requests


async def run_load(spec: LoadSpec) -> LoadResult:
    """Run the load to the end and summarise it."""
    counter = iter(range(spec.requests))
    results: list[RequestResult] = []
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    # a fresh connection per request: llama-server closes idle keep-alive connections, and a
    # request sent on one that is closing fails through no fault of the server under test
    connector = aiohttp.TCPConnector(limit=max(spec.concurrency, 1) * 2, force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        rates: list[float] = []  # staggered: each client's tokens/s over its measured share
        share = _share(spec)

        async def send(index: int) -> RequestResult:
            result = await _one(session, spec, index)
            results.append(result)
            return result

        async def lockstep(_: int) -> None:
            for index in counter:
                await send(index)

        async def staggered(i: int) -> None:
            await asyncio.sleep(i * spec.stagger_s)
            base = i * (share + 2)  # request indices no other client uses
            await send(base)
            began = time.monotonic()
            mine = [await send(base + 1 + k) for k in range(share)]
            took = time.monotonic() - began
            await send(base + share + 1)
            if took > 0 and all(r.ok for r in mine):
                rates.append(sum(r.tokens for r in mine) / took)

        started = time.monotonic()
        clients = staggered if spec.stagger_s > 0 else lockstep
        await asyncio.gather(*(clients(i) for i in range(max(spec.concurrency, 1))))
        wall = time.monotonic() - started
    ok = [r for r in results if r.ok]
    tokens = sum(r.tokens for r in ok)
    aggregate = sum(rates) if spec.stagger_s > 0 else tokens / wall if wall else 0.0
    per_user = [
        r.tokens / (r.latency_s - (r.ttft_s or 0))
        for r in ok
        if r.tokens > 1 and r.latency_s > (r.ttft_s or 0)
    ]
    ttfts = [r.ttft_s * 1000 for r in ok if r.ttft_s is not None]
    lat = [r.latency_s * 1000 for r in ok]
    return LoadResult(
        requests=len(results),
        errors=len(results) - len(ok),
        tokens=tokens,
        wall_s=round(wall, 3),
        aggregate_tok_s=round(aggregate, 1),
        per_user_tok_s_p50=round(statistics.median(per_user), 1) if per_user else 0.0,
        ttft_ms_p50=round(statistics.median(ttfts), 1) if ttfts else None,
        latency_ms_p50=round(_pct(lat, 50), 1),
        latency_ms_p95=round(_pct(lat, 95), 1),
        latency_ms_p99=round(_pct(lat, 99), 1),
        error_samples=[r.error for r in results if r.error][:5],
    )
