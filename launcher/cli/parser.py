"""The ``llama-launcher`` argument parser: every command, its options and their help."""

from __future__ import annotations

import argparse

from launcher import __version__
from launcher.cli import commands
from launcher.llamacpp.args import KV_TYPES
from launcher.plan.workload import GOALS


def port(text: str) -> int:
    """``--port P``: a TCP port, 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port: give 1 to 65535")
    return value


def numbers(text: str) -> tuple[int, ...]:
    """``--users 8`` or ``--users 8,32,4`` (one per model)."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a whole number or a comma-separated list of them (e.g. 8,32,4)"
        ) from None
    return values


def _plan_options(p: argparse.ArgumentParser, hardware_help: str) -> None:
    """The options of a plan (``plan`` and ``profile save``): ``PlanRequest``'s fields."""
    p.add_argument("--hardware", metavar="NAME|PATH", help=hardware_help)
    p.add_argument(
        "--users",
        type=numbers,
        metavar="N[,N...]",
        help="concurrent users = slots in total (default: 4 per card; with several models 4 "
        "each); one value for every model or one per model",
    )
    p.add_argument(
        "--ctx",
        type=numbers,
        metavar="N[,N...]",
        help="context per user (default 4096 or the model's); one value or one per model",
    )
    p.add_argument(
        "--kv-type", choices=KV_TYPES, default="f16", help="KV cache type (f16; q8_0 halves it)"
    )
    p.add_argument(
        "--goal",
        choices=GOALS,
        default="throughput",
        help="rank layouts by aggregate tok/s, one user's tok/s, or memory left (throughput)",
    )
    p.add_argument(
        "--layout",
        default="auto",
        metavar="KIND",
        help="auto, per-card, pooled-layer, pooled-tensor, groups:K, partial-offload, "
        "pooled-rpc or cpu:N",
    )
    p.add_argument(
        "--rpc-host",
        metavar="NAME",
        help="for --layout pooled-rpc: the hardware profile's host whose cards are pooled "
        "with this box's over llama.cpp RPC (default: the first other host with cards)",
    )
    cards = p.add_mutually_exclusive_group()
    cards.add_argument("--cards", metavar="LIST", help="cards to use: indices or UUIDs")
    cards.add_argument("--exclude-cards", metavar="LIST", help="cards to leave out")
    p.add_argument(
        "--mmproj", metavar="FILE", help="a vision projector, on each worker's first card"
    )
    _split_options(p)


def _split_options(p: argparse.ArgumentParser) -> None:
    """``--tensor-split`` and ``--flash-attn``, the same for plan and up."""
    p.add_argument(
        "--tensor-split",
        metavar="N,N...",
        help="llama.cpp's -ts for a pooled layout: one number per card, as proportions "
        "(layers per card when they add up to the model's layers + 1)",
    )
    p.add_argument(
        "--flash-attn",
        choices=("on", "off"),
        help="flash attention (on; off needs an f16 KV cache and more compute memory)",
    )


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
    parser.set_defaults(handler=commands.cmd_main)
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
    p.set_defaults(handler=commands.cmd_install_server)

    p = sub.add_parser("make-model", help="write a synthetic GGUF with a real model's shape")
    p.add_argument("out", metavar="OUT.gguf", help="the file to write (NAME.gguf)")
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
    p.set_defaults(handler=commands.cmd_make_model)

    p = sub.add_parser(
        "plan", help="rank the layouts for a model (or a box of several) on this box or a profile"
    )
    p.add_argument(
        "models",
        metavar="MODEL.gguf",
        nargs="*",
        help="one model, or several to place on one box (none: lists the models here)",
    )
    _plan_options(p, "plan for a hardware profile")
    p.add_argument(
        "--port", type=port, help="router port the commands are for (8080); workers above it"
    )
    p.add_argument(
        "--verify", action="store_true", help="compare with llama-fit-params on this box"
    )
    p.add_argument(
        "--measure",
        action="store_true",
        help="first measure this box's decode speed constants (under a minute; kept for "
        "later plans)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=commands.cmd_plan)

    p = sub.add_parser("gpus", help="list this box's GPUs, links and findings (or a profile's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--hardware", metavar="NAME|PATH", help="show a hardware profile instead")
    p.set_defaults(handler=commands.cmd_gpus)

    p = sub.add_parser("up", help="start a fleet from a launch profile or one or more models")
    p.add_argument(
        "targets",
        metavar="PROFILE|MODEL.gguf",
        nargs="*",
        help="a launch profile, or models (several: one group each; none: lists the models)",
    )
    p.add_argument("--layout", metavar="KIND", help="override the layout (default: the best)")
    p.add_argument("--cards", metavar="LIST", help="cards to use: indices or UUIDs")
    p.add_argument(
        "--users",
        type=numbers,
        metavar="N[,N...]",
        help="concurrent users = slots in total; one value or one per group",
    )
    p.add_argument(
        "--ctx", type=numbers, metavar="N[,N...]", help="context per user; one or one per group"
    )
    p.add_argument("--kv-type", choices=KV_TYPES, help="KV cache type (default: the profile's)")
    p.add_argument("--goal", choices=GOALS, help="what the plan ranks layouts by")
    _split_options(p)
    p.add_argument(
        "--port", type=port, help="router port (the profile's, else 8080); workers above it"
    )
    p.add_argument("--name", help="fleet name (default: the profile's or the model's)")
    p.add_argument(
        "--replan",
        action="store_true",
        help="plan the profile again for this box and say what changed",
    )
    p.add_argument("--detach", action="store_true", help="run the fleet in the background")
    p.set_defaults(handler=commands.cmd_up)

    p = sub.add_parser("route", help="run the router alone over running llama-servers")
    p.add_argument(
        "urls",
        metavar="[NAME=]URL[@WEIGHT]",
        nargs="+",
        help="llama-servers, e.g. http://127.0.0.1:8081; NAME= makes model groups routed by name",
    )
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8080, help="listen port (default 8080)")
    p.add_argument("--api-key-env", metavar="VAR", help="variable with the key clients must send")
    p.add_argument("--upstream-key-env", metavar="VAR", help="variable with the servers' key")
    p.add_argument("--max-queue", type=int, default=256, help="requests that may wait")
    p.add_argument("--queue-timeout", type=float, default=30.0, help="seconds one may wait")
    p.add_argument(
        "--affinity",
        action="store_true",
        help="send the same conversation to the same server (prompt cache)",
    )
    p.set_defaults(handler=commands.cmd_route)

    p = sub.add_parser("down", help="stop a fleet")
    p.add_argument("fleet", nargs="?", help="fleet name (default: the only one running)")
    p.set_defaults(handler=commands.cmd_down)

    p = sub.add_parser("group", help="load or unload a model group of a running fleet")
    p.add_argument("action", choices=("load", "unload"), help="load or unload")
    p.add_argument("fleet", metavar="FLEET", help="the fleet, as 'status' names it")
    p.add_argument("group", metavar="GROUP", help="the group (model) name")
    p.set_defaults(handler=commands.cmd_group)

    p = sub.add_parser("status", help="fleets, workers, tokens/s")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=commands.cmd_status)

    p = sub.add_parser("logs", help="a worker's log")
    p.add_argument(
        "worker",
        metavar="FLEET/wN",
        help="a worker, as 'status' names it, or FLEET/supervisor (the supervisor and router)",
    )
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.set_defaults(handler=commands.cmd_logs)

    pr = sub.add_parser("profile", help="launch profiles")
    pr_sub = pr.add_subparsers(title="profile commands", metavar="ACTION", required=True)
    p = pr_sub.add_parser("save", help="plan and save a launch profile")
    p.add_argument("name", metavar="NAME", help="the profile's name (letters, digits, - _ .)")
    p.add_argument(
        "--model",
        required=True,
        action="append",
        metavar="MODEL.gguf",
        help="the model to run; repeat it for a fleet of several (the box plan is saved)",
    )
    _plan_options(p, "for another box (saved without planning)")
    p.add_argument("--port", type=port, help="router port (8080); workers above it")
    p.add_argument("--force", action="store_true", help="replace an existing profile")
    p.set_defaults(handler=commands.cmd_profile_save)
    p = pr_sub.add_parser(
        "export", help="a launch profile, planned here, as llama-swap or llama-server config"
    )
    p.add_argument("name", metavar="NAME", help="a launch profile name or path")
    p.add_argument(
        "--format",
        required=True,
        choices=("llama-swap", "llama-server"),
        help="llama-swap: config.yaml; llama-server: presets INI for --models-preset",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write it here (default: print it)")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.set_defaults(handler=commands.cmd_profile_export)
    p = pr_sub.add_parser("list", help="launch and hardware profiles")
    p.set_defaults(handler=commands.cmd_profile_list)
    p = pr_sub.add_parser("show", help="print a launch profile")
    p.add_argument("name", metavar="NAME", help="a profile name or path")
    p.set_defaults(handler=commands.cmd_profile_show)

    p = sub.add_parser("load", help="closed-loop load against a server or the router")
    p.add_argument("url", metavar="URL", nargs="+", help="one or more servers, used in turn")
    p.add_argument("-c", "--concurrency", type=int, default=4, help="clients at once")
    p.add_argument("-n", "--requests", type=int, default=16, help="requests in total")
    p.add_argument("--tokens", type=int, default=128, help="tokens to generate per request")
    p.add_argument("--prompt-tokens", type=int, default=64, help="prompt length, in tokens")
    p.add_argument(
        "--api",
        choices=("completion", "openai"),
        default="completion",
        help="llama.cpp's /completion or /v1/completions (completion)",
    )
    p.add_argument(
        "--model",
        metavar="NAME",
        help="the model (group) to ask for, by name or alias (default: the fleet's default)",
    )
    p.add_argument("--api-key-env", metavar="VAR", help="variable holding a Bearer key")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=commands.cmd_load)

    p = sub.add_parser("tui", help="open the terminal UI (what no command opens on a terminal)")
    p.add_argument("--model", metavar="MODEL.gguf", help="open with this model chosen")
    p.set_defaults(handler=commands.cmd_tui)

    p = sub.add_parser("net-test", help="round trip and bandwidth to another box through SSH")
    p.add_argument("host", metavar="HOST", help="a host of --hardware, or user@host[:port]")
    p.add_argument(
        "--hardware",
        metavar="NAME|PATH",
        help="the hardware profile with that host; its link is updated with the figure",
    )
    p.set_defaults(handler=commands.cmd_net_test)

    p = sub.add_parser(
        "agent", help="run a fleet's groups for another box (started by its 'up' over SSH)"
    )
    p.set_defaults(handler=commands.cmd_agent)

    p = sub.add_parser("info", help="print this box and the llama-server that would run")
    p.set_defaults(handler=commands.cmd_overview)

    p = sub.add_parser("bench", help="measure layouts on this box beside the prediction")
    p.add_argument(
        "target", metavar="MODEL.gguf|PROFILE", nargs="?", help="(none: lists the models here)"
    )
    p.add_argument(
        "--layouts",
        metavar="KIND,KIND",
        help="layouts to run (default: per-card and pooled-layer, or the profile's)",
    )
    p.add_argument(
        "--group",
        metavar="NAME",
        help="one group of a launch profile of several (default: each group in turn)",
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
    p.add_argument(
        "--keep-busy",
        action="store_true",
        help="let plan calibrate on rows measured while other processes used the CPU",
    )
    p.add_argument("--json", action="store_true", help="print the runs as JSON")
    p.add_argument("--out", metavar="FILE", help="also write the JSON to FILE")
    p.set_defaults(handler=commands.cmd_bench)

    p = sub.add_parser("systemd", help="write a systemd user unit that runs 'up PROFILE'")
    p.add_argument("profile", metavar="PROFILE", help="a launch profile name or path")
    p.add_argument("--force", action="store_true", help="replace an existing unit")
    p.set_defaults(handler=commands.cmd_systemd)

    hw = sub.add_parser("hardware", help="hardware profiles")
    hw_sub = hw.add_subparsers(title="hardware commands", metavar="ACTION", required=True)
    p = hw_sub.add_parser("save", help="save this box as a hardware profile")
    p.add_argument("name", metavar="NAME", help="the profile's name (letters, digits, - _ .)")
    p.add_argument("--force", action="store_true", help="replace an existing profile")
    p.set_defaults(handler=commands.cmd_hardware_save)
    p = hw_sub.add_parser("list", help="list saved and shipped hardware profiles")
    p.set_defaults(handler=commands.cmd_hardware_list)
    return parser
