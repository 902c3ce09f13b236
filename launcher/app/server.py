"""Which llama-server runs the workers: install it, find it, and what it can do."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import LauncherError
from launcher.gpu.inventory import Inventory
from launcher.llamacpp.probe import ServerCapabilities, ServerTarget, server_target
from launcher.run import install
from launcher.run.server_binary import ServerBinary, find_server, probe

InstallRequest = install.InstallRequest
Installation = install.Installation


def install_server(
    request: install.InstallRequest, say: Callable[[str], None]
) -> tuple[install.Installation, bool]:
    """Build llama-server (and its tools) into the cache; (installation, whether it built)."""
    return install.install_server(request, say)


def target(option: str | None, inventory: Inventory | None = None) -> tuple[ServerTarget, str]:
    """The llama-server a plan is for and a note saying which: the local build, else the pinned
    llama.cpp's abilities (planning for a hardware profile needs no local build)."""
    try:
        server = find_server(option)
        return server_target(server.path, probe(server.path)), f"{server.path}"
    except LauncherError:
        if inventory is None or inventory.source == "nvml":
            return ServerTarget(), "llama-server (none found; assuming the pinned llama.cpp)"
        return ServerTarget(), "llama-server (pinned llama.cpp abilities)"


def local_target() -> ServerTarget:
    """The llama-server on this box and its split modes, else the pinned version's."""
    return target(None)[0]


def required_target(option: str | None) -> ServerTarget:
    """The llama-server that will run workers here; raises with the install command if none."""
    server = find_server(option)
    return server_target(server.path, probe(server.path))


@dataclass(frozen=True)
class ServerFacts:
    binary: ServerBinary
    capabilities: ServerCapabilities


def facts(option: str | None) -> ServerFacts:
    """The llama-server that would run and what it reports; raises when there is none."""
    server = find_server(option)
    return ServerFacts(server, probe(server.path))


def fit_params_tool(option: str | None) -> Path:
    """``llama-fit-params`` from the same build as the llama-server that would run."""
    server = find_server(option)
    fit = server.sibling("llama-fit-params")
    if fit is None:
        raise LauncherError(
            f"No llama-fit-params beside {server.path}; run 'llama-launcher "
            "install-server --force' to build it."
        )
    return fit
