"""Rank the layouts for a workload and say why, with numbers.

``plan()`` is the planner's one entry point: Inventory + ModelSpec + Workload -> a ``Plan``
whose layouts are ranked for the goal (throughput: aggregate tokens/s; latency: single-user
tokens/s; context: headroom left for longer contexts), each with a one- or two-sentence reason.
When nothing fits, the plan says how much is missing and what would fit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from launcher.gpu.inventory import Inventory
from launcher.llamacpp.probe import ServerTarget
from launcher.model.spec import ModelSpec
from launcher.plan import layouts as lay
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
class Plan:
    spec: ModelSpec
    workload: Workload
    host_name: str
    layouts: tuple[RankedLayout, ...]
    advice: tuple[str, ...]  # what would fit, when nothing does

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
) -> Plan:
    """The ranked layouts of ``spec`` for ``workload`` on the inventory's first host."""
    host = inventory.local
    server = server or ServerTarget()
    built = lay.build_layouts(
        spec, host, workload, server, kind, router_port, mmproj_bytes, mmproj_path, calibration
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
    return Plan(spec, workload, host.name, tuple(out), advice)


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
