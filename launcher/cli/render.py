"""What the commands print: tables and sentences made from the use cases' results."""

from __future__ import annotations

import sys
import time

from launcher.app.fleet import FleetState
from launcher.app.planning import BoxOutcome, PlanOutcome, Verification
from launcher.bench.load import LoadResult
from launcher.gpu.findings import Finding
from launcher.gpu.inventory import Inventory
from launcher.plan.advisor import Across


def say(line: str) -> None:
    """A progress line on stderr (stdout stays for results)."""
    print(line, file=sys.stderr, flush=True)


class Progress:
    """Progress on stderr: one rewritten line on a terminal, a line per 10% elsewhere."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.shown = -10
        self.started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        pct = done * 100 // max(total, 1)
        if self.tty:
            print(
                f"\r{self.label}: {pct:3d}%  {done / 2**20:,.0f} / {total / 2**20:,.0f} MiB",
                end="",
                file=sys.stderr,
                flush=True,
            )
        elif pct >= self.shown + 10:
            self.shown = pct - pct % 10
            print(f"{self.label}: {pct}%", file=sys.stderr, flush=True)

    def finish(self) -> float:
        if self.tty:
            print(file=sys.stderr)
        return time.monotonic() - self.started


def _gib(n: int | float | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f}"


def print_inventory(inventory: Inventory, findings: list[list[Finding]]) -> None:
    if inventory.source == "nvml" and not inventory.driver.available:
        print(
            f"No NVIDIA GPU: {inventory.driver.reason}. Planning on a hardware profile "
            "(--hardware) and cpu:N workers still work."
        )
    elif inventory.source == "nvml":
        print(
            f"NVIDIA driver {inventory.driver.driver_version}, CUDA {inventory.driver.cuda_version}"
        )
    else:
        print(f"Hardware profile {inventory.source.removeprefix('profile:')}")
    for host, host_findings in zip(inventory.hosts, findings, strict=True):
        info = host.info
        where = f" at {info.address}" if info.address else ""
        print(
            f"\nHost {host.name}{where}: {info.cpu_cores} CPU threads, "
            f"{_gib(info.ram_total_bytes)} GiB RAM ({_gib(info.ram_available_bytes)} GiB "
            "available)" + (f", {info.numa_nodes} NUMA nodes" if info.numa_nodes else "")
        )
        if not host.cards:
            print("  no NVIDIA cards")
            continue
        print(
            f"  {'GPU':<4}{'name':<30}{'VRAM used/total GiB':<21}{'PCIe now / max (card)':<26}"
            f"{'mem bw':>10}  {'NVLink':<9}{'temp':>5}{'power W':>12}"
        )
        for c in host.cards:
            link = c.pcie
            pcie = (
                f"{link.describe(link.gen_current, link.width_current)} / "
                f"{link.describe(link.gen_max, link.width_max)}"
                + (f" (gen{link.gen_card_max})" if link.gen_card_max else "")
            )
            bw = (
                f"{c.memory_bandwidth_bytes_s / 1e9:.0f} GB/s"
                if c.memory_bandwidth_bytes_s
                else "?"
            )
            peers = sum(1 for p in host.links if p.nvlink_links and c.index in (p.a, p.b))
            nv = f"{peers} peer{'s' if peers != 1 else ''}" if peers else "-"
            temp = f"{c.temperature_c}C" if c.temperature_c is not None else "-"
            power = (
                f"{c.power_draw_w:.0f}/{c.power_limit_w:.0f}"
                if c.power_draw_w is not None and c.power_limit_w is not None
                else "-"
            )
            mark = " [reserved]" if c.reserved else " [lost]" if c.lost else ""
            name = (c.name + mark)[:29]
            vram = f"{_gib(c.memory_used_bytes)} / {_gib(c.memory_total_bytes)}"
            print(
                f"  {c.index:<4}{name:<30}{vram:<21}{pcie:<26}{bw:>10}  {nv:<9}{temp:>5}{power:>12}"
            )
        if host_findings:
            print("  Findings:")
            for f in host_findings:
                print(f"  - {f.text}")


def print_plan(outcome: PlanOutcome) -> None:
    result = outcome.plan
    inventory = outcome.inventory
    measured = outcome.measured
    spec = result.spec
    w = result.workload
    print(
        f"Model: {spec.name} ({spec.arch}, {spec.quantization}, {spec.parameters / 1e9:.1f}B "
        f"parameters, {spec.weights_bytes / 2**30:.2f} GiB, {spec.n_layer} layers"
        f"{f', {len(spec.parts)} parts' if len(spec.parts) > 1 else ''})"
    )
    for note in spec.notes:
        print(f"Note: {note}.")
    print(f"Hardware: {_hardware(inventory)} ({result.host_name}); server: {outcome.server_note}")
    print(
        f"Workload: {w.users} user(s) x {w.ctx} tokens, KV {w.kv_type}, goal {w.goal}"
        + ("" if w.flash_attn else ", flash attention off")
        + (f", tensor split {','.join(f'{v:g}' for v in w.tensor_split)}" if w.tensor_split else "")
        + "\n"
    )
    for r in result.layouts:
        lay = r.layout
        t = lay.throughput
        state = "" if lay.feasible else "  [does not fit]"
        print(
            f"{r.rank}. {lay.kind}{state}  single {t.single_user_tok_s:.1f} tok/s, "
            f"aggregate {t.aggregate_tok_s:.0f} tok/s"
            + (f", prompt {t.prompt_tok_s:.0f} tok/s" if t.prompt_tok_s else "")
        )
        print(f"   {r.reason}")
        for note in lay.notes:
            if note not in r.reason:
                print(f"   {note[0].upper()}{note[1:]}.")
        if lay.kind in measured:
            value, source = measured[lay.kind]
            print(
                f"   On this box: {value:.0f} tok/s for {w.users} user(s) ({source}, "
                "from 'llama-launcher bench')."
            )
        elif lay.basis and lay.feasible:
            print(f"   Speed {lay.basis.label}.")
        if lay.cards:
            print(
                f"   {'card':>6} {'layers':>6} {'weights':>9} {'KV':>8} {'compute':>8} "
                f"{'total':>8} {'free after':>11}  GiB"
            )
            for c in lay.cards:
                print(
                    f"   {c.label:>6} {len(c.layers):>6} {c.weights_bytes / 2**30:>9.2f} "
                    f"{c.kv_bytes / 2**30:>8.2f} {c.compute_bytes / 2**30:>8.2f} "
                    f"{c.total_bytes / 2**30:>8.2f} {c.free_after_bytes / 2**30:>11.2f}"
                )
        print(f"   host RAM: {lay.host_bytes / 2**30:.2f} GiB")
        for p in lay.processes:
            print(f"   $ {command_line(p.env, p.argv)}")
        print()
    for line in result.advice:
        print(line)
    if result.across is not None:
        _print_across(result.across)
    for line in outcome.notes:
        print(line)


def _print_across(across: Across) -> None:
    """The plan's second box: only this box, route to a copy there, or pool over RPC."""
    assumed = "" if across.link_given else "; the profile gives no link, 1 GbE assumed"
    print(f"With host {across.host} ({across.link.describe()}{assumed}):")
    for i, o in enumerate(across.options, 1):
        if o.feasible:
            print(
                f"  {i}. {o.label}: aggregate {o.aggregate_tok_s:.0f} tok/s, single "
                f"{o.single_user_tok_s:.1f} tok/s; {o.detail}."
            )
        else:
            print(f"  {i}. {o.label}: not possible, {o.problem}.")
    print()


def print_box_plan(outcome: BoxOutcome) -> None:
    """``plan A B C``: the whole-box options, each with its groups, card map and commands."""
    result = outcome.result
    print(
        f"Hardware: {_hardware(outcome.inventory)} ({result.host_name}); "
        f"server: {outcome.server_note}"
    )
    for r in result.requests:
        m, w = r.spec, r.workload
        print(
            f"Model {r.name}: {m.arch}, {m.parameters / 1e9:.1f}B, "
            f"{m.weights_bytes / 2**30:.2f} GiB; {w.users} user(s) x {w.ctx} tokens, "
            f"KV {w.kv_type}"
        )
    print(f"Goal: {result.goal}\n")
    cards = {c.index: c for c in outcome.inventory.local.cards}
    for plan in result.plans:
        print(f"{plan.rank}. {plan.reason}")
        print(
            f"   {'group':<20} {'layout':<14} {'cards':<12} {'slots':>5} {'single':>8} "
            f"{'aggregate':>10}  tok/s"
        )
        for p in plan.placements:
            t = p.throughput
            where = ",".join(map(str, p.cards)) or "CPU"
            slots = sum(x.slots for x in p.layout.processes)
            print(
                f"   {p.name[:20]:<20} {p.layout.kind:<14} {where[:12]:<12} {slots:>5} "
                f"{t.single_user_tok_s:>8.1f} {t.aggregate_tok_s:>10.0f}"
                + ("  on demand" if p.on_demand else "")
            )
        used: dict[int, list[str]] = {}
        for p in plan.placements:
            for c in p.layout.cards:
                used.setdefault(c.card, []).append(
                    f"{p.name} {c.total_bytes / 2**30:.1f}" + ("*" if p.on_demand else "")
                )
        for index, parts in sorted(used.items()):
            total = cards[index].memory_total_bytes / 2**30 if index in cards else 0
            print(f"   card {index} ({total:.0f} GiB): {', '.join(parts)} GiB")
        if any(p.on_demand for p in plan.placements):
            print("   * loaded on demand")
        if plan.rank == 1:
            for p in plan.placements:
                for proc in p.layout.processes:
                    print(f"   $ {command_line(proc.env, proc.argv)}")
        print()
    if not result.plans:
        print("No way to run these models together on this box.")


def command_line(env: dict[str, str], argv: tuple[str, ...]) -> str:
    """A worker as a shell line: its environment additions, then its argv."""
    return f"{' '.join(f'{k}={v}' for k, v in env.items())} {' '.join(argv)}"


def print_verification(check: Verification) -> None:
    print(f"\nllama-fit-params for {check.kind} (MiB, planner vs llama.cpp):")
    for c in check.cards:
        (w, kv, comp), (tw, tkv, tcomp) = c.ours, c.theirs
        print(
            f"  card {c.card} ({c.device}): weights {w} vs {tw} ({w - tw:+d}), KV {kv} vs "
            f"{tkv} ({kv - tkv:+d}), compute+CUDA {comp} vs {tcomp} ({comp - tcomp:+d})"
        )
    for est in check.host:
        print(
            f"  host: weights {est.model_mib}, KV {est.context_mib}, compute "
            f"{est.compute_mib} (llama.cpp); planner host RAM {check.host_planned_bytes >> 20}"
        )


def print_status(fleets: list[FleetState]) -> None:
    if not fleets:
        print("No fleet is running. Start one with 'llama-launcher up MODEL.gguf|PROFILE'.")
        return
    for f in fleets:
        router = f.router["url"] if f.router else "no router"
        print(f"Fleet {f.name} ({f.layout}, supervisor pid {f.supervisor_pid}, {router})")
        # columns as wide as their longest entry: long fleet names and URLs stay apart
        cards = {w.id: ",".join(map(str, w.cards)) or "cpu" for w in f.workers}
        iw = max([22, *(len(w.id) + 2 for w in f.workers)])
        uw = max([24, *(len(w.url) + 2 for w in f.workers)])
        cw = max([10, *(len(c) + 2 for c in cards.values())])
        print(
            f"  {'worker':<{iw}}{'state':<12}{'pid':>8}  {'url':<{uw}}{'cards':<{cw}}"
            f"{'restarts':>9}{'tok/s':>9}{'slots':>8}"
        )
        for w in f.workers:
            print(
                f"  {w.id:<{iw}}{w.state:<12}{w.pid or '-':>8}  {w.url:<{uw}}{cards[w.id]:<{cw}}"
                f"{w.restarts:>9}{w.tok_s:>9.1f}{f'{w.slots_busy}/{w.slots_total}':>8}"
            )
            if w.message:
                print(f"      {w.message}")
        if len(f.groups) > 1 or any(g.on_demand for g in f.groups):
            gw = max([10, *(len(g.name) + 2 for g in f.groups)])
            print(f"  {'group':<{gw}}{'state':<10}{'kind':<12}workers, names")
            for g in f.groups:
                state = g.state + ("*" if g.on_demand else "")
                names = ", ".join([g.name, *g.aliases])
                workers = " ".join(w.rsplit("/", 1)[-1] for w in g.workers)
                idle = f"; idle {g.idle_s:.0f} of {g.ttl_s:.0f} s" if g.idle_s is not None else ""
                print(f"  {g.name:<{gw}}{state:<10}{g.kind:<12}{workers}: {names}{idle}")
                if g.message:
                    print(f"      {g.message}")
            if any(g.on_demand for g in f.groups):
                print("  * on demand: loaded on its first request, unloaded after its ttl")
        for card in f.remote_cards:
            used = card.get("memory_used_bytes") or 0
            total = card.get("memory_total_bytes") or 0
            busy = card.get("gpu_busy_pct")
            print(
                f"  card {card.get('host')}:{card.get('index')} {card.get('name', '')}: "
                f"{used / 2**30:.1f} / {total / 2**30:.1f} GiB"
                + (f", busy {busy:.0f}%" if isinstance(busy, (int, float)) else "")
            )


def print_load(result: LoadResult) -> None:
    print(
        f"requests {result.requests} ({result.errors} errors), tokens {result.tokens} in "
        f"{result.wall_s:.2f} s: {result.aggregate_tok_s:.1f} tok/s aggregate, "
        f"{result.per_user_tok_s_p50:.1f} tok/s per user (p50)"
    )
    print(
        f"time to first token p50 {_ms(result.ttft_ms_p50)}; latency p50 "
        f"{_ms(result.latency_ms_p50)}, p95 {_ms(result.latency_ms_p95)}, p99 "
        f"{_ms(result.latency_ms_p99)}"
    )
    for err in result.error_samples:
        print(f"  error: {err}")


def _ms(value: float | None) -> str:
    """Milliseconds, or "-" when nothing was measured (every request failed)."""
    return "-" if value is None else f"{value} ms"


def _hardware(inventory: Inventory) -> str:
    """Where the cards come from: this box (with or without a driver) or a profile."""
    if inventory.source != "nvml":
        return inventory.source.replace("profile:", "hardware profile ")
    return "this box" if inventory.driver.available else "this box (no NVIDIA driver: CPU only)"
