"""The link between two boxes, in the plan: what routing to the other box costs a request and
what pooling over llama.cpp RPC costs a decode step (docs/remote.md, "The network in the plan").

A link is its bandwidth (a hardware profile's ``link``: ``1gbe``, ``10gbe``, ``25gbe`` or a
measured ``<N>gbit``) and its round trip (``rtt_ms``, as ``net-test`` measures it, else the
typical figure for the link's speed). The constants (how much of the line rate TCP through SSH
gets, round trips per request and per RPC step, bytes per streamed token) are data in
``fits.toml``'s ``[network]`` table, with the measurements they came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from launcher.plan.fits import FITS_FILE, load_toml

F32 = 4  # bytes of one activation value (llama.cpp's hidden state between layers)
MASK_BYTES = 2  # the attention mask is f16, one value per KV cell per token
MASK_PAD = 256  # llama.cpp pads the KV cells a step looks at to a multiple of this


@dataclass(frozen=True)
class NetworkConstants:
    """How a link behaves (``[network]`` of fits.toml)."""

    efficiency: float  # share of the line rate a TCP stream through SSH reaches
    rtt_ms: dict[str, float]  # a typical round trip by link speed (Gbit/s as text)
    route_round_trips: float  # per routed request: the tunnel's channel, request, answer
    route_fixed_s: float  # per routed request: the second router and the tunnel's own work
    sse_bytes_per_token: float  # one streamed token's event, as the client reads it
    rpc_round_trips: float  # per decode step of a worker pooled over RPC
    rpc_fixed_s: float  # per step: serialising the graph's inputs and the RPC server's work
    source: str


@cache
def constants() -> NetworkConstants:
    data: dict[str, Any] = load_toml(FITS_FILE)["network"]
    return NetworkConstants(
        float(data["efficiency"]),
        {str(k): float(v) for k, v in data["rtt_ms"].items()},
        float(data["route_round_trips"]),
        float(data["route_fixed_s"]),
        float(data["sse_bytes_per_token"]),
        float(data["rpc_round_trips"]),
        float(data["rpc_fixed_s"]),
        str(data["source"]),
    )


@dataclass(frozen=True)
class Link:
    """The link to another box: Gbit/s and the round trip in ms (None: typical for its
    speed)."""

    gbit: float
    rtt_ms: float | None = None

    @property
    def bytes_s(self) -> float:
        return self.gbit * 1e9 / 8 * constants().efficiency

    @property
    def rtt_s(self) -> float:
        if self.rtt_ms is not None:
            return self.rtt_ms / 1000
        typical = constants().rtt_ms
        # the typical round trip of the nearest listed speed at or below this one
        speeds = sorted(float(k) for k in typical)
        near = max((s for s in speeds if s <= self.gbit), default=speeds[0])
        return typical[_key(near, typical)] / 1000

    def describe(self) -> str:
        rtt = f"{self.rtt_ms:.2f} ms measured" if self.rtt_ms is not None else "typical"
        return f"{self.gbit:g} Gbit/s, round trip {self.rtt_s * 1000:.2f} ms ({rtt})"


def _key(speed: float, table: dict[str, float]) -> str:
    return next(k for k in table if float(k) == speed)


def route_overhead_s(link: Link, prompt_tokens: int, answer_tokens: int) -> float:
    """What routing one request to the other box adds to its time, streamed: the round trips
    of the tunnel's channel, the prompt out, the last streamed event back (the rest overlaps
    the decode), and the hops' own work. A prompt token is about 4 bytes of JSON text."""
    c = constants()
    out = prompt_tokens * 4 + 400  # the request's JSON around the prompt
    back = c.sse_bytes_per_token * max(answer_tokens, 1)
    # the stream's events pass as they are made; only when the link is slower than the decode
    # does the answer's transfer show: count it whole, it is small on any real link
    return c.route_round_trips * link.rtt_s + c.route_fixed_s + (out + back) / link.bytes_s


def rpc_step_bytes(n_embd: int, batch: int, kv_cells: int) -> int:
    """Bytes that cross the link in one decode step of a worker pooled over RPC: the hidden
    state into the remote layers and out again, the positions, and the attention mask the
    remote layers read (one f16 per KV cell per token, cells padded as llama.cpp pads them)."""
    cells = -(-max(kv_cells, 1) // MASK_PAD) * MASK_PAD
    return 2 * n_embd * F32 * batch + F32 * batch + MASK_BYTES * cells * batch


def rpc_step_s(link: Link, n_embd: int, batch: int, kv_cells: int) -> float:
    """What pooling over RPC adds to one decode step of ``batch`` tokens."""
    c = constants()
    return (
        c.rpc_round_trips * link.rtt_s
        + c.rpc_fixed_s
        + rpc_step_bytes(n_embd, batch, kv_cells) / link.bytes_s
    )
