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
