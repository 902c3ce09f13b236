"""Held-out check of the planner: predicted against measured decode and memory, case by case.

Usage: ``python -m launcher.benchmarks.speed_holdout CASES.json [--out ROWS.jsonl]
[--measure]``. CASES.json is a list of cases, each planned with the CLI's own options and run
as planned (the worker's argv and environment from the plan)::

  [{"model": "m/llama-8b.gguf", "layout": "per-card", "cards": "0", "users": [1, 4, 16],
    "kv_type": "f16", "flash_attn": true, "ctx": 4096}, ...]

A case with ``"rpc_cards": "1"`` is layout pooled-rpc with those cards as the second box: an
rpc-server on this machine's 127.0.0.1 lends them, the link is loopback (measured), the worker
runs on the other cards with ``--rpc``.

For each case and number of users: the plan (uncalibrated: nothing measured on this host yet),
one llama-server run of the planned worker at that many users (48 tokens each), its memory
after load (per card from NVML, before/after; on the CPU the process's RSS) and the rate. With
``--measure``, ``plan --measure`` runs afterwards and every case is planned again with what it
measured, for the calibrated column. Prints one markdown table; ``--out`` keeps the rows.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from launcher import paths
from launcher.app import hardware, measure, netlab, planning, server
from launcher.gpu.inventory import Host, Inventory
from launcher.model.spec import read_model_spec
from launcher.plan.layouts import Layout
from launcher.plan.split import parse_split

MIB = 1 << 20


@dataclass
class Row:
    case: str
    users: int
    predicted: float
    measured: float
    basis: str
    calibrated: float | None = None
    memory: list[tuple[int, int, int]] = field(default_factory=list)  # (card/-1, plan, real)

    def error(self, value: float | None) -> str:
        if value is None or not self.measured:
            return ""
        return f"{(value / self.measured - 1) * 100:+.0f}%"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _request(case: dict[str, Any], users: int) -> planning.PlanRequest:
    return planning.PlanRequest(
        model=Path(case["model"]),
        users=users,
        ctx=case.get("ctx", 4096),
        kv_type=case.get("kv_type", "f16"),
        layout=case.get("layout", "auto"),
        cards=tuple(str(case["cards"]).split(",")) if case.get("cards") is not None else (),
        flash_attn=case.get("flash_attn", True),
        tensor_split=case.get("tensor_split"),
    )


def _rpc_inventory(case: dict[str, Any]) -> Inventory:
    """This box with ``rpc_cards`` moved to a second host "rpc" on loopback."""
    box = hardware.inventory()
    lent = set(str(case["rpc_cards"]).split(","))
    here = tuple(c for c in box.local.cards if str(c.index) not in lent)
    there = tuple(c for c in box.local.cards if str(c.index) in lent)
    link = netlab.loopback_link()
    info = dataclasses.replace(box.local.info, name="rpc", link_gbit=link.gbit, rtt_ms=link.rtt_ms)
    second = Host(info, tuple(dataclasses.replace(c, index=i) for i, c in enumerate(there)))
    return dataclasses.replace(box, hosts=(dataclasses.replace(box.local, cards=here), second))


def _layout(case: dict[str, Any], users: int) -> Layout:
    if case.get("rpc_cards") is not None:
        request = _request(case, users)
        inventory = _rpc_inventory(case)
        model = read_model_spec(request.model)
        workload = planning.default_workload(
            model,
            inventory.local,
            users=users,
            ctx=request.ctx,
            kv_type=request.kv_type,
            flash_attn=request.flash_attn,
            tensor_split=parse_split(request.tensor_split) if request.tensor_split else (),
        )
        target = server.required_target(None)
        rpc_plan = planning.plan_with(
            model, inventory, workload, target, "pooled-rpc", rpc_host="rpc"
        ).plan
        if rpc_plan.best is None:
            raise SystemExit(f"{case} does not fit: {rpc_plan.layouts[0].reason}")
        return rpc_plan.best.layout
    outcome = planning.plan_model(_request(case, users))
    best = outcome.plan.best
    if best is None:
        raise SystemExit(f"{case} does not fit: {outcome.plan.layouts[0].reason}")
    return best.layout


def _name(case: dict[str, Any]) -> str:
    extra = []
    if case.get("kv_type", "f16") != "f16":
        extra.append(f"KV {case['kv_type']}")
    if not case.get("flash_attn", True):
        extra.append("-fa off")
    return f"{Path(case['model']).stem} {case.get('layout', 'auto')}" + (
        f" ({', '.join(extra)})" if extra else ""
    )


def _visible(cards: str) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES for cards given by index (their UUIDs)."""
    box = hardware.inventory()
    wanted = cards.split(",")
    ids = [c.uuid or str(c.index) for c in box.local.cards if str(c.index) in wanted]
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(ids)}


def _used(cards: Sequence[int], pid: int | None = None) -> dict[int, int]:
    """Memory used per card: by process ``pid`` when NVML lists it (what nvidia-smi's
    compute-apps shows), else by everything on the card."""
    box = hardware.inventory()
    out = {}
    for c in box.local.cards:
        if c.index in cards:
            own = [p.used_bytes for p in c.processes if p.pid == pid and p.used_bytes]
            out[c.index] = own[0] if own else c.memory_used_bytes or 0
    return out


def run_case(case: dict[str, Any], logs: Path) -> list[Row]:
    rows = []
    for users in case["users"]:
        layout = _layout(case, users)
        (process,) = layout.processes
        before = _used(process.cards)
        lent_cards = [int(i) for i in str(case.get("rpc_cards", "")).split(",") if i]
        before_lent = _used(lent_cards)
        memory: list[tuple[int, int, int]] = []

        def loaded(
            pid: int,
            layout: Layout = layout,
            before: dict[int, int] = before,
            memory: list[tuple[int, int, int]] = memory,
            before_lent: dict[int, int] = before_lent,
            lent_cards: list[int] = lent_cards,
        ) -> None:
            if layout.cards:
                after = _used(list(before), pid)
                own = any(
                    p.pid == pid for c in hardware.inventory().local.cards for p in c.processes
                )
                here = [c for c in layout.cards if c.host is None]
                memory.extend(
                    (c.card, c.total_bytes, after[c.card] - (0 if own else before[c.card]))
                    for c in here
                )
                # the lent cards (the rpc-server's): all they use now, less what they did
                there = [c for c in layout.cards if c.host is not None]
                after_lent = _used(lent_cards)
                memory.extend(
                    (i, c.total_bytes, after_lent[i] - before_lent[i])
                    for i, c in zip(lent_cards, there, strict=False)
                )
            else:
                memory.append((-1, layout.host_bytes, psutil.Process(pid).memory_info().rss))

        log = logs / f"{_name(case).replace(' ', '_')}-{users}.log"
        with contextlib.ExitStack() as lent:
            if case.get("rpc_cards") is not None:
                endpoint = process.args.rpc[0]
                lent.enter_context(
                    netlab.lend_devices(
                        process.args.binary,
                        int(endpoint.rsplit(":", 1)[1]),
                        _visible(str(case["rpc_cards"])),
                        log.with_suffix(".rpc.log"),
                    )
                )
            (rate,) = measure.run_process(process, (users,), log, on_loaded=loaded)
        basis = layout.basis.kind if layout.basis else ""
        rows.append(
            Row(_name(case), users, layout.throughput.aggregate_tok_s, rate.aggregate_tok_s, basis)
        )
        rows[-1].memory = memory
        print(
            f"{rows[-1].case}, {users} user(s): predicted {rows[-1].predicted:.1f}, measured "
            f"{rate.aggregate_tok_s:.1f} tok/s",
            file=sys.stderr,
            flush=True,
        )
    return rows


def table(rows: Sequence[Row]) -> str:
    out = [
        "| case | users | measured tok/s | predicted (uncalibrated) | error | with --measure | "
        "error | memory plan / real (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = "; ".join(
            f"{'RSS' if card < 0 else f'card {card}'} {plan // MIB} / {real // MIB}"
            for card, plan, real in r.memory
        )
        calibrated = f"{r.calibrated:.1f}" if r.calibrated is not None else ""
        out.append(
            f"| {r.case} | {r.users} | {r.measured:.1f} | {r.predicted:.1f} ({r.basis}) | "
            f"{r.error(r.predicted)} | {calibrated} | {r.error(r.calibrated)} | {mem} |"
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--measure", action="store_true", help="then plan --measure, replan")
    args = parser.parse_args(argv)
    cases = json.loads(args.cases.read_text())
    logs = paths.state_dir() / "speed_holdout"
    rows_by_case = [(case, run_case(case, logs)) for case in cases]
    if args.measure:
        box = hardware.inventory()
        result = measure.measure(
            list(box.local.cards),
            box.local.info.cpu_cores,
            None,
            server.required_target(None),
            lambda line: print(line, file=sys.stderr, flush=True),
        )
        print(json.dumps(result.to_json()), file=sys.stderr)
        for case, rows in rows_by_case:
            for row in rows:
                row.calibrated = _layout(case, row.users).throughput.aggregate_tok_s
    rows = [r for _, rs in rows_by_case for r in rs]
    if args.out:
        args.out.write_text("".join(json.dumps(r.to_json()) + "\n" for r in rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
