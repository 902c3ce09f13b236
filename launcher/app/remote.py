"""Groups that run on a second box: which host, and how to reach it (docs/remote.md).

A group with ``host = NAME`` runs on that host of the fleet's hardware profile. The profile's
host gives ``ssh = "user@host[:port]"`` (the user's own keys and ~/.ssh/config), ``launcher``
(llama-launcher's path there) and ``home`` (its LLAMA_LAUNCHER_HOME). ``up`` on this box plans
the local groups here and hands each remote host its groups to plan on its own cards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from launcher.app import hardware
from launcher.errors import LauncherError
from launcher.gpu.inventory import Inventory
from launcher.profiles import hardware as hardware_profiles
from launcher.profiles import store
from launcher.run import nettest
from launcher.run.nettest import LinkFigures
from launcher.spec.fleet import FleetSpec, RemoteHost


def hosts_for(spec: FleetSpec) -> tuple[tuple[RemoteHost, ...], list[str]]:
    """The remote hosts ``spec``'s groups name (``host``, or ``rpc_host`` for pooled-rpc),
    from its hardware profile, and a line per remote group; one sentence when a host cannot
    be reached as given."""
    named = [(g, g.host or g.rpc_host) for g in spec.groups if g.host or g.rpc_host]
    if not named:
        return (), []
    if not spec.hardware:
        group, host = named[0]
        uses = "runs on" if group.host else "pools the cards of"
        raise LauncherError(
            f"Group {group.name} {uses} host {host}, but the fleet names no hardware profile; "
            'add hardware = "PROFILE" to the launch profile, with that host and its '
            'ssh = "user@host".'
        )
    inventory = hardware.inventory(spec.hardware)
    hosts: dict[str, RemoteHost] = {}
    lines = []
    for group, name in named:
        uses = "runs on" if group.host else "pools the cards of"
        known = [h.info for h in inventory.hosts]
        info = next((h for h in known if h.name == name), None)
        if info is None:
            raise LauncherError(
                f"Group {group.name} {uses} host {name}, which hardware profile "
                f"{spec.hardware} does not have (hosts: {', '.join(h.name for h in known)})."
            )
        if not info.ssh:
            raise LauncherError(
                f"Host {info.name} of hardware profile {spec.hardware} has no ssh = "
                "\"user@host\"; add it so that 'up' can start group "
                f"{group.name}'s part there."
            )
        if info.reach == "lan" and group.host and not spec.router.api_key_env:
            raise LauncherError(
                f'Host {info.name} is reached over the LAN (reach = "lan"), so its router '
                "there must require the fleet's API key: set [router] api_key_env = VAR in "
                "the launch profile, with the key in VAR."
            )
        hosts[info.name] = RemoteHost(
            info.name,
            info.ssh,
            info.launcher or "llama-launcher",
            info.home,
            info.link_gbit,
            info.rtt_ms,
            info.reach,
            info.address,
        )
        if group.host:
            via = f"at {info.address} on the LAN" if info.reach == "lan" else "through SSH"
            lines.append(
                f"Group {group.name}: on host {info.name} ({info.ssh}), planned there when it "
                f"starts, reached {via}."
            )
        elif info.reach == "lan":
            lines.append(
                f"Group {group.name}: host {info.name}'s rpc-server has no authentication, so "
                'it is reached through SSH all the same (reach = "lan" applies to routers).'
            )
    return tuple(hosts.values()), lines


def with_hosts_of(box: Inventory, profile: str | None) -> Inventory:
    """This box, then the second hosts of the fleet's hardware ``profile`` (its first host
    describes the main box): the cards a pooled-rpc group plans with."""
    if not profile:
        return box
    seconds = hardware.inventory(profile).hosts[1:]
    return replace(box, hosts=(box.local, *[h for h in seconds if h.name != box.local.name]))


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
