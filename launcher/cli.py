"""The ``llama-launcher`` command line.

Each subcommand is a thin layer over the headless packages: parse, call, print. A
``LauncherError`` ends the program with its one-sentence message and no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from launcher import __version__
from launcher.errors import LauncherError

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


# --- the main job (until the TUI exists) ---------------------------------------------------


def cmd_overview(args: argparse.Namespace) -> int:
    """Print this box: host, NVIDIA cards and the llama-server that would run."""
    import psutil

    from launcher.gpu import nvml
    from launcher.run.server_binary import find_server, probe

    mem = psutil.virtual_memory()
    print(
        f"Host: {os.uname().nodename}, {psutil.cpu_count(logical=True)} CPU threads, "
        f"{mem.total / 2**30:.1f} GiB RAM ({mem.available / 2**30:.1f} GiB available)"
    )
    try:
        cards = nvml.card_identities()
        if cards:
            for card in cards:
                cc = ".".join(map(str, card.compute_capability))
                print(f"GPU {card.index}: {card.name} (compute capability {cc})")
        else:
            print("No NVIDIA GPU found by the driver; cpu:N workers still run.")
    except nvml.NvmlUnavailable as err:
        print(f"No NVIDIA GPU: {err}; planning and cpu:N workers still work.")
    try:
        server = find_server(args.llama_server)
        caps = probe(server)
        print(
            f"llama-server: {server.path} (from {server.origin}), version {caps.version}"
            f"{f' commit {caps.commit}' if caps.commit else ''}, "
            f"split modes {', '.join(caps.split_modes) or 'none'}"
        )
    except LauncherError as err:
        print(f"llama-server: {err}")
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
