"""The link between two boxes, in the plan: what routing to the other box costs a request and
what pooling over llama.cpp RPC costs a decode step (docs/remote.md, "The network in the plan").

A link is its bandwidth (a hardware profile's ``link``: ``1gbe``, ``10gbe``, ``25gbe`` or a
measured ``<N>gbit``) and its round trip (``rtt_ms``, as ``net-test`` measures it, else the
typical figure for the link's speed). The constants (how much of the line rate a step's bytes
get, round trips and fixed work per request and per RPC step, the lent cards' own part) are data
in ``fits.toml``'s ``[network]`` table, with the measurements they came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from launcher.plan.fits import FITS_FILE, load_toml, solve

F32 = 4  # bytes of one activation value (llama.cpp's hidden state between layers)
MASK_BYTES = 2  # the attention mask is f16, one value per KV cell per token
MASK_PAD = 256  # llama.cpp pads the KV cells a step looks at to a multiple of this


@dataclass(frozen=True)
class NetworkConstants:
    """How a link behaves (``[network]`` of fits.toml)."""

    efficiency: float  # share of the line rate the bytes of a step get
    rtt_ms: dict[str, float]  # a typical round trip by link speed (Gbit/s as text)
    route_round_trips: float  # per routed request: the request out, the answer's start back
    route_fixed_s: float  # per routed request: the hop's own work
    sse_bytes_per_token: float  # one streamed token's event, as the client reads it
    rpc_round_trips: float  # per decode step of a worker pooled over RPC
    rpc_fixed_s: float  # per step: serialising the graph's inputs and the RPC server's work
    rpc_card_step_s: float  # per step when the lent devices are cards: their copies and waits
    rpc_card_user_s: float  # the same, per user in the step
    source: str


@dataclass(frozen=True)
class NetPoint:
    """One measured cost: ``what`` (rpc: a decode step pooled over RPC; route: a request
    routed to the other box) on a link of ``gbit`` and ``rtt_ms``, with ``bytes`` crossing
    it, which added ``measured_ms``."""

    what: str
    link: str
    gbit: float
    rtt_ms: float
    bytes: float
    measured_ms: float

    def to_toml(self) -> dict[str, object]:
        return dict(self.__dict__)


def points() -> list[NetPoint]:
    """The points ``[network]`` was fitted on."""
    data = load_toml(FITS_FILE)["network"]
    return [NetPoint(**p) for p in data.get("points", [])]


def fit_rpc(rpc: list[NetPoint]) -> tuple[float, float, float]:
    """(round trips per step, fixed seconds per step, link efficiency) from RPC points:
    ``measured = k * rtt + fixed + bytes / (line rate * efficiency)``."""
    rows = [[p.rtt_ms / 1000, 1.0, p.bytes / (p.gbit * 1e9 / 8)] for p in rpc]
    k, fixed, inverse = solve(rows, [p.measured_ms / 1000 for p in rpc])
    return k, fixed, 1 / inverse


def fit_route(route: list[NetPoint], efficiency: float) -> tuple[float, float]:
    """(round trips, fixed seconds) per routed request, at the RPC points' efficiency."""
    rows = [[p.rtt_ms / 1000, 1.0] for p in route]
    values = [p.measured_ms / 1000 - p.bytes / (p.gbit * 1e9 / 8 * efficiency) for p in route]
    k, fixed = solve(rows, values)
    return k, fixed


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
        float(data["rpc_card_step_s"]),
        float(data["rpc_card_user_s"]),
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
        how = "measured" if self.rtt_ms is not None else "typical for its speed"
        return f"{self.gbit:g} Gbit/s, round trip {self.rtt_s * 1000:.2f} ms ({how})"


def _key(speed: float, table: dict[str, float]) -> str:
    return next(k for k in table if float(k) == speed)


def route_bytes(prompt_tokens: int) -> float:
    """Bytes of a routed request that its time waits for: the request (a prompt token is
    about 4 bytes of JSON text, in some 400 bytes of JSON around it) and the last streamed
    event (the others pass while the answer is made)."""
    return prompt_tokens * 4 + 400 + constants().sse_bytes_per_token


def route_overhead_s(link: Link, prompt_tokens: int) -> float:
    """What routing one request to the other box adds to its time, streamed: its round
    trips, the bytes it waits for, and the hops' own work. The answer's length does not
    count: its events pass while it is made, and any LAN carries them faster than a card
    makes them (one event is some 260 bytes; 1 Gbit/s carries 400 000 a second)."""
    c = constants()
    return (
        c.route_round_trips * link.rtt_s
        + c.route_fixed_s
        + route_bytes(prompt_tokens) / link.bytes_s
    )


def rpc_step_bytes(n_embd: int, batch: int, kv_cells: int, logits_vocab: int = 0) -> int:
    """Bytes that cross the link in one decode step of a worker pooled over RPC: the hidden
    state into the remote layers and out again, the positions, and the attention mask the
    remote layers read (one f16 per KV cell per token, cells padded as llama.cpp pads them).
    When the output layer is on the other box too (a main box without cards), the logits
    come back instead of the hidden state: ``logits_vocab`` f32 values per token."""
    cells = -(-max(kv_cells, 1) // MASK_PAD) * MASK_PAD
    back = logits_vocab if logits_vocab else n_embd
    return (n_embd + back) * F32 * batch + F32 * batch + MASK_BYTES * cells * batch


def rpc_step_s(
    link: Link,
    n_embd: int,
    batch: int,
    kv_cells: int,
    logits_vocab: int = 0,
    cards: bool = True,
) -> float:
    """What pooling over RPC adds to one decode step of ``batch`` tokens: round trips, fixed
    work and bytes on the link, and, when the lent devices are cards (``cards``), their own
    copies and waits."""
    c = constants()
    card = c.rpc_card_step_s + batch * c.rpc_card_user_s if cards else 0.0
    return (
        c.rpc_round_trips * link.rtt_s
        + c.rpc_fixed_s
        + rpc_step_bytes(n_embd, batch, kv_cells, logits_vocab) / link.bytes_s
        + card
    )
