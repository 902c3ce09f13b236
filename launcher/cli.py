"""The ``llama-launcher`` command line.

Each subcommand is a thin layer over the headless packages: parse, call, print. A
``LauncherError`` ends the program with its one-sentence message and no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from launcher import __version__
from launcher.errors import LauncherError

if TYPE_CHECKING:
    from launcher.gpu.inventory import Inventory
    from launcher.model.spec import ModelSpec
    from launcher.plan.advisor import Plan
    from launcher.plan.layouts import ServerTarget
    from launcher.plan.workload import Workload

Handler = Callable[[argparse.Namespace], int]


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


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- install-server -----------------------------------------------------------------------


def cmd_install_server(args: argparse.Namespace) -> int:
    from launcher.run.install import InstallRequest, install_server

    request = InstallRequest(
        llama_cpp_python_version=args.llama_cpp_python_version,
        source=Path(args.source) if args.source else None,
        backend=args.backend,
        force=args.force,
        jobs=args.jobs,
    )
    inst, built = install_server(request, _say)
    if not built:
        print(f"llama-server {inst.version} ({inst.backend}) is already installed: {inst.server}")
        print("Pass --force to rebuild it.")
    else:
        print(f"Installed llama-server {inst.version} ({inst.backend}): {inst.server}")
    return 0


# --- make-model ---------------------------------------------------------------------------


def cmd_make_model(args: argparse.Namespace) -> int:
    from launcher.model import synthetic
    from launcher.run.server_binary import find_server, find_vocab

    shape = synthetic.shape_for(args.arch, args.shape)
    synthetic.check_targets(Path(args.out), args.split, args.force)
    if args.vocab:
        vocab = Path(args.vocab)
    else:
        try:
            server = find_server(args.llama_server)
        except LauncherError:
            server = None
        vocab = find_vocab(synthetic.vocab_file_name(shape), server)
    progress = Progress(f"writing {Path(args.out).name}")
    written = synthetic.write_model(
        Path(args.out),
        shape,
        vocab,
        context=args.ctx,
        parts=args.split,
        sparse=args.sparse,
        force=args.force,
        progress=None if args.sparse else progress,
    )
    seconds = progress.finish()
    size = sum(p.stat().st_size for p in written)
    kind = "sparse" if args.sparse else "dense"
    print(
        f"Wrote synthetic {shape.arch} {shape.size} ({kind}, {size / 2**30:.2f} GiB) "
        f"in {seconds:.1f} s:"
    )
    for p in written:
        print(f"  {p}")
    return 0


# --- gpus and hardware profiles --------------------------------------------------------------


def _inventory(args: argparse.Namespace) -> Inventory:
    """The hardware to show or plan for: a profile when ``--hardware`` is given, else NVML."""
    from launcher.gpu import inventory as inv
    from launcher.gpu.backend import open_backend
    from launcher.profiles import hardware

    if getattr(args, "hardware", None):
        return hardware.load_hardware_profile(hardware.resolve(args.hardware))
    backend = open_backend()
    try:
        return inv.from_backend(backend)
    finally:
        backend.close()


def _gib(n: int | float | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f}"


def print_inventory(inventory: Inventory) -> None:
    from launcher.gpu.findings import host_findings

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
    for host in inventory.hosts:
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
        findings = host_findings(host)
        if findings:
            print("  Findings:")
            for f in findings:
                print(f"  - {f.text}")


def cmd_gpus(args: argparse.Namespace) -> int:
    from launcher.gpu import inventory as inv
    from launcher.gpu.findings import host_findings

    inventory = _inventory(args)
    if args.json:
        findings = [[f.to_json() for f in host_findings(h)] for h in inventory.hosts]
        print(json.dumps(inv.to_json(inventory, findings), indent=2))
    else:
        print_inventory(inventory)
    return 0


def cmd_hardware_save(args: argparse.Namespace) -> int:
    from launcher.profiles import hardware

    inventory = _inventory(argparse.Namespace(hardware=None))
    path = hardware.save_profile(inventory, args.name, force=args.force)
    n = len(inventory.cards)
    print(
        f"Saved this box ({n} card{'s' if n != 1 else ''}) as hardware profile "
        f"'{args.name}': {path}"
    )
    return 0


def cmd_hardware_list(args: argparse.Namespace) -> int:
    from launcher.profiles import hardware

    for name, path, origin in hardware.list_profiles():
        print(f"{name:<28} {origin:<8} {path}")
    return 0


# --- plan ---------------------------------------------------------------------------------


def _server_target(args: argparse.Namespace, inventory: Inventory) -> tuple[ServerTarget, str]:
    """The llama-server the plan is for: the local build, else the pinned version's abilities."""
    from launcher.plan.layouts import ServerTarget
    from launcher.run.server_binary import find_server, probe

    try:
        server = find_server(args.llama_server)
        caps = probe(server)
        modes = tuple(m for m in caps.split_modes if m != "row")  # -sm row fails (DESIGN.md)
        return ServerTarget(str(server.path), modes, caps.supports_fit), f"{server.path}"
    except LauncherError:
        if inventory.source == "nvml":
            return ServerTarget(), "llama-server (none found; assuming the pinned llama.cpp)"
        return ServerTarget(), "llama-server (pinned llama.cpp abilities)"


def _workload(args: argparse.Namespace, inventory: Inventory, spec: ModelSpec) -> Workload:
    from launcher.plan.workload import DEFAULT_USERS_PER_WORKER, Workload, parse_card_list

    ctx = args.ctx or min(4096, spec.training_context)
    cards = max(1, len([c for c in inventory.local.cards if c.usable]))
    users = args.users or DEFAULT_USERS_PER_WORKER * cards
    return Workload(
        users=users,
        ctx=ctx,
        kv_type=args.kv_type,
        goal=args.goal,
        cards=parse_card_list(args.cards),
        exclude_cards=parse_card_list(args.exclude_cards),
    )


def _plan_json(result: Plan, inventory: Inventory) -> dict[str, object]:
    spec = result.spec
    w = result.workload
    return {
        "model": {
            "path": str(spec.path),
            "arch": spec.arch,
            "name": spec.name,
            "quantization": spec.quantization,
            "parameters": spec.parameters,
            "n_layer": spec.n_layer,
            "weights_bytes": spec.weights_bytes,
            "training_context": spec.training_context,
            "parts": len(spec.parts),
            "notes": list(spec.notes),
        },
        "workload": {"users": w.users, "ctx": w.ctx, "kv_type": w.kv_type, "goal": w.goal},
        "host": result.host_name,
        "hardware": inventory.source,
        "layouts": [
            {
                "kind": r.layout.kind,
                "rank": r.rank,
                "feasible": r.layout.feasible,
                "reason": r.reason,
                "tensor_split": list(r.layout.tensor_split),
                "processes": [p.to_json() for p in r.layout.processes],
                "cards": [
                    {
                        "index": c.card,
                        "uuid": c.uuid,
                        "weights_bytes": c.weights_bytes,
                        "kv_bytes": c.kv_bytes,
                        "compute_bytes": c.compute_bytes,
                        "total_bytes": c.total_bytes,
                        "free_after_bytes": c.free_after_bytes,
                    }
                    for c in r.layout.cards
                ],
                "host_bytes": r.layout.host_bytes,
                "predicted": r.layout.throughput.to_json(),
            }
            for r in result.layouts
        ],
        "advice": list(result.advice),
    }


def print_plan(result: Plan, inventory: Inventory, server_note: str) -> None:
    spec = result.spec
    w = result.workload
    print(
        f"Model: {spec.name} ({spec.arch}, {spec.quantization}, {spec.parameters / 1e9:.1f}B "
        f"parameters, {spec.weights_bytes / 2**30:.2f} GiB, {spec.n_layer} layers"
        f"{f', {len(spec.parts)} parts' if len(spec.parts) > 1 else ''})"
    )
    for note in spec.notes:
        print(f"Note: {note}.")
    print(f"Hardware: {inventory.source} ({result.host_name}); server: {server_note}")
    print(f"Workload: {w.users} user(s) x {w.ctx} tokens, KV {w.kv_type}, goal {w.goal}\n")
    for r in result.layouts:
        lay = r.layout
        t = lay.throughput
        state = "" if lay.feasible else "  [does not fit]"
        print(
            f"{r.rank}. {lay.kind}{state}  single {t.single_user_tok_s:.1f} tok/s, "
            f"aggregate {t.aggregate_tok_s:.0f} tok/s, prompt {t.prompt_tok_s:.0f} tok/s"
        )
        print(f"   {r.reason}")
        if lay.cards:
            print(
                f"   {'card':>6} {'weights':>9} {'KV':>8} {'compute':>8} {'total':>8} "
                f"{'free after':>11}  GiB"
            )
            for c in lay.cards:
                print(
                    f"   {c.card:>6} {c.weights_bytes / 2**30:>9.2f} {c.kv_bytes / 2**30:>8.2f} "
                    f"{c.compute_bytes / 2**30:>8.2f} {c.total_bytes / 2**30:>8.2f} "
                    f"{c.free_after_bytes / 2**30:>11.2f}"
                )
        print(f"   host RAM: {lay.host_bytes / 2**30:.2f} GiB")
        for p in lay.processes:
            env = " ".join(f"{k}={v}" for k, v in p.env.items())
            print(f"   $ {env} {' '.join(p.argv)}")
        print()
    for line in result.advice:
        print(line)


def cmd_plan(args: argparse.Namespace) -> int:
    from launcher.model.spec import read_mmproj_bytes, read_model_spec
    from launcher.plan.advisor import plan

    spec = read_model_spec(Path(args.model))
    inventory = _inventory(args)
    server, note = _server_target(args, inventory)
    workload = _workload(args, inventory, spec)
    mmproj = read_mmproj_bytes(Path(args.mmproj)) if args.mmproj else 0
    result = plan(
        spec, inventory, workload, server, args.layout, mmproj_bytes=mmproj, mmproj_path=args.mmproj
    )
    if args.json:
        print(json.dumps(_plan_json(result, inventory), indent=2))
    else:
        print_plan(result, inventory, note)
    if args.verify:
        return _verify(result, args)
    return 0 if result.best is not None else 3


def _verify(result: Plan, args: argparse.Namespace) -> int:
    from launcher.run.server_binary import find_server
    from launcher.run.verify import run_fit_params

    best = result.best
    if best is None:
        raise LauncherError("Nothing fits, so there is nothing to verify.")
    if args.hardware:
        raise LauncherError("--verify checks this box; drop --hardware to use it.")
    server = find_server(args.llama_server)
    fit = server.sibling("llama-fit-params")
    if fit is None:
        raise LauncherError(
            f"No llama-fit-params beside {server.path}; run 'llama-launcher "
            "install-server --force' to build it."
        )
    print(f"\nllama-fit-params for {best.layout.kind} (MiB, planner vs llama.cpp):")
    for p in best.layout.processes:
        estimates = run_fit_params(fit, p.argv, p.env)
        cards = [c for c in best.layout.cards if c.card in p.cards]
        for est, card in zip([e for e in estimates if e.device != "Host"], cards, strict=False):
            ours = (card.weights_bytes >> 20, card.kv_bytes >> 20, card.compute_bytes >> 20)
            print(
                f"  card {card.card} ({est.device}): weights {ours[0]} vs {est.model_mib} "
                f"({ours[0] - est.model_mib:+d}), KV {ours[1]} vs {est.context_mib} "
                f"({ours[1] - est.context_mib:+d}), compute+CUDA {ours[2]} vs "
                f"{est.compute_mib} ({ours[2] - est.compute_mib:+d})"
            )
        for est in estimates:
            if est.device == "Host":
                print(
                    f"  host: weights {est.model_mib}, KV {est.context_mib}, compute "
                    f"{est.compute_mib} (llama.cpp); planner host RAM "
                    f"{best.layout.host_bytes >> 20}"
                )
    return 0


# --- the main job (until the TUI exists) ---------------------------------------------------


def cmd_overview(args: argparse.Namespace) -> int:
    """Print this box (host, cards, findings) and the llama-server that would run."""
    from launcher.run.server_binary import find_server, probe

    print_inventory(_inventory(argparse.Namespace(hardware=None)))
    try:
        server = find_server(args.llama_server)
        caps = probe(server)
        print(
            f"\nllama-server: {server.path} (from {server.origin}), version {caps.version}"
            f"{f' commit {caps.commit}' if caps.commit else ''}, "
            f"split modes {', '.join(caps.split_modes) or 'none'}"
        )
    except LauncherError as err:
        print(f"\nllama-server: {err}")
    return 0


# --- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llama-launcher",
        description="Plan, launch and watch llama.cpp servers across several NVIDIA cards.",
    )
    parser.add_argument("--version", action="version", version=f"llama-launcher {__version__}")
    parser.add_argument(
        "--llama-server",
        metavar="PATH",
        help="the llama-server binary to use (else $LLAMA_SERVER, the profile, "
        "PATH, then the cache)",
    )
    parser.set_defaults(handler=cmd_overview)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser(
        "install-server", help="build llama-server, llama-bench and llama-fit-params into the cache"
    )
    p.add_argument(
        "--llama-cpp-python-version",
        default="0.3.36",
        metavar="X",
        help="take llama.cpp from this llama-cpp-python sdist (default 0.3.36)",
    )
    p.add_argument("--source", metavar="DIR", help="build from a llama.cpp checkout instead")
    p.add_argument(
        "--backend",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="CUDA when nvcc and a card are present, else a portable CPU build",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if already installed")
    p.add_argument("-j", "--jobs", type=int, help="parallel compile jobs (default: all cores)")
    p.set_defaults(handler=cmd_install_server)

    p = sub.add_parser("make-model", help="write a synthetic GGUF with a real model's shape")
    p.add_argument("out", metavar="OUT.gguf")
    p.add_argument("--arch", required=True, help="llama, qwen3, qwen3moe or gemma3")
    p.add_argument(
        "--shape",
        required=True,
        metavar="SIZE",
        help="e.g. tiny, 8b, 70b (llama); tiny, 0.6b, 32b (qwen3)",
    )
    p.add_argument("--ctx", type=int, help="training context to record (default: the model's)")
    p.add_argument(
        "--split", type=int, default=1, metavar="N", help="write N files NAME-0000i-of-0000N.gguf"
    )
    p.add_argument(
        "--sparse", action="store_true", help="leave the weights as a hole: zeros, no disk used"
    )
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.add_argument(
        "--vocab",
        metavar="FILE",
        help="a llama.cpp ggml-vocab-*.gguf to take the "
        "tokenizer from (default: from the installed llama.cpp)",
    )
    p.set_defaults(handler=cmd_make_model)

    p = sub.add_parser("plan", help="rank the layouts for a model on this box or a profile")
    p.add_argument("model", metavar="MODEL.gguf")
    p.add_argument("--hardware", metavar="NAME|PATH", help="plan for a hardware profile")
    p.add_argument(
        "--users", type=int, help="concurrent users = slots in total (default: 4 per card)"
    )
    p.add_argument("--ctx", type=int, help="context per user (default 4096 or the model's)")
    p.add_argument("--kv-type", choices=("f16", "q8_0", "q4_0"), default="f16")
    p.add_argument("--goal", choices=("throughput", "latency", "context"), default="throughput")
    p.add_argument(
        "--layout",
        default="auto",
        metavar="KIND",
        help="auto, per-card, pooled-layer, pooled-tensor, groups:K, partial-offload or cpu:N",
    )
    cards = p.add_mutually_exclusive_group()
    cards.add_argument("--cards", metavar="LIST", help="cards to use: indices or UUIDs")
    cards.add_argument("--exclude-cards", metavar="LIST", help="cards to leave out")
    p.add_argument(
        "--mmproj", metavar="FILE", help="a vision projector, on each worker's first card"
    )
    p.add_argument(
        "--verify", action="store_true", help="compare with llama-fit-params on this box"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_plan)

    p = sub.add_parser("gpus", help="list this box's GPUs, links and findings (or a profile's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--hardware", metavar="NAME|PATH", help="show a hardware profile instead")
    p.set_defaults(handler=cmd_gpus)

    hw = sub.add_parser("hardware", help="hardware profiles")
    hw_sub = hw.add_subparsers(title="hardware commands", metavar="ACTION", required=True)
    p = hw_sub.add_parser("save", help="save this box as a hardware profile")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--force", action="store_true", help="replace an existing profile")
    p.set_defaults(handler=cmd_hardware_save)
    p = hw_sub.add_parser("list", help="list saved and shipped hardware profiles")
    p.set_defaults(handler=cmd_hardware_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except LauncherError as err:
        print(f"llama-launcher: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("llama-launcher: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
