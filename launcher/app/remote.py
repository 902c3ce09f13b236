"""Groups that run on a second box: which host, and how to reach it (docs/remote.md).

A group with ``host = NAME`` runs on that host of the fleet's hardware profile. The profile's
host gives ``ssh = "user@host[:port]"`` (the user's own keys and ~/.ssh/config), ``launcher``
(llama-launcher's path there) and ``home`` (its LLAMA_LAUNCHER_HOME). ``up`` on this box plans
the local groups here and hands each remote host its groups to plan on its own cards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from launcher.app import hardware
from launcher.errors import LauncherError
from launcher.profiles import hardware as hardware_profiles
from launcher.profiles import store
from launcher.run import nettest
from launcher.run.nettest import LinkFigures
from launcher.spec.fleet import FleetSpec, RemoteHost


def hosts_for(spec: FleetSpec) -> tuple[tuple[RemoteHost, ...], list[str]]:
    """The remote hosts ``spec``'s groups name, from its hardware profile, and a line per
    remote group; one sentence when a host cannot be reached as given."""
    remote = spec.remote_groups
    if not remote:
        return (), []
    if not spec.hardware:
        raise LauncherError(
            f"Group {remote[0].name} runs on host {remote[0].host}, but the fleet names no "
            'hardware profile; add hardware = "PROFILE" to the launch profile, with that '
            'host and its ssh = "user@host".'
        )
    inventory = hardware.inventory(spec.hardware)
    hosts: dict[str, RemoteHost] = {}
    lines = []
    for group in remote:
        assert group.host is not None
        known = [h.info for h in inventory.hosts]
        info = next((h for h in known if h.name == group.host), None)
        if info is None:
            raise LauncherError(
                f"Group {group.name} runs on host {group.host}, which hardware profile "
                f"{spec.hardware} does not have (hosts: {', '.join(h.name for h in known)})."
            )
        if not info.ssh:
            raise LauncherError(
                f"Host {info.name} of hardware profile {spec.hardware} has no ssh = "
                "\"user@host\"; add it so that 'up' can start group "
                f"{group.name} there."
            )
        hosts[info.name] = RemoteHost(
            info.name, info.ssh, info.launcher or "llama-launcher", info.home, info.link_gbit
        )
        lines.append(
            f"Group {group.name}: on host {info.name} ({info.ssh}), planned there when it starts."
        )
    return tuple(hosts.values()), lines


@dataclass(frozen=True)
class NetTest:
    host: RemoteHost
    figures: LinkFigures
    link: str  # as a profile's link key takes it
    written: Path | None  # the profile whose host now has it
    note: str | None  # why nothing was written, when a profile was given


def net_test(target: str, profile: str | None, say: Callable[[str], None]) -> NetTest:
    """``net-test HOST``: round trip and bandwidth through SSH to ``target`` (a host of
    ``profile``, or ``user@host[:port]``), written into that host's ``link`` when the profile
    is the user's own."""
    path: Path | None = None
    if profile:
        path = hardware_profiles.resolve(profile)
        inventory = hardware.load_profile(path)
        info = next((h.info for h in inventory.hosts if h.name == target), None)
        if info is None:
            names = ", ".join(h.name for h in inventory.hosts)
            raise LauncherError(f"Hardware profile {profile} has no host {target!r} ({names}).")
        if not info.ssh:
            raise LauncherError(
                f'Host {target} of hardware profile {profile} has no ssh = "user@host"; '
                "add it, or give net-test user@host."
            )
        host = RemoteHost(info.name, info.ssh, info.launcher or "llama-launcher", info.home)
    else:
        host = RemoteHost(target, target)
    figures = nettest.measure(host, progress=say)
    link = f"{figures.gbit:.2f}gbit"
    note = None
    written = None
    if path is not None:
        if path.is_relative_to(store.examples_dir(hardware_profiles.KIND)):
            note = (
                f"{profile} is a shipped example, left as it is; save your own copy of it to "
                "keep the figure"
            )
        else:
            hardware_profiles.set_host_link(path, host.name, link, figures.round_trip_ms)
            written = path
    return NetTest(host, figures, link, written, note)
