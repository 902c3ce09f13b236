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
    from launcher.bench.results import BenchRun
    from launcher.gpu.inventory import Inventory
    from launcher.model.spec import ModelSpec
    from launcher.plan.advisor import Plan
    from launcher.plan.layouts import Layout, ServerTarget
    from launcher.plan.workload import Workload
    from launcher.profiles.launch import LaunchProfile
    from launcher.router.balancer import Member
    from launcher.router.server import RouterConfig

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
    from launcher.run.server_binary import find_server, probe, server_target

    try:
        server = find_server(args.llama_server)
        return server_target(server, probe(server)), f"{server.path}"
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


def _measured(result: Plan, runs: list[BenchRun]) -> dict[str, tuple[float, str]]:
    """This box's bench ``runs`` for the plan's layouts: measured or calibrated aggregates."""
    from launcher.bench import results

    out = {}
    for r in result.layouts:
        t = r.layout.throughput
        fixed = results.calibrated(
            runs,
            r.layout.kind,
            result.workload.users,
            t.aggregate_tok_s,
            t.prompt_tok_s,
            len(r.layout.processes),
        )
        if fixed is not None:
            out[r.layout.kind] = fixed
    return out


def print_plan(
    result: Plan,
    inventory: Inventory,
    server_note: str,
    measured: dict[str, tuple[float, str]] | None = None,
) -> None:
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
        if measured and lay.kind in measured:
            value, source = measured[lay.kind]
            print(
                f"   On this box: {value:.0f} tok/s for {w.users} user(s) ({source}, "
                "from 'llama-launcher bench')."
            )
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
    from launcher.bench import results
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
    keys = results.keys_for(inventory, result.spec, server)
    flags = results.inherited_flags(result, server)
    runs = results.load(keys, flags)
    measured = _measured(result, runs)
    if args.json:
        data = _plan_json(result, inventory)
        for entry, r in zip(data["layouts"], result.layouts, strict=True):  # type: ignore[call-overload]
            if r.layout.kind in measured:
                value, source = measured[r.layout.kind]
                entry["measured"] = {"aggregate_tok_s": round(value, 1), "source": source}
        print(json.dumps(data, indent=2))
    else:
        print_plan(result, inventory, note, measured)
        if flags:
            print(results.inherited_note(flags))
        if not runs and (stale := results.stale_note(keys, flags)):
            print(f"Note: {stale}")
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


# --- fleets: up, down, status, logs ---------------------------------------------------------


def _launch_profile_for(args: argparse.Namespace) -> LaunchProfile:
    """The profile ``up`` runs: a saved one, or one made from a model path and the options."""
    from launcher.profiles import launch

    target = args.target
    if target.endswith(".gguf") or Path(target).suffix == ".gguf":
        profile = launch.LaunchProfile(
            name=args.name or _fleet_name(Path(target)),
            model=str(Path(target).expanduser().resolve()),
        )
    else:
        profile = launch.load_launch_profile(launch.resolve(target))
        if args.name:
            profile.name = args.name
    if args.layout:
        profile.layout = args.layout
        profile.cards, profile.pci_bus_ids, profile.tensor_split = [], [], []
    if args.cards:
        profile.cards = [c.strip() for c in args.cards.split(",") if c.strip()]
        profile.pci_bus_ids = []
    if args.users:
        profile.users = args.users
    if args.ctx:
        profile.ctx = args.ctx
    if args.port:
        profile.router_port = args.port
    return profile


def _fleet_name(model: Path) -> str:
    stem = model.name.removesuffix(".gguf")
    if "-00001-of-" in stem:
        stem = stem.split("-00001-of-")[0]
    return "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in stem) or "fleet"


def _resolve_cards(profile: LaunchProfile, inventory: Inventory, replan: bool) -> tuple[str, ...]:
    """The profile's cards as they are in this box (UUID, else PCI bus id)."""
    if not profile.cards or replan:
        return ()
    cards = inventory.local.cards
    by_uuid = {c.uuid: c for c in cards if c.uuid}
    by_bus = {c.pci_bus_id: c for c in cards if c.pci_bus_id}
    out, missing = [], []
    for i, wanted in enumerate(profile.cards):
        if wanted in by_uuid or wanted.isdigit():
            out.append(wanted)
            continue
        bus = profile.pci_bus_ids[i] if i < len(profile.pci_bus_ids) else None
        if bus and bus in by_bus:
            out.append(by_bus[bus].uuid or str(by_bus[bus].index))
        else:
            missing.append(wanted)
    if missing:
        raise LauncherError(
            f"Profile '{profile.name}' uses card(s) {', '.join(missing)} that are not in this box "
            "(replaced, moved or off the bus); run 'llama-launcher up "
            f"{profile.name} --replan' to plan for the cards here, or save the profile again."
        )
    return tuple(out)


def _plan_fleet(profile: LaunchProfile, args: argparse.Namespace) -> tuple[Layout, str]:
    from launcher.model.spec import read_mmproj_bytes, read_model_spec
    from launcher.plan.advisor import plan
    from launcher.plan.workload import DEFAULT_USERS_PER_WORKER, Workload

    spec = read_model_spec(Path(profile.model).expanduser())
    inventory = _inventory(argparse.Namespace(hardware=None))
    option = args.llama_server or profile.llama_server
    server, _ = _server_target(argparse.Namespace(llama_server=option), inventory)
    if server.path == "llama-server":
        from launcher.run.server_binary import find_server

        find_server(option)  # raises with the install command
    kind = profile.layout
    usable = [c for c in inventory.local.cards if c.usable]
    if kind == "auto" and not usable:
        kind = "cpu:1"
    cards = _resolve_cards(profile, inventory, args.replan)
    workers = max(1, len(cards) or len(usable))
    workload = Workload(
        users=profile.users or DEFAULT_USERS_PER_WORKER * workers,
        ctx=profile.ctx or min(4096, spec.training_context),
        kv_type=profile.kv_type,
        goal=profile.goal,
        cards=cards,
    )
    mmproj = read_mmproj_bytes(Path(profile.mmproj)) if profile.mmproj else 0
    result = plan(
        spec,
        inventory,
        workload,
        server,
        kind,
        router_port=profile.router_port,
        mmproj_bytes=mmproj,
        mmproj_path=profile.mmproj,
    )
    best = result.best
    if best is None:
        raise LauncherError(
            "Nothing fits on this box: " + " ".join(result.advice or (result.layouts[0].reason,))
        )
    return best.layout, best.reason


def cmd_up(args: argparse.Namespace) -> int:
    from launcher.plan.layouts import with_extra_args
    from launcher.run import supervisor as sup

    profile = _launch_profile_for(args)
    layout, reason = _plan_fleet(profile, args)
    if not profile.flash_attn and profile.kv_type != "f16":
        raise LauncherError(
            f"A {profile.kv_type} KV cache needs flash attention; set "
            'server.flash_attn = true or workload.kv_type = "f16".'
        )
    fa = "on" if profile.flash_attn else "off"
    specs = [
        sup.WorkerSpec(
            with_extra_args(_with_flag(tuple(p.argv), "-fa", fa), profile.extra_args),
            dict(p.env),
            p.port,
            p.cards,
        )
        for p in layout.processes
    ]
    if args.daemon:
        say = _say
    else:
        print(f"Fleet {profile.name}: {layout.kind}, {len(specs)} worker(s). {reason}")
        if profile.extra_args:
            print(f"Extra llama-server flags from the profile: {' '.join(profile.extra_args)}")
        say = _say
    if args.detach:
        return _detach(args, profile.name)
    router_config, remote = _router_setup(profile)
    supervisor = sup.Supervisor(
        profile.name,
        specs,
        echo=not args.daemon,
        say=say,
        model=profile.model,
        layout=layout.kind,
        profile=None if args.target.endswith(".gguf") else args.target,
        health_timeout=profile.health_timeout_s,
        router=router_config,
        remote_members=remote,
    )
    return sup.run_supervisor(supervisor)


def _env_key(var: str | None, what: str) -> str | None:
    import os

    if not var:
        return None
    value = os.environ.get(var)
    if not value:
        raise LauncherError(f"${var} is empty; export the {what} in it, or drop {var}.")
    return value


def _router_setup(profile: LaunchProfile) -> tuple[RouterConfig | None, list[Member]]:
    """The router settings of ``profile`` (None when it turns the router off)."""
    from launcher.router.balancer import Member
    from launcher.router.server import RouterConfig, require_key_for

    if not profile.router_enabled:
        return None, []
    key = _env_key(profile.api_key_env, "router's API key")
    require_key_for(profile.router_host, key, profile.api_key_env)
    remote = [
        Member(
            f"remote{i}:{m.url}",
            m.url.rstrip("/"),
            m.weight,
            _env_key(m.api_key_env, f"API key of {m.url}"),
        )
        for i, m in enumerate(profile.members)
    ]
    return RouterConfig(
        profile.router_host, profile.router_port, key, affinity=profile.affinity
    ), remote


def cmd_route(args: argparse.Namespace) -> int:
    """Run the router alone over servers that are already running."""
    import asyncio
    import signal

    from launcher.router.balancer import Member
    from launcher.router.server import Router, RouterConfig, require_key_for

    key = _env_key(args.api_key_env, "router's API key")
    require_key_for(args.host, key, args.api_key_env)
    upstream_key = _env_key(args.upstream_key_env, "upstream servers' API key")
    members = []
    for i, spec in enumerate(args.urls):
        url, _, weight = spec.partition("@")
        if not url.startswith(("http://", "https://")):
            raise LauncherError(f"'{spec}' is not a server URL; give http://HOST:PORT[@WEIGHT].")
        try:
            w = float(weight) if weight else 1.0
        except ValueError as err:
            raise LauncherError(f"'{weight}' in '{spec}' is not a weight; use a number.") from err
        members.append(Member(f"m{i}", url.rstrip("/"), w, upstream_key))
    config = RouterConfig(
        args.host, args.port, key, args.max_queue, args.queue_timeout, args.affinity
    )

    async def serve() -> None:
        router = Router(members, config)
        await router.start()
        healthy = sum(1 for m in router.members if m.healthy)
        _say(
            f"Router on {router.url} over {len(members)} server(s), {healthy} healthy now; "
            "Ctrl-C stops it."
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await router.stop()

    asyncio.run(serve())
    return 0


def _with_flag(argv: tuple[str, ...], flag: str, value: str) -> tuple[str, ...]:
    out = list(argv)
    if flag in out:
        out[out.index(flag) + 1] = value
    else:
        out += [flag, value]
    return tuple(out)


def _detach(args: argparse.Namespace, fleet: str) -> int:
    """Start the supervisor as a background daemon and wait until its fleet is up or failed."""
    from launcher.run import daemon

    argv = [a for a in args.raw_argv if a != "--detach"]
    return daemon.start_detached(fleet, [*argv, "--daemon"], _say)


def cmd_down(args: argparse.Namespace) -> int:
    from launcher.run import daemon

    stopped = daemon.stop_fleet(args.fleet, _say)
    print(f"Fleet {stopped} stopped.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from launcher.run import fleet_state

    fleets = fleet_state.list_fleets()
    if args.json:
        print(json.dumps({"fleets": [f.to_json() for f in fleets]}, indent=2))
        return 0
    if not fleets:
        print("No fleet is running. Start one with 'llama-launcher up MODEL.gguf|PROFILE'.")
        return 0
    for f in fleets:
        router = f.router["url"] if f.router else "no router"
        print(f"Fleet {f.name} ({f.layout}, supervisor pid {f.supervisor_pid}, {router})")
        print(
            f"  {'worker':<22}{'state':<12}{'pid':>8}  {'url':<24}{'cards':<10}"
            f"{'restarts':>9}{'tok/s':>9}{'slots':>8}"
        )
        for w in f.workers:
            cards = ",".join(map(str, w.cards)) or "cpu"
            print(
                f"  {w.id:<22}{w.state:<12}{w.pid or '-':>8}  {w.url:<24}{cards:<10}"
                f"{w.restarts:>9}{w.tok_s:>9.1f}{f'{w.slots_busy}/{w.slots_total}':>8}"
            )
            if w.message:
                print(f"      {w.message}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from launcher.run import fleet_state

    fleet, _, worker = args.worker.partition("/")
    if not worker:
        raise LauncherError("Name a worker as FLEET/wN, e.g. 'llama-launcher logs mymodel/w0'.")
    path = fleet_state.logs_dir(fleet) / f"{worker}.log"
    if not path.is_file():
        known = sorted(p.stem for p in fleet_state.logs_dir(fleet).glob("*.log"))
        raise LauncherError(
            f"No log for {args.worker}; workers with logs: "
            f"{', '.join(f'{fleet}/{k}' for k in known) or 'none'}."
        )
    with path.open("rb") as f:
        sys.stdout.write(f.read().decode(errors="replace"))
        sys.stdout.flush()
        while args.follow:
            line = f.readline()
            if line:
                sys.stdout.write(line.decode(errors="replace"))
                sys.stdout.flush()
            else:
                time.sleep(0.25)
    return 0


# --- launch profiles -------------------------------------------------------------------------


def cmd_profile_save(args: argparse.Namespace) -> int:
    from launcher.profiles import launch

    profile = launch.LaunchProfile(
        name=args.name, model=str(Path(args.model).expanduser().resolve())
    )
    profile.users, profile.ctx = args.users, args.ctx
    profile.kv_type, profile.goal = args.kv_type, args.goal
    profile.layout = args.layout
    profile.hardware = args.hardware
    profile.router_port = args.port or 8080
    if args.cards:
        profile.cards = [c.strip() for c in args.cards.split(",") if c.strip()]
    if not args.hardware:
        layout, _ = _plan_fleet(
            profile, argparse.Namespace(llama_server=args.llama_server, replan=True)
        )
        inventory = _inventory(argparse.Namespace(hardware=None))
        by_index = {c.index: c for c in inventory.local.cards}
        used = [by_index[i] for p in layout.processes for i in p.cards if i in by_index]
        profile.layout = layout.kind
        profile.cards = [c.uuid or str(c.index) for c in used]
        profile.pci_bus_ids = [c.pci_bus_id or "" for c in used]
        profile.tensor_split = list(layout.tensor_split)
    path = launch.save_launch_profile(profile, force=args.force)
    print(f"Saved launch profile '{args.name}' ({profile.layout}): {path}")
    return 0


def cmd_profile_list(args: argparse.Namespace) -> int:
    from launcher.profiles import hardware, launch

    for kind, items in (("launch", launch.list_profiles()), ("hardware", hardware.list_profiles())):
        for name, path, origin in items:
            print(f"{kind:<9}{name:<28} {origin:<8} {path}")
    return 0


def cmd_profile_show(args: argparse.Namespace) -> int:
    from launcher.profiles import launch

    path = launch.resolve(args.name)
    launch.load_launch_profile(path)  # validates
    print(f"# {path}")
    print(path.read_text(), end="")
    return 0


# --- load and systemd ---------------------------------------------------------------------------


def cmd_load(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from launcher.bench.load import LoadSpec, run_load

    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not key:
        raise LauncherError(f"${args.api_key_env} is empty; export the API key in it.")
    spec = LoadSpec(
        tuple(args.url),
        args.concurrency,
        args.requests,
        args.tokens,
        args.prompt_tokens,
        args.api,
        key,
    )
    if not args.json:
        _say(
            f"{spec.requests} requests, {spec.concurrency} at a time, {spec.max_tokens} tokens "
            f"each, against {', '.join(spec.urls)} ({spec.api})"
        )
    result = asyncio.run(run_load(spec))
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(
            f"requests {result.requests} ({result.errors} errors), tokens {result.tokens} in "
            f"{result.wall_s:.2f} s: {result.aggregate_tok_s:.1f} tok/s aggregate, "
            f"{result.per_user_tok_s_p50:.1f} tok/s per user (p50)"
        )
        print(
            f"time to first token p50 {result.ttft_ms_p50} ms; latency p50 "
            f"{result.latency_ms_p50} ms, p95 {result.latency_ms_p95} ms, p99 "
            f"{result.latency_ms_p99} ms"
        )
        for err in result.error_samples:
            print(f"  error: {err}")
    if result.errors and result.errors == result.requests:
        raise LauncherError(
            f"All {result.requests} requests failed ({result.error_samples[0]}); "
            "check that the server is running at that URL.",
            exit_code=1,
        )
    return 0


def cmd_systemd(args: argparse.Namespace) -> int:
    import os
    import shlex

    from launcher.profiles import launch

    path = launch.resolve(args.profile).resolve()
    profile = launch.load_launch_profile(path)
    home = os.environ.get("LLAMA_LAUNCHER_HOME")
    base = (
        Path(home) / "config"
        if home
        else Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    )
    unit = base / "systemd" / "user" / f"llama-launcher-{profile.name}.service"
    if unit.exists() and not args.force:
        raise LauncherError(f"{unit} already exists; pass --force to replace it.")
    command = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "launcher", "up", str(path)))
    env_line = f"Environment=LLAMA_LAUNCHER_HOME={home}\n" if home else ""
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(
        "[Unit]\n"
        f"Description=llama-launcher fleet {profile.name}\n"
        "After=network-online.target\n\n"
        "[Service]\n"
        f"ExecStart={command}\n"
        f"{env_line}"
        "Restart=on-failure\nRestartSec=5\nKillSignal=SIGTERM\nTimeoutStopSec=30\n\n"
        "[Install]\nWantedBy=default.target\n"
    )
    print(f"Wrote {unit}")
    print(
        f"Enable it with: systemctl --user daemon-reload && systemctl --user enable --now "
        f"{unit.name}"
    )
    print("To keep it running after you log out: loginctl enable-linger $USER")
    return 0


# --- bench ----------------------------------------------------------------------------------


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise LauncherError(f"{what} must be numbers separated by commas, e.g. 1,8,32.") from err
    if not values or min(values) < 1:
        raise LauncherError(f"{what} must be numbers of 1 or more, e.g. 1,8,32.")
    return values


def cmd_bench(args: argparse.Namespace) -> int:
    import asyncio

    from launcher.bench import results
    from launcher.bench.compare import Bench, BenchRequest, plot, spread, table
    from launcher.gpu.backend import open_backend
    from launcher.model.spec import read_model_spec
    from launcher.profiles import launch

    if args.target.endswith(".gguf"):
        model = Path(args.target).expanduser()
        default_layout = None
        extra_args: tuple[str, ...] = ()
    else:
        profile = launch.load_launch_profile(launch.resolve(args.target))
        model = Path(profile.model).expanduser()
        default_layout = profile.layout
        extra_args = tuple(profile.extra_args)
    spec = read_model_spec(model)
    inventory = _inventory(argparse.Namespace(hardware=None))
    server, _ = _server_target(argparse.Namespace(llama_server=args.llama_server), inventory)
    if server.path == "llama-server":
        from launcher.run.server_binary import find_server

        find_server(args.llama_server)
    usable = [c for c in inventory.local.cards if c.usable]
    if args.layouts:
        layouts = tuple(k.strip() for k in args.layouts.split(",") if k.strip())
    elif default_layout and default_layout != "auto":
        layouts = (default_layout,)
    else:
        layouts = (
            ("per-card", "pooled-layer")
            if len(usable) > 1
            else (("per-card",) if usable else ("cpu:1",))
        )
    if args.requests_per_user < 1:
        raise LauncherError("--requests-per-user must be 1 or more.")
    if args.rounds < 1:
        raise LauncherError("--rounds must be 1 or more.")
    request = BenchRequest(
        layouts,
        _int_list(args.users, "--users"),
        args.tokens,
        args.prompt_tokens,
        args.ctx,
        args.requests_per_user,
        extra_args,
        args.staggered,
        args.rounds,
    )
    backend = open_backend() if usable else None
    bench = Bench(spec, inventory, server, request, backend, _say)
    _say(
        f"Bench of {spec.name}: layouts {', '.join(layouts)}; users "
        f"{', '.join(map(str, request.users))}; {request.tokens} tokens after "
        f"{request.prompt_tokens}-token prompts"
        + ("; users start staggered" if request.staggered else "")
        + (f"; {request.rounds} rounds" if request.rounds > 1 else "")
    )
    if request.staggered:
        _say(
            "Staggered load: kept apart from the lockstep results that plan uses; the aggregate "
            "counts the requests sent while every user was busy"
        )
    try:
        asyncio.run(bench.run())
    except KeyboardInterrupt:
        bench.interrupted = True
    finally:
        if backend is not None:
            backend.close()
    runs = bench.runs
    if runs:
        _say(f"Results kept in {results.results_path()}")
    if bench.interrupted:
        _say(f"Interrupted: {len(runs)} finished row(s) kept.")
    checks = results.holdout_check(runs)
    data = {
        "runs": [
            {k: v for k, v in r.row().items() if k not in ("hardware_key", "model_key", "time")}
            for r in runs
        ],
        "calibration_check": [c.row() for c in checks],
    }
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=2) + "\n")
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(table(runs))
        if rounds := spread(runs):
            print("\nRounds (plan uses their mean):")
            for line in rounds:
                print(f"  {line}")
        if len({r.users for r in runs}) > 1:
            print()
            print(plot(results.averaged(runs)))
        if checks:
            print("\nCalibration check (each inner point predicted from the others):")
            for c in checks:
                print(f"  {c.line()}")
    return 130 if bench.interrupted else 0


def cmd_tui(args: argparse.Namespace) -> int:
    from launcher.tui.app import LauncherApp

    model = getattr(args, "model", None)
    LauncherApp(model=Path(model).expanduser() if model else None).run()
    return 0


# --- the main job ---------------------------------------------------


def cmd_main(args: argparse.Namespace) -> int:
    """No command: the TUI on a terminal, else (piped, scripted) the printed overview."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        return cmd_tui(args)
    return cmd_overview(args)


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
    parser.set_defaults(handler=cmd_main)
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

    p = sub.add_parser("up", help="start a fleet from a model or a launch profile")
    p.add_argument("target", metavar="PROFILE|MODEL.gguf")
    p.add_argument("--layout", metavar="KIND", help="override the layout (default: the best)")
    p.add_argument("--cards", metavar="LIST", help="cards to use: indices or UUIDs")
    p.add_argument("--users", type=int, help="concurrent users = slots in total")
    p.add_argument("--ctx", type=int, help="context per user")
    p.add_argument("--port", type=int, help="router port; workers use the ports above it")
    p.add_argument("--name", help="fleet name (default: the profile's or the model's)")
    p.add_argument(
        "--replan",
        action="store_true",
        help="plan for this box's cards when the profile's are gone",
    )
    p.add_argument("--detach", action="store_true", help="run the fleet in the background")
    p.add_argument("--daemon", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_up)

    p = sub.add_parser("route", help="run the router alone over running llama-servers")
    p.add_argument("urls", metavar="URL[@WEIGHT]", nargs="+")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="listen port (default 8080)")
    p.add_argument("--api-key-env", metavar="VAR", help="variable with the key clients must send")
    p.add_argument("--upstream-key-env", metavar="VAR", help="variable with the servers' key")
    p.add_argument("--max-queue", type=int, default=256, help="requests that may wait")
    p.add_argument("--queue-timeout", type=float, default=30.0, help="seconds one may wait")
    p.add_argument(
        "--affinity",
        action="store_true",
        help="send the same conversation to the same server (prompt cache)",
    )
    p.set_defaults(handler=cmd_route)

    p = sub.add_parser("down", help="stop a fleet")
    p.add_argument("fleet", nargs="?", help="fleet name (default: the only one running)")
    p.set_defaults(handler=cmd_down)

    p = sub.add_parser("status", help="fleets, workers, tokens/s")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("logs", help="a worker's log")
    p.add_argument("worker", metavar="FLEET/wN")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.set_defaults(handler=cmd_logs)

    pr = sub.add_parser("profile", help="launch profiles")
    pr_sub = pr.add_subparsers(title="profile commands", metavar="ACTION", required=True)
    p = pr_sub.add_parser("save", help="plan and save a launch profile")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--model", required=True, metavar="MODEL.gguf")
    p.add_argument("--hardware", metavar="NAME|PATH", help="for another box (not planned now)")
    p.add_argument("--users", type=int)
    p.add_argument("--ctx", type=int)
    p.add_argument("--kv-type", choices=("f16", "q8_0", "q4_0"), default="f16")
    p.add_argument("--goal", choices=("throughput", "latency", "context"), default="throughput")
    p.add_argument("--layout", default="auto", metavar="KIND")
    p.add_argument("--cards", metavar="LIST")
    p.add_argument("--port", type=int, help="router port (default 8080)")
    p.add_argument("--force", action="store_true", help="replace an existing profile")
    p.set_defaults(handler=cmd_profile_save)
    p = pr_sub.add_parser("list", help="launch and hardware profiles")
    p.set_defaults(handler=cmd_profile_list)
    p = pr_sub.add_parser("show", help="print a launch profile")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=cmd_profile_show)

    p = sub.add_parser("load", help="closed-loop load against a server or the router")
    p.add_argument("url", metavar="URL", nargs="+", help="one or more servers, used in turn")
    p.add_argument("-c", "--concurrency", type=int, default=4, help="clients at once")
    p.add_argument("-n", "--requests", type=int, default=16, help="requests in total")
    p.add_argument("--tokens", type=int, default=128, help="tokens to generate per request")
    p.add_argument("--prompt-tokens", type=int, default=64, help="prompt length, in tokens")
    p.add_argument("--api", choices=("completion", "openai"), default="completion")
    p.add_argument("--api-key-env", metavar="VAR", help="variable holding a Bearer key")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_load)

    p = sub.add_parser("tui", help="open the terminal UI (what no command opens on a terminal)")
    p.add_argument("--model", metavar="MODEL.gguf", help="open with this model chosen")
    p.set_defaults(handler=cmd_tui)

    p = sub.add_parser("info", help="print this box and the llama-server that would run")
    p.set_defaults(handler=cmd_overview)

    p = sub.add_parser("bench", help="measure layouts on this box beside the prediction")
    p.add_argument("target", metavar="MODEL.gguf|PROFILE")
    p.add_argument(
        "--layouts",
        metavar="KIND,KIND",
        help="layouts to run (default: per-card and pooled-layer, or the profile's)",
    )
    p.add_argument("--users", default="1,8,32", metavar="N,N", help="concurrencies (1,8,32)")
    p.add_argument("--tokens", type=int, default=128, help="tokens per request (128)")
    p.add_argument("--prompt-tokens", type=int, default=512, help="prompt length (512)")
    p.add_argument("--ctx", type=int, help="context per user (default: what the run needs)")
    p.add_argument(
        "--requests-per-user",
        type=int,
        default=4,
        metavar="N",
        help="requests each user sends at each concurrency (4)",
    )
    p.add_argument(
        "--staggered",
        action="store_true",
        help="users start spread over one predicted request cycle instead of together "
        "(each sends 2 more requests, while the others start or finish, that are not timed)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure the whole ladder of concurrencies this many times in one fleet (1); "
        "plan uses the mean, and the output says how far the rounds are apart",
    )
    p.add_argument("--json", action="store_true", help="print the runs as JSON")
    p.add_argument("--out", metavar="FILE", help="also write the JSON to FILE")
    p.set_defaults(handler=cmd_bench)

    p = sub.add_parser("systemd", help="write a systemd user unit that runs 'up PROFILE'")
    p.add_argument("profile", metavar="PROFILE")
    p.add_argument("--force", action="store_true")
    p.set_defaults(handler=cmd_systemd)

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
    raw = list(argv) if argv is not None else sys.argv[1:]
    args = parser.parse_args(raw)
    args.raw_argv = raw  # `up --detach` starts the same command again as a daemon
    handler: Handler = args.handler
    try:
        return handler(args)
    except LauncherError as err:
        print(f"llama-launcher: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("llama-launcher: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head, less, ...: not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
