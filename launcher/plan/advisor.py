"""Rank the layouts for a workload and say why, with numbers.

``plan()`` is the planner's one entry point: Inventory + ModelSpec + Workload -> a ``Plan``
whose layouts are ranked for the goal (throughput: aggregate tokens/s; latency: single-user
tokens/s; context: headroom left for longer contexts), each with a one- or two-sentence reason.
When nothing fits, the plan says how much is missing and what would fit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from launcher.errors import LauncherError
from launcher.gpu.inventory import Host, Inventory
from launcher.llamacpp.probe import ServerTarget
from launcher.model.spec import ModelSpec
from launcher.plan import layouts as lay
from launcher.plan import network
from launcher.plan.fits import Calibration
from launcher.plan.layouts import Layout
from launcher.plan.workload import Workload

GIB = 1 << 30


@dataclass(frozen=True)
class RankedLayout:
    layout: Layout
    rank: int  # 1 = best; infeasible layouts come last
    reason: str

    def to_json(self) -> dict[str, object]:
        data = self.layout.to_json()
        return {"kind": data.pop("kind"), "rank": self.rank, "reason": self.reason, **data}


@dataclass(frozen=True)
class AcrossOption:
    """One way to use a second box for the model: only the main box, route some requests to
    a copy on the other box, or pool both boxes' cards over RPC."""

    kind: str  # main, route, pool
    label: str
    aggregate_tok_s: float
    single_user_tok_s: float
    detail: str
    problem: str | None = None

    @property
    def feasible(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "label": self.label,
            "feasible": self.feasible,
            "aggregate_tok_s": round(self.aggregate_tok_s, 1),
            "single_user_tok_s": round(self.single_user_tok_s, 1),
            "detail": self.detail,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class Across:
    """The second box in the plan: the link and the options, best first."""

    host: str
    link: network.Link
    link_given: bool  # False: the profile gives no link and 1 GbE was assumed
    options: tuple[AcrossOption, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "host": self.host,
            "link": {"gbit": self.link.gbit, "rtt_ms": round(self.link.rtt_s * 1000, 3)},
            "link_given": self.link_given,
            "options": [o.to_json() for o in self.options],
        }


@dataclass(frozen=True)
class Plan:
    spec: ModelSpec
    workload: Workload
    host_name: str
    layouts: tuple[RankedLayout, ...]
    advice: tuple[str, ...]  # what would fit, when nothing does
    across: Across | None = None  # a hardware profile's second box with cards

    @property
    def best(self) -> RankedLayout | None:
        return self.layouts[0] if self.layouts and self.layouts[0].layout.feasible else None

    def to_json(self) -> dict[str, object]:
        """DESIGN.md's ``plan --json`` shape (the caller adds what it knows beyond the plan)."""
        return {
            "model": self.spec.to_json(),
            "workload": self.workload.to_json(),
            "host": self.host_name,
            "layouts": [r.to_json() for r in self.layouts],
            "advice": list(self.advice),
            "across": self.across.to_json() if self.across else None,
        }


def _score(layout: Layout, goal: str) -> float:
    t = layout.throughput
    if goal == "latency":
        return t.single_user_tok_s
    if goal == "context":
        return min((c.free_after_bytes for c in layout.cards), default=0) / GIB
    return t.aggregate_tok_s


def _describe(layout: Layout, workload: Workload) -> str:
    t = layout.throughput
    slots = "/".join(str(p.slots) for p in layout.processes)
    who = (
        f"{layout.workers} worker{'s' if layout.workers != 1 else ''} "
        f"({slots} slot{'s' if slots != '1' else ''})"
    )
    return (
        f"{who}: {t.aggregate_tok_s:.0f} tok/s for {workload.users} user"
        f"{'s' if workload.users != 1 else ''}, {t.single_user_tok_s:.1f} tok/s for one"
    )


def plan(
    spec: ModelSpec,
    inventory: Inventory,
    workload: Workload,
    server: ServerTarget | None = None,
    kind: str = "auto",
    router_port: int = lay.DEFAULT_ROUTER_PORT,
    mmproj_bytes: int = 0,
    mmproj_path: str | None = None,
    calibration: Calibration | None = None,
    rpc_host: str | None = None,
) -> Plan:
    """The ranked layouts of ``spec`` for ``workload`` on the inventory's first host;
    ``rpc_host``: the host whose cards layout ``pooled-rpc`` lends. With a second host that
    has cards, the plan also ranks routing to it against pooling with it (``Plan.across``)."""
    host = inventory.local
    server = server or ServerTarget()
    rpc = rpc_box(inventory, rpc_host) if rpc_host else None
    built = lay.build_layouts(
        spec,
        host,
        workload,
        server,
        kind,
        router_port,
        mmproj_bytes,
        mmproj_path,
        calibration,
        rpc,
    )
    ranked = sorted(built, key=lambda item: (not item.feasible, -_score(item, workload.goal)))
    feasible = [item for item in ranked if item.feasible]
    out = []
    for i, item in enumerate(ranked):
        out.append(RankedLayout(item, i + 1, _reason(item, i, feasible, workload)))
    fully = [item for item in feasible if item.kind != "partial-offload"]
    advice = (
        ()
        if fully or kind.startswith("cpu:")
        else _what_would_fit(spec, inventory, workload, server, kind)
    )
    second = next((h for h in inventory.hosts[1:] if h.cards), None)
    across = (
        _across(spec, host, second, workload, server, calibration)
        if second is not None and not kind.startswith("cpu:")
        else None
    )
    return Plan(spec, workload, host.name, tuple(out), advice, across)


def link_to(host: Host) -> tuple[network.Link, bool]:
    """The link to ``host`` as its profile gives it, and whether it did (else 1 GbE)."""
    given = host.info.link_gbit is not None
    return network.Link(host.info.link_gbit or 1.0, host.info.rtt_ms), given


def rpc_box(inventory: Inventory, name: str) -> lay.RpcBox:
    """Host ``name``'s cards, to be pooled over RPC; one sentence when it has none."""
    host = next((h for h in inventory.hosts[1:] if h.name == name), None)
    if host is None:
        others = ", ".join(h.name for h in inventory.hosts[1:]) or "none"
        raise LauncherError(
            f"Host {name} is not a second host of the hardware profile (its other hosts: "
            f"{others}); pooled-rpc lends the cards of a host listed there."
        )
    if not host.cards:
        raise LauncherError(
            f"Host {name} lists no cards; add its [[hosts.cards]] to the hardware profile so "
            "that pooled-rpc can place layers on them."
        )
    return lay.RpcBox(host.name, host.cards, link_to(host)[0])


def _across(
    spec: ModelSpec,
    main: Host,
    second: Host,
    workload: Workload,
    server: ServerTarget,
    calibration: Calibration | None,
) -> Across:
    """Only the main box, a copy on the second box that takes some of the requests (the
    router's overflow or a model name), or one worker over both boxes' cards (RPC)."""
    link, given = link_to(second)
    goal = workload.goal
    single = dataclasses.replace(workload, tensor_split=())
    here = [
        x
        for x in lay.build_layouts(spec, main, single, server, calibration=calibration)
        if x.feasible
    ]
    best_main = max(here, key=lambda x: _score(x, goal)) if here else None
    options = []
    if best_main is not None:
        t = best_main.throughput
        options.append(
            AcrossOption(
                "main",
                f"main box only ({best_main.kind})",
                t.aggregate_tok_s,
                t.single_user_tok_s,
                f"{main.name}: {t.aggregate_tok_s:.0f} tok/s, {t.single_user_tok_s:.1f} for one",
            )
        )
    else:
        options.append(
            AcrossOption("main", "main box only", 0, 0, "", "the model does not fit there")
        )
    there = [
        x
        for x in lay.build_layouts(spec, second, single, server, calibration=calibration)
        if x.feasible and x.kind != "partial-offload"
    ]
    added = network.route_overhead_s(link, workload.prompt_tokens) * 1000
    if there:
        copy = max(there, key=lambda x: _score(x, goal))
        t = copy.throughput
        main_agg = best_main.throughput.aggregate_tok_s if best_main else 0.0
        main_single = best_main.throughput.single_user_tok_s if best_main else t.single_user_tok_s
        options.append(
            AcrossOption(
                "route",
                f"route to {second.name} ({copy.kind} there)",
                main_agg + t.aggregate_tok_s,
                main_single,
                f"{second.name} adds {t.aggregate_tok_s:.0f} tok/s ({t.single_user_tok_s:.1f} "
                f"for one); a request sent there takes +{added:.1f} ms (its length adds "
                "nothing: the answer streams while it is made)",
            )
        )
    else:
        options.append(
            AcrossOption(
                "route",
                f"route to {second.name}",
                0,
                0,
                "",
                f"the model fits on no card of {second.name}",
            )
        )
    pooled = lay.build_layouts(
        spec,
        main,
        single,
        server,
        "pooled-rpc",
        calibration=calibration,
        rpc=lay.RpcBox(second.name, second.cards, link),
    )[0]
    t = pooled.throughput
    options.append(
        AcrossOption(
            "pool",
            f"pool with {second.name} over RPC",
            t.aggregate_tok_s,
            t.single_user_tok_s,
            pooled.notes[0],
            pooled.problem,
        )
    )
    ranked = sorted(
        options,
        key=lambda o: (
            not o.feasible,
            -(o.single_user_tok_s if goal == "latency" else o.aggregate_tok_s),
        ),
    )
    return Across(second.name, link, given, tuple(ranked))


def _reason(item: Layout, index: int, feasible: list[Layout], workload: Workload) -> str:
    text = _describe(item, workload)
    if not item.feasible:
        return f"Does not fit: {item.problem}."
    best = feasible[0]
    if item.kind == "partial-offload":
        prefix = "The model does not fit fully on the cards; " if item is best else ""
        return f"{prefix}{item.notes[0] if item.notes else ''}: {text}."
    if item is best:
        reason = f"Best for {workload.goal}: {text}."
        if len(feasible) > 1:
            second = feasible[1]
            ratio = (
                _score(item, workload.goal) / _score(second, workload.goal)
                if _score(second, workload.goal) > 0
                else 0
            )
            what = {
                "throughput": "aggregate tok/s",
                "latency": "single-user tok/s",
                "context": "GiB of headroom",
            }[workload.goal]
            reason += f" {ratio:.2f}x the {what} of {second.kind}."
        if item.kind == "per-card" and item.workers > 1:
            reason += " Each card streams its own copy of the weights, so their bandwidths add up."
        elif item.kind == "pooled-tensor":
            reason += " All cards read their share of every layer at once."
        elif item.kind == "pooled-layer":
            reason += " The cards take turns on each token; it is chosen for fit, not speed."
    else:
        reason = f"{text}."
        b = best.throughput
        t = item.throughput
        if t.single_user_tok_s > b.single_user_tok_s * 1.05:
            reason += (
                f" Faster for a single user ({t.single_user_tok_s:.1f} against "
                f"{b.single_user_tok_s:.1f} tok/s)."
            )
        if item.notes:
            reason += " " + "; ".join(item.notes) + "."
    return reason


def _what_would_fit(
    spec: ModelSpec, inventory: Inventory, workload: Workload, server: ServerTarget, kind: str
) -> tuple[str, ...]:
    """Sentences on how much is missing and which changes would make the model fit."""
    host = inventory.local
    cards = lay.select_cards(host, workload)
    free = sum(lay._free(c) for c in cards)
    pooled = lay.build_layouts(
        spec, host, workload, server, "pooled-layer" if len(cards) > 1 else "per-card"
    )
    need = sum(c.total_bytes for c in pooled[0].cards) + lay.MIN_HEADROOM_BYTES * len(cards)
    out = [
        f"The model needs {need / GIB:.1f} GiB on the cards with {workload.users} user(s) of "
        f"{workload.ctx} tokens; the {len(cards)} card(s) have {free / GIB:.1f} GiB free: "
        f"{max(need - free, 0) / GIB:.1f} GiB missing."
    ]
    tries = []
    if workload.kv_type == "f16":
        tries.append(("with --kv-type q8_0", dataclasses.replace(workload, kv_type="q8_0")))
    for ctx in (workload.ctx // 2, workload.ctx // 4, 2048):
        if 256 <= ctx < workload.ctx:
            tries.append((f"with --ctx {ctx}", dataclasses.replace(workload, ctx=ctx)))
    if workload.users > 1:
        tries.append(("with --users 1", dataclasses.replace(workload, users=1)))
    for label, changed in tries:
        options = lay.build_layouts(spec, host, changed, server, kind)
        fits = [o for o in options if o.feasible and o.kind != "partial-offload"]
        if fits:
            best = max(fits, key=lambda o: o.throughput.aggregate_tok_s)
            out.append(
                f"It fits {label} as {best.kind} ({best.throughput.aggregate_tok_s:.0f} tok/s)."
            )
            break
    partial = lay.partial_offload(
        lay._Ctx(
            spec, host, cards, workload, server, lay.DEFAULT_ROUTER_PORT, 0, str(spec.path), None
        )
    )
    if partial.feasible:
        out.append(
            f"Or run it as partial-offload: {partial.notes[0]}, about "
            f"{partial.throughput.single_user_tok_s:.1f} tok/s for one user."
        )
    return tuple(out)
