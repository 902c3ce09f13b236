"""A fleet of named model groups, each self-contained: model, layout, cards, slots, context,
server settings and, once planned, the exact workers to run.

A ``GroupSpec`` whose ``workers`` are empty is a request (a launch profile may leave cards,
split, users and ctx out); ``app.fleet`` plans what is missing once, and the supervisor runs a
spec whose every group has its workers, without planning again. ``to_json``/``from_json``
carry a planned spec to a detached supervisor; launch profiles (TOML) are ``profiles.launch``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from launcher.errors import LauncherError
from launcher.llamacpp.args import ServerArgs
from launcher.model.spec import name_from_model as name_from_model

GROUP_KINDS = ("generation", "embedding", "rerank")
GOALS = ("throughput", "latency", "context")
LAYOUT_PATTERN = re.compile(
    r"^(auto|per-card|pooled-layer|pooled-tensor|partial-offload|pooled-rpc|groups:\d+|cpu:\d+)$"
)
LAYOUT_WORDS = (
    "auto, per-card, pooled-layer, pooled-tensor, groups:K, partial-offload, pooled-rpc or cpu:N"
)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")
DEFAULT_ROUTER_PORT = 8080


def check_name(name: str, what: str = "fleet") -> str:
    """``name`` if it is a valid fleet or group name (DESIGN.md), else one sentence."""
    if not NAME_PATTERN.match(name):
        raise LauncherError(
            f"'{name}' is not a usable {what} name; use up to 64 letters, digits, '-', '_' "
            "and '.', not starting with '.'."
        )
    return name


def unique_name(name: str, taken: set[str] | list[str]) -> str:
    """``name``, or ``name-2``, ``name-3`` ... when it is taken (64 characters at most)."""
    if name not in taken:
        return name
    n = 2
    while f"{name[:60]}-{n}" in taken:
        n += 1
    return f"{name[:60]}-{n}"


@dataclass(frozen=True)
class WorkerSpec:
    """One llama-server of a group as it will run: its settings, environment additions
    (``CUDA_VISIBLE_DEVICES``) and the card indices it uses."""

    args: ServerArgs
    env: dict[str, str]
    cards: tuple[int, ...]

    @property
    def port(self) -> int:
        return self.args.port

    def with_port(self, port: int) -> WorkerSpec:
        return replace(self, args=self.args.replace(port=port))

    def to_json(self) -> dict[str, Any]:
        return {"args": self.args.to_json(), "env": dict(self.env), "cards": list(self.cards)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerSpec:
        return cls(ServerArgs.from_json(data["args"]), dict(data["env"]), tuple(data["cards"]))


@dataclass(frozen=True)
class ServerSettings:
    """A group's llama-server settings beyond what the plan decides."""

    kv_type: str = "f16"
    flash_attn: bool = True
    extra_args: tuple[str, ...] = ()
    health_timeout_s: float = 600.0
    llama_server: str | None = None  # the binary; else $LLAMA_SERVER, PATH, the cache
    mmproj: str | None = None  # a vision projector, on each worker's first card


DEFAULT_SETTINGS = ServerSettings()
DEFAULT_TTL_S = 600.0
ALIAS_MAX = 128


@dataclass(frozen=True)
class GroupRoute:
    """Where a group's requests may go instead of its own workers: to ``overflow_to`` when
    its slots are full and ``overflow_queue`` requests already wait (or the predicted wait
    passes ``overflow_wait_s``), and to ``short_to`` when the prompt is under
    ``short_prompt_tokens`` (estimated at 4 characters a token). Rules apply only to requests
    for the group that declares them."""

    overflow_to: str | None = None
    overflow_queue: int = 4
    overflow_wait_s: float | None = None
    short_to: str | None = None
    short_prompt_tokens: int | None = None

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(t for t in (self.overflow_to, self.short_to) if t)


NO_ROUTE = GroupRoute()


@dataclass(frozen=True)
class GroupSpec:
    """One model of the fleet, served under ``name`` (and ``aliases``)."""

    name: str
    model: str
    layout: str = "auto"
    kind: str = "generation"
    aliases: tuple[str, ...] = ()
    cards: tuple[str, ...] = ()  # UUIDs (or indices), in the planned order
    pci_bus_ids: tuple[str, ...] = ()  # fallback when a UUID is not found, same order
    # -ts as given (proportions or layers per card, plan/split.py) or as planned (layers)
    tensor_split: tuple[float, ...] = ()
    users: int | None = None  # slots in total
    ctx: int | None = None  # per user
    goal: str = "throughput"
    server: ServerSettings = field(default_factory=ServerSettings)
    route: GroupRoute = NO_ROUTE
    on_demand: bool = False  # loaded on its first request, unloaded after ttl_s unused
    ttl_s: float = DEFAULT_TTL_S
    # on-demand groups that must unload before this one loads (they cannot be resident
    # together on the cards they share; the box planner works this out)
    exclusive_with: tuple[str, ...] = ()
    workers: tuple[WorkerSpec, ...] = ()  # empty until planned
    # a host of the fleet's hardware profile, reached over SSH, that runs this group (its
    # workers are planned and run there, docs/remote.md); None: this box
    host: str | None = None
    # layout pooled-rpc: the host of the fleet's hardware profile whose cards this group's
    # worker (here) uses through the rpc-server the fleet starts there over SSH
    rpc_host: str | None = None

    @property
    def planned(self) -> bool:
        return bool(self.workers) or self.host is not None

    @property
    def names(self) -> tuple[str, ...]:
        """The model names this group serves: its name, then its aliases."""
        return (self.name, *self.aliases)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "layout": self.layout,
            "kind": self.kind,
            "aliases": list(self.aliases),
            "cards": list(self.cards),
            "pci_bus_ids": list(self.pci_bus_ids),
            "tensor_split": list(self.tensor_split),
            "users": self.users,
            "ctx": self.ctx,
            "goal": self.goal,
            "server": {
                **vars(self.server),
                "extra_args": list(self.server.extra_args),
            },
            "route": vars(self.route),
            "on_demand": self.on_demand,
            "ttl_s": self.ttl_s,
            "exclusive_with": list(self.exclusive_with),
            "workers": [w.to_json() for w in self.workers],
            "host": self.host,
            "rpc_host": self.rpc_host,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GroupSpec:
        server = dict(data["server"])
        server["extra_args"] = tuple(server["extra_args"])
        return cls(
            name=data["name"],
            model=data["model"],
            layout=data["layout"],
            kind=data["kind"],
            aliases=tuple(data["aliases"]),
            cards=tuple(data["cards"]),
            pci_bus_ids=tuple(data["pci_bus_ids"]),
            tensor_split=tuple(data["tensor_split"]),
            users=data["users"],
            ctx=data["ctx"],
            goal=data["goal"],
            server=ServerSettings(**server),
            route=GroupRoute(**data.get("route", {})),
            on_demand=data.get("on_demand", False),
            ttl_s=data.get("ttl_s", DEFAULT_TTL_S),
            exclusive_with=tuple(data.get("exclusive_with", ())),
            workers=tuple(WorkerSpec.from_json(w) for w in data["workers"]),
            host=data.get("host"),
            rpc_host=data.get("rpc_host"),
        )


@dataclass(frozen=True)
class RemoteMember:
    """A llama-server on another box behind the fleet's router."""

    url: str
    weight: float = 1.0
    api_key_env: str | None = None
    group: str | None = None  # the group it serves; None: the fleet's first


@dataclass(frozen=True)
class RouterSpec:
    """The fleet's one endpoint."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = DEFAULT_ROUTER_PORT
    api_key_env: str | None = None  # the variable holding the key clients must send
    affinity: bool = False
    default_model: str | None = None
    members: tuple[RemoteMember, ...] = ()
    max_body_mb: int = 8  # a request body beyond this gets 413
    max_connections: int = 0  # client connections held open; 0: from the descriptor limit
    idle_timeout_s: float = 15.0  # a connection without a complete request is closed
    drain_s: float = 10.0  # on stop, how long requests in flight may take to finish
    body_timeout_s: float = 30.0  # a request body not all in by then gets 408
    queue_timeout_s: float = 30.0  # how long a request waits for a free slot


@dataclass(frozen=True)
class RemoteHost:
    """A second box that runs some of the fleet's groups, as its hardware profile gives it:
    reached with ``ssh`` (the user's own keys and ~/.ssh/config), llama-launcher at
    ``launcher`` there (a non-interactive SSH has no virtual environment on PATH), its own
    ``home`` (LLAMA_LAUNCHER_HOME) if given, and the link to it in Gbit/s."""

    name: str
    ssh: str
    launcher: str = "llama-launcher"
    home: str | None = None
    link_gbit: float | None = None
    rtt_ms: float | None = None
    # "tunnel" (its router on its 127.0.0.1, reached through SSH) or "lan" (its router on
    # ``address``, "host:port" on the LAN, with the fleet's API key)
    reach: str = "tunnel"
    address: str | None = None


@dataclass(frozen=True)
class FleetSpec:
    """A fleet: its name, its groups and its router. ``hardware`` names the hardware profile
    it was planned for (None: this box); ``source`` is the launch profile it came from."""

    name: str
    groups: tuple[GroupSpec, ...]
    router: RouterSpec = field(default_factory=RouterSpec)
    hardware: str | None = None
    source: str | None = None
    remote_hosts: tuple[RemoteHost, ...] = ()  # the hosts the remote groups run on

    @property
    def local_groups(self) -> tuple[GroupSpec, ...]:
        return tuple(g for g in self.groups if g.host is None)

    @property
    def remote_groups(self) -> tuple[GroupSpec, ...]:
        return tuple(g for g in self.groups if g.host is not None)

    @property
    def rpc_groups(self) -> tuple[GroupSpec, ...]:
        """Groups here whose worker pools another box's cards over RPC."""
        return tuple(g for g in self.groups if g.rpc_host is not None)

    def remote_host(self, name: str) -> RemoteHost | None:
        return next((h for h in self.remote_hosts if h.name == name), None)

    @property
    def planned(self) -> bool:
        return all(g.planned for g in self.groups)

    @property
    def workers(self) -> tuple[WorkerSpec, ...]:
        return tuple(w for g in self.groups for w in g.workers)

    def group(self, name: str) -> GroupSpec:
        return next(g for g in self.groups if g.name == name)

    def problems(self) -> list[str]:
        """What makes the groups' names and rules inconsistent, one sentence each (empty when
        the spec is sound): names and aliases served twice, rules or a default model naming
        no group, exclusions naming groups that are not on-demand."""
        out: list[str] = []
        served: dict[str, str] = {}
        for g in self.groups:
            for name in g.names:
                if not name.isprintable() or not 0 < len(name) <= ALIAS_MAX:
                    out.append(
                        f"Group {g.name}: alias {name!r} must be 1 to {ALIAS_MAX} printable "
                        "characters."
                    )
                if name in served and served[name] != g.name:
                    out.append(f"The name {name!r} is served by both {served[name]} and {g.name}.")
                served.setdefault(name, g.name)
        groups = {g.name: g for g in self.groups}
        for g in self.groups:
            for target in g.route.targets:
                if target not in groups or target == g.name:
                    out.append(
                        f"Group {g.name} routes to {target!r}, which is not another group of "
                        f"this fleet ({', '.join(groups)})."
                    )
            for other in g.exclusive_with:
                if other not in groups or not groups[other].on_demand:
                    out.append(
                        f"Group {g.name} is exclusive with {other!r}, which is not an "
                        "on-demand group of this fleet."
                    )
        default = self.router.default_model
        if default is not None and default not in served:
            out.append(
                f"The default model {default!r} is not a name this fleet serves "
                f"({', '.join(served)})."
            )
        for m in self.router.members:
            if m.group is not None and m.group not in groups:
                out.append(f"Remote member {m.url} names group {m.group!r}, which is not here.")
        for g in self.remote_groups:
            if not self.router.enabled:
                out.append(
                    f"Group {g.name} runs on host {g.host}, which the fleet reaches through its "
                    "router: enable the router ([router] enabled = true)."
                )
            if g.on_demand:
                out.append(f"Group {g.name} runs on host {g.host}: it cannot load on demand.")
        for g in self.groups:
            if (g.layout == "pooled-rpc") != (g.rpc_host is not None):
                out.append(
                    f"Group {g.name}: layout pooled-rpc and rpc_host = NAME go together (the "
                    "host whose cards the group pools with this box's); give both or neither."
                )
            elif g.rpc_host is not None and (g.host is not None or g.on_demand):
                out.append(
                    f"Group {g.name} pools host {g.rpc_host}'s cards over RPC: it runs on this "
                    "box (no host = ...) and is not on demand."
                )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 2,
            "name": self.name,
            "hardware": self.hardware,
            "source": self.source,
            "router": {
                **{k: v for k, v in vars(self.router).items() if k != "members"},
                "members": [vars(m) for m in self.router.members],
            },
            "groups": [g.to_json() for g in self.groups],
            "remote_hosts": [vars(h) for h in self.remote_hosts],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FleetSpec:
        router = dict(data["router"])
        router["members"] = tuple(RemoteMember(**m) for m in router["members"])
        return cls(
            name=data["name"],
            groups=tuple(GroupSpec.from_json(g) for g in data["groups"]),
            router=RouterSpec(**router),
            hardware=data["hardware"],
            source=data["source"],
            remote_hosts=tuple(RemoteHost(**h) for h in data.get("remote_hosts", ())),
        )
