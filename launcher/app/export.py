"""``profile export``: a launch profile's planned fleet in another tool's format, so that a
user of llama-swap or of llama-server's router mode can take our plan.

- ``llama-swap``: a ``config.yaml`` with one model per group (its first worker's exact
  command line with ``--port ${PORT}``, its cards in ``env``, its aliases, the TTL of an
  on-demand group), a group that lets the fleet's models run together, and the resident
  models preloaded at start.
- ``llama-server``: a presets INI for ``llama-server --models-preset FILE`` (router mode):
  one section per group, the flags as keys (``llamacpp.presets``).

What the formats cannot say is written as comments at the top of the file and in
docs/interop.md: one process per model (a group of several workers exports its first worker;
llama-swap gets the others as ``NAME-wN`` models), no overflow or size rules, no slot-aware
balancing, and for presets no per-process environment (cards become ``device``).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path

from launcher.app import fleet
from launcher.errors import LauncherError
from launcher.llamacpp.presets import PRESET_VERSION, preset_options
from launcher.spec.fleet import FleetSpec, GroupSpec, WorkerSpec

FORMATS = ("llama-swap", "llama-server")
PORT_MACRO = "${PORT}"


def planned_profile(name: str) -> FleetSpec:
    """Launch profile ``name`` planned on this box, as ``up`` would run it."""
    spec = fleet.load_profile(name)
    if spec.hardware:
        raise LauncherError(
            f"Profile {spec.name} is for hardware profile {spec.hardware}; export it on the box "
            "that has those cards (the export holds the exact cards and flags)."
        )
    return fleet.plan_spec(spec, llama_server=None, replan=False).spec


def export(name: str, fmt: str) -> str:
    """The text of profile ``name`` in ``fmt`` (one of ``FORMATS``)."""
    if fmt not in FORMATS:
        raise LauncherError(f"Unknown format '{fmt}'; choose {' or '.join(FORMATS)}.")
    spec = planned_profile(name)
    return llama_swap_yaml(spec) if fmt == "llama-swap" else presets_ini(spec)


def write_export(text: str, path: Path, *, force: bool = False) -> Path:
    """Write an export, refusing to replace a file without ``force``."""
    if path.exists() and not force:
        raise LauncherError(f"{path} already exists; pass --force to replace it.")
    try:
        path.write_text(text)
    except OSError as err:
        raise LauncherError(f"Cannot write {path} ({err.strerror}); choose another path.") from err
    return path


def _limits(spec: FleetSpec) -> list[str]:
    """What the other formats cannot carry, as comment lines."""
    out = [
        f"Exported from llama-launcher profile {spec.name}, planned on this box.",
        "Not carried over: overflow and size rules, slot-aware balancing, the router's queue.",
    ]
    for g in spec.groups:
        if len(g.workers) > 1:
            out.append(
                f"{g.name} has {len(g.workers)} workers; these formats run one process per "
                "model name."
            )
        if g.exclusive_with:
            out.append(f"{g.name} cannot be resident with {', '.join(g.exclusive_with)}.")
    return out


def _command(worker: WorkerSpec, port: str) -> str:
    argv = [
        port if a == str(worker.port) and prev == "--port" else a
        for prev, a in zip(("", *worker.args.argv()), worker.args.argv(), strict=False)
    ]
    return " ".join(a if a == PORT_MACRO else shlex.quote(a) for a in argv)


def _q(text: str) -> str:
    """A YAML scalar: a JSON string is one."""
    return json.dumps(text)


def llama_swap_yaml(spec: FleetSpec) -> str:
    """A llama-swap ``config.yaml`` for ``spec``."""
    lines = [f"# {line}" for line in _limits(spec)]
    lines += ["healthCheckTimeout: 600", "models:"]
    names: list[str] = []
    resident: list[str] = []
    for g in spec.groups:
        for i, w in enumerate(g.workers):
            name = g.name if i == 0 else f"{g.name}-w{i}"
            names.append(name)
            if not g.on_demand:
                resident.append(name)
            lines.append(f"  {_q(name)}:")
            lines.append(f"    cmd: {_q(_command(w, PORT_MACRO))}")
            env = [f"{k}={v}" for k, v in w.env.items()]
            if env:
                lines.append("    env:")
                lines += [f"      - {_q(e)}" for e in env]
            if i == 0 and g.aliases:
                lines.append("    aliases:")
                lines += [f"      - {_q(a)}" for a in g.aliases]
            lines.append("    checkEndpoint: /health")
            if g.on_demand:
                lines.append(f"    ttl: {int(g.ttl_s)}")
    lines += [
        "groups:",
        f"  {_q(spec.name)}:",
        "    swap: false",
        "    exclusive: false",
        "    members:",
        *(f"      - {_q(n)}" for n in names),
    ]
    if resident:
        lines += ["hooks:", "  on_startup:", "    preload:"]
        lines += [f"      - {_q(n)}" for n in resident]
    return "\n".join(lines) + "\n"


def presets_ini(spec: FleetSpec) -> str:
    """A presets INI for llama-server's router mode."""
    lines = [f"; {line}" for line in _limits(spec)]
    lines += [
        "; Run: CUDA_DEVICE_ORDER=PCI_BUS_ID llama-server --models-preset THIS_FILE "
        f"--port {spec.router.port}",
        "[*]",
        f"version = {PRESET_VERSION}",
        "",
    ]
    for g in spec.groups:
        lines += _section(g)
    return "\n".join(lines)


def _section(g: GroupSpec) -> list[str]:
    w = g.workers[0]
    options = preset_options(w.args.argv(), w.cards if w.env.get("CUDA_VISIBLE_DEVICES") else ())
    options = [(k, v) for k, v in options if k != "alias"]
    if g.aliases:
        options.append(("alias", ",".join(a for a in g.aliases if "," not in a)))
    if not g.on_demand:
        options.append(("load-on-startup", "true"))
    return [f"[{g.name}]", *(f"{k} = {v}" for k, v in options), ""]


def formats() -> Sequence[str]:
    return FORMATS
