"""The box planner: where each of several models runs on one box, and why.

``plan_box`` takes model requests (each: a model, its workload, an optional layout kind, fixed
cards or on-demand) and the box's inventory, and returns whole-box options ranked by the
goal. Each option gives every model its cards and layout (a ``Layout`` as ``plan`` builds it,
planned on the memory the models placed before it leave free, so two models share a card only
when their sum fits), the models that load on demand (and which of those cannot be resident
together), and what does not fit at all, with the numbers.

How it searches: models are placed largest first. A model's candidate placements are, for
each kind of card on the box, the 1, 2 ... N cards of that kind with the most memory left
(and all cards, where the box mixes kinds); each is planned with ``build_layouts`` and keeps
its best layout for the goal. A beam of partial box plans (``BEAM``) carries the best ones
forward; a model may also be left out, to load on demand beside the others. Options are
ranked by how many models are resident, then by the score: the geometric mean over the
resident models of what each gets as a share of what it would get with the allowed cards to
itself (aggregate tok/s for throughput, one user's tok/s for latency, memory left for
context). Shares, so that a fast small model's numbers do not swamp a big one's; their
geometric mean, so that starving one model for another's gain ranks low. Groups that share
a card share its bandwidth (``_contended``). On a box without usable cards every model runs
as CPU workers, the cores divided between the models.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from launcher.errors import LauncherError
from launcher.gpu.card import GpuCard
from launcher.gpu.inventory import Host, Inventory
from launcher.llamacpp.probe import ServerTarget
from launcher.model.spec import ModelSpec
from launcher.plan import layouts as lay
from launcher.plan.fits import Calibration
from launcher.plan.layouts import Layout
from launcher.plan.perf import Throughput
from launcher.plan.workload import Workload

GIB = 1 << 30
BEAM = 16
PLANS_SHOWN = 3
# How much of the other groups' reads on a shared card delay a group's step: 1 would be strict
# turns. Two llama-servers on one H200 (8B and 14B at 8 users each) kept 50% and 74% of their
# speed alone, where strict turns gives 35% and 65%: 0.65 fits both within 5 points
# (docs/validation/2026-11-30-h200x2-model-groups.md). One card kind, one pair: a first figure.
SHARED_OVERLAP = 0.65


@dataclass(frozen=True)
class ModelRequest:
    """One model of the box: its group name, workload (``workload.cards`` restricts where it
    may go), layout kind (``auto``: the planner chooses), and whether its cards are fixed (a
    profile's) or it must load on demand."""

    name: str
    spec: ModelSpec
    workload: Workload
    layout: str = "auto"
    fixed_cards: bool = False
    on_demand: bool = False


@dataclass(frozen=True)
class Placement:
    """Where one model runs in a box plan."""

    request: ModelRequest
    layout: Layout
    cards: tuple[int, ...]  # the cards its layout was planned on
    on_demand: bool = False
    exclusive_with: tuple[str, ...] = ()  # on-demand groups it cannot be resident with
    alone: float = 0.0  # the goal's measure with the allowed cards to itself
    contention: float = 1.0  # its part of the bandwidth of cards it shares with resident groups
    goal: str = "throughput"

    @property
    def name(self) -> str:
        return self.request.name

    @property
    def throughput(self) -> Throughput:
        """The layout's predictions, less what the groups it shares cards with take."""
        t = self.layout.throughput
        f = self.contention
        return Throughput(t.single_user_tok_s * f, t.aggregate_tok_s * f, t.prompt_tok_s * f)

    @property
    def share(self) -> float:
        """What it gets as a share of what it would get alone (the score's part)."""
        if self.alone <= 0:
            return 0.0
        value = _value(self.layout, self.goal)
        return value * (self.contention if self.goal != "context" else 1.0) / self.alone

    def describe(self) -> str:
        t = self.throughput
        where = f"cards {','.join(map(str, self.cards))}" if self.layout.cards else "the CPU"
        slots = sum(p.slots for p in self.layout.processes)
        text = (
            f"{self.name}: {self.layout.kind} on {where}, {self.layout.workers} worker(s), "
            f"{slots} slot(s), {t.aggregate_tok_s:.0f} tok/s for {self.request.workload.users} "
            f"user(s), {t.single_user_tok_s:.1f} for one"
        )
        if self.contention < 0.995:
            text += f" ({self.contention:.0%} of the bandwidth of cards it shares)"
        if self.on_demand:
            text += ", loaded on demand"
            if self.exclusive_with:
                text += f" (not resident with {', '.join(self.exclusive_with)})"
        return text

    def to_json(self) -> dict[str, object]:
        data = self.layout.to_json()
        return {
            "name": self.name,
            "model": str(self.request.spec.path),
            "kind": data.pop("kind"),
            "users": self.request.workload.users,
            "ctx": self.request.workload.ctx,
            "on_demand": self.on_demand,
            "exclusive_with": list(self.exclusive_with),
            **data,
            "predicted": self.throughput.to_json(),
        }


@dataclass(frozen=True)
class BoxPlan:
    """One way to run every model on the box."""

    rank: int
    placements: tuple[Placement, ...]
    missing: tuple[str, ...]  # one sentence per model that fits nowhere
    score: float
    reason: str = ""

    @property
    def resident(self) -> tuple[Placement, ...]:
        return tuple(p for p in self.placements if not p.on_demand)

    def placement(self, name: str) -> Placement | None:
        return next((p for p in self.placements if p.name == name), None)

    def to_json(self) -> dict[str, object]:
        return {
            "rank": self.rank,
            "reason": self.reason,
            "score": round(self.score, 3),
            "groups": [p.to_json() for p in self.placements],
            "predicted": {p.name: p.throughput.to_json() for p in self.placements},
            "cards": [
                {"group": p.name, "on_demand": p.on_demand, **c.to_json()}
                for p in self.placements
                for c in p.layout.cards
            ],
            "missing": list(self.missing),
        }


@dataclass(frozen=True)
class BoxResult:
    requests: tuple[ModelRequest, ...]
    host_name: str
    plans: tuple[BoxPlan, ...]
    goal: str

    @property
    def best(self) -> BoxPlan | None:
        return self.plans[0] if self.plans else None

    def to_json(self) -> dict[str, object]:
        """DESIGN.md's ``plan --json`` for several models."""
        return {
            "models": [
                {**r.spec.to_json(), "group": r.name, "workload": r.workload.to_json()}
                for r in self.requests
            ],
            "workload": {"goal": self.goal},
            "host": self.host_name,
            "box_plans": [p.to_json() for p in self.plans],
        }


@dataclass
class _State:
    """A partial box plan: what is placed and the memory it leaves."""

    free: dict[int, int]  # card index -> bytes free
    ram: int
    placed: list[Placement] = field(default_factory=list)
    left_out: list[ModelRequest] = field(default_factory=list)

    def fork(self) -> _State:
        return _State(dict(self.free), self.ram, list(self.placed), list(self.left_out))

    @property
    def score(self) -> float:
        """The geometric mean of the resident models' shares (0 with none)."""
        return _score(_contended(self.placed))


def _score(placed: Sequence[Placement]) -> float:
    shares = [p.share for p in placed if not p.on_demand]
    if not shares or min(shares) <= 0:
        return 0.0
    return float(math.exp(sum(math.log(x) for x in shares) / len(shares)))


def _contended(placed: Sequence[Placement]) -> list[Placement]:
    """``placed`` with each resident group's part of the cards it shares. When groups share a
    card and are busy at once, a step of one waits for part of the others' reads: a group
    reading ``b`` bytes on a card where the others read ``o`` gets ``b / (b + SHARED_OVERLAP x
    o)`` of its speed alone. A group over several cards gets the mean of its cards' parts.
    On-demand groups are not counted (they may be unloaded)."""
    reads: dict[int, int] = {}
    for p in placed:
        if not p.on_demand:
            for c in p.layout.cards:
                reads[c.card] = reads.get(c.card, 0) + c.weights_bytes
    out = []
    for p in placed:
        if p.on_demand:
            out.append(dataclasses.replace(p, contention=1.0))
            continue
        parts = [
            c.weights_bytes / (c.weights_bytes + SHARED_OVERLAP * (reads[c.card] - c.weights_bytes))
            for c in p.layout.cards
            if c.weights_bytes > 0
        ]
        contention = sum(parts) / len(parts) if parts else 1.0
        out.append(dataclasses.replace(p, contention=contention))
    return out


def _value(layout: Layout, goal: str) -> float:
    t = layout.throughput
    if goal == "latency":
        return t.single_user_tok_s
    if goal == "context":
        return max(min((c.free_after_bytes for c in layout.cards), default=0), 0) / GIB + 0.01
    return t.aggregate_tok_s


def _host_with(host: Host, free: dict[int, int], ram: int, cores: int) -> Host:
    """``host`` as a placement sees it: each card's free memory and RAM what is left."""
    cards = tuple(
        dataclasses.replace(c, memory_free_bytes=free[c.index]) if c.index in free else c
        for c in host.cards
    )
    info = dataclasses.replace(host.info, ram_available_bytes=max(ram, 1), cpu_cores=cores)
    return dataclasses.replace(host, cards=cards, info=info)


class _Planner:
    def __init__(
        self,
        requests: Sequence[ModelRequest],
        host: Host,
        server: ServerTarget,
        goal: str,
        router_port: int,
        calibration: Calibration | None = None,
    ) -> None:
        self.requests = list(requests)
        self.host = host
        self.server = server
        self.goal = goal
        self.router_port = router_port
        self.calibration = calibration
        self.usable = [c for c in host.cards if c.usable]
        self.cpu_only = not self.usable
        # on the CPU the models share the cores
        self.cores = (
            max(1, host.info.cpu_cores // max(len(self.requests), 1))
            if self.cpu_only
            else host.info.cpu_cores
        )
        self._cache: dict[tuple[object, ...], Layout | None] = {}

    def allowed(self, request: ModelRequest) -> list[GpuCard]:
        return list(lay.select_cards(self.host, request.workload))

    def candidates(
        self, request: ModelRequest, state: _State
    ) -> list[tuple[Layout, tuple[int, ...]]]:
        """The placements of ``request`` on what ``state`` leaves: (layout, cards)."""
        allowed = self.allowed(request)
        if self.cpu_only or not allowed or request.layout.startswith("cpu:"):
            subsets: list[tuple[int, ...]] = [()]
        elif request.fixed_cards:
            subsets = [tuple(c.index for c in allowed)]
        else:
            subsets = []
            kinds: dict[tuple[str, int], list[GpuCard]] = {}
            for c in allowed:
                kinds.setdefault((c.name, c.memory_total_bytes), []).append(c)
            for cards in kinds.values():
                ordered = sorted(cards, key=lambda c: (-state.free.get(c.index, 0), c.index))
                for k in range(1, len(ordered) + 1):
                    subsets.append(tuple(sorted(c.index for c in ordered[:k])))
            if len(kinds) > 1:
                subsets.append(tuple(c.index for c in allowed))
        out: dict[tuple[int, ...], Layout] = {}
        for subset in dict.fromkeys(subsets):
            layout = self.best_layout(request, subset, state)
            if layout is not None:
                used = tuple(sorted({i for p in layout.processes for i in p.cards}))
                out.setdefault(used, layout)
        return [(layout, used) for used, layout in out.items()]

    def best_layout(
        self, request: ModelRequest, subset: tuple[int, ...], state: _State
    ) -> Layout | None:
        free = {i: state.free[i] for i in subset}
        key = (request.name, subset, tuple(sorted(free.items())), state.ram if not subset else 0)
        if key in self._cache:
            return self._cache[key]
        host = _host_with(self.host, free, state.ram, self.cores)
        workload = dataclasses.replace(
            request.workload, cards=tuple(str(i) for i in subset), exclude_cards=()
        )
        kind = request.layout
        if not subset and not kind.startswith("cpu:"):
            kind = "cpu:1"
        try:
            built = lay.build_layouts(
                request.spec,
                host,
                workload,
                self.server,
                kind,
                self.router_port,
                calibration=self.calibration,
            )
        except LauncherError:
            built = []
        fitting = [
            b
            for b in built
            if b.feasible and (b.kind != "partial-offload" or kind == "partial-offload")
        ]
        best = max(fitting, key=lambda b: _value(b, self.goal), default=None)
        self._cache[key] = best
        return best

    def alone(self, request: ModelRequest, start: _State) -> float:
        """What ``request`` gets with the allowed cards to itself (the score's measure)."""
        options = self.candidates(request, start)
        return max((_value(layout, self.goal) for layout, _ in options), default=0.0)

    def place(
        self,
        state: _State,
        request: ModelRequest,
        layout: Layout,
        cards: tuple[int, ...],
        alone: float,
        on_demand: bool = False,
    ) -> _State:
        new = state.fork()
        if not on_demand:
            for c in layout.cards:
                new.free[c.card] = new.free.get(c.card, 0) - c.total_bytes
            new.ram -= layout.host_bytes
        new.placed.append(Placement(request, layout, cards, on_demand, alone=alone, goal=self.goal))
        return new


def plan_box(
    requests: Sequence[ModelRequest],
    inventory: Inventory,
    server: ServerTarget | None = None,
    goal: str = "throughput",
    router_port: int = lay.DEFAULT_ROUTER_PORT,
    calibration: Calibration | None = None,
) -> BoxResult:
    """The ranked whole-box options for ``requests`` on the inventory's first host (with the
    speed constants ``calibration`` measured there, if any)."""
    if not requests:
        raise LauncherError("Give at least one model to plan.")
    names = [r.name for r in requests]
    if len(set(names)) != len(names):
        raise LauncherError(f"Two models have the same group name ({', '.join(names)}).")
    host = inventory.local
    planner = _Planner(requests, host, server or ServerTarget(), goal, router_port, calibration)
    start = _State(
        {c.index: lay._free(c) for c in planner.usable},
        host.info.ram_available_bytes or (1 << 50),
    )
    alone = {r.name: planner.alone(r, start) for r in requests}
    order = sorted(
        requests,
        key=lambda r: (not r.fixed_cards, r.on_demand, -r.spec.weights_bytes),
    )
    beam = [start]
    for request in order:
        grown: list[_State] = []
        for state in beam:
            if not request.on_demand:
                for layout, cards in planner.candidates(request, state):
                    grown.append(planner.place(state, request, layout, cards, alone[request.name]))
            left = state.fork()
            left.left_out.append(request)
            grown.append(left)
        grown.sort(key=lambda s: (-len(s.placed), -s.score))
        beam = _distinct(grown)[:BEAM]
    most = max(len(state.placed) for state in beam)
    # a model goes on demand only where it cannot be resident beside the others
    finished = [
        _on_demand(planner, state, alone, start) for state in beam if len(state.placed) == most
    ]
    finished.sort(
        key=lambda s: (len(s.left_out), -sum(not p.on_demand for p in s.placed), -s.score)
    )
    plans: list[BoxPlan] = []
    seen: set[tuple[object, ...]] = set()
    for state in finished:
        sig = tuple(sorted((p.name, p.layout.kind, p.cards, p.on_demand) for p in state.placed))
        if sig in seen:
            continue
        seen.add(sig)
        order_of = {r.name: i for i, r in enumerate(requests)}
        placed = _numbered(
            sorted(_contended(state.placed), key=lambda p: order_of[p.name]), router_port
        )
        missing = tuple(_missing(planner, r, alone[r.name]) for r in state.left_out)
        plans.append(BoxPlan(len(plans) + 1, placed, missing, state.score))
        if len(plans) == PLANS_SHOWN:
            break
    best = plans[0].score if plans else 0.0
    plans = [dataclasses.replace(p, reason=_reason(p, best, goal)) for p in plans]
    return BoxResult(tuple(requests), host.name, tuple(plans), goal)


def _numbered(placed: list[Placement], router_port: int) -> tuple[Placement, ...]:
    """Each worker of the box on its own port: the router's + 1, + 2 ... in model order."""
    out = []
    port = router_port
    for p in placed:
        processes = []
        for proc in p.layout.processes:
            port += 1
            processes.append(dataclasses.replace(proc, args=proc.args.replace(port=port)))
        layout = dataclasses.replace(p.layout, processes=tuple(processes))
        out.append(dataclasses.replace(p, layout=layout))
    return tuple(out)


def _distinct(states: list[_State]) -> list[_State]:
    """States that differ in what they placed where (the first of each kept)."""
    out = []
    seen: set[tuple[object, ...]] = set()
    for s in states:
        sig = tuple((p.name, p.layout.kind, p.cards) for p in s.placed) + tuple(
            r.name for r in s.left_out
        )
        if sig not in seen:
            seen.add(sig)
            out.append(s)
    return out


def _residual(start: _State, placed: Sequence[Placement]) -> _State:
    """What the resident placements leave of ``start``."""
    out = start.fork()
    for p in placed:
        if not p.on_demand:
            for c in p.layout.cards:
                out.free[c.card] = out.free.get(c.card, 0) - c.total_bytes
            out.ram -= p.layout.host_bytes
    return out


def _on_demand(planner: _Planner, state: _State, alone: dict[str, float], start: _State) -> _State:
    """Place the models left out as on-demand groups: in the memory the resident ones leave
    if they fit there; else in turns with the smallest resident group whose memory makes
    room (it becomes on-demand too); else on the cards as if empty, every resident group on
    those cards turned on-demand. On-demand groups whose sum does not fit on a card they
    share are exclusive: loading one unloads the other."""
    out = state.fork()
    out.left_out = []
    for request in state.left_out:
        options = planner.candidates(request, _residual(start, out.placed))
        if not options:
            # take turns with one resident group, the smallest that makes room; else with
            # every group on the cards it needs
            residents = sorted(
                (p for p in out.placed if not p.on_demand),
                key=lambda p: p.request.spec.weights_bytes,
            )
            for other in residents:
                rest = [p for p in out.placed if p is not other]
                options = planner.candidates(request, _residual(start, rest))
                if options:
                    out.placed = [
                        dataclasses.replace(p, on_demand=True) if p is other else p
                        for p in out.placed
                    ]
                    break
            else:
                options = planner.candidates(request, start)
                if not options:
                    out.left_out.append(request)
                    continue
                _, taken = max(options, key=lambda o: _value(o[0], planner.goal))
                out.placed = [
                    dataclasses.replace(p, on_demand=True) if set(p.cards) & set(taken) else p
                    for p in out.placed
                ]
        layout, cards = max(options, key=lambda o: _value(o[0], planner.goal))
        out = planner.place(out, request, layout, cards, alone[request.name], on_demand=True)
    residual = _residual(start, out.placed)
    on_demand = [p for p in out.placed if p.on_demand]
    exclusive: dict[str, set[str]] = {p.name: set() for p in on_demand}
    for i, a in enumerate(on_demand):
        for b in on_demand[i + 1 :]:
            if _clash(a, b, residual):
                exclusive[a.name].add(b.name)
                exclusive[b.name].add(a.name)
    out.placed = [
        dataclasses.replace(p, exclusive_with=tuple(sorted(exclusive[p.name])))
        if p.on_demand
        else p
        for p in out.placed
    ]
    return out


def _clash(a: Placement, b: Placement, state: _State) -> bool:
    """Whether two on-demand placements together need more than is left on a card (or in
    RAM)."""
    need: dict[int, int] = {}
    for c in (*a.layout.cards, *b.layout.cards):
        need[c.card] = need.get(c.card, 0) + c.total_bytes
    if any(n + lay.MIN_HEADROOM_BYTES > state.free.get(i, 0) for i, n in need.items()):
        return True
    return a.layout.host_bytes + b.layout.host_bytes > state.ram


def _missing(planner: _Planner, request: ModelRequest, alone: float) -> str:
    """Why a model is in no placement, and what would help."""
    if alone > 0:
        return (
            f"{request.name} fits on this box only without the others; mark another group "
            "on-demand, or give it fewer users or less context."
        )
    cards = planner.allowed(request)
    free = sum(lay._free(c) for c in cards)
    return (
        f"{request.name} does not fit even alone ({request.spec.weights_bytes / GIB:.1f} GiB "
        f"of weights; the {len(cards)} usable card(s) have {free / GIB:.1f} GiB free); try "
        "'llama-launcher plan' on it alone for what would fit."
    )


def _reason(plan: BoxPlan, best: float, goal: str) -> str:
    what = {
        "throughput": "aggregate tok/s",
        "latency": "single-user tok/s",
        "context": "memory left",
    }[goal]
    parts = [p.describe() for p in plan.placements]
    head = (
        f"Best for {goal}"
        if plan.rank == 1
        else f"{plan.score / best:.2f}x the score of plan 1"
        if best > 0
        else "Another option"
    )
    resident = plan.resident
    if resident:
        shares = ", ".join(f"{p.share:.0%}" for p in resident)
        text = f"{head}: the resident models get {shares} of the {what} each would get alone. "
    else:
        text = (
            f"{head}: these models cannot be resident together, so each loads on demand and "
            "they take turns on the cards. "
        )
    text += "; ".join(parts) + "."
    if plan.missing:
        text += " " + " ".join(plan.missing)
    return text
