"""Launch profiles: a fleet spec in TOML, so a fleet starts headless.

``format = 2`` holds ``[[groups]]`` (DESIGN.md, "Fleet spec"); ``format = 1`` (one model, the
first version's) still loads, as a fleet of one group. Every key is documented in
docs/launch-profiles.md. Reading validates everything and names the file, the key and what is
allowed; writing (always format 2) refuses to replace a file without ``force``. A profile
holds what the user chose, never the workers' command lines: ``up`` builds those.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import tomli_w

from launcher.errors import LauncherError
from launcher.llamacpp.args import EXTRA_FLAGS, KV_TYPES
from launcher.plan.workload import GOALS
from launcher.profiles import store
from launcher.spec.fleet import (
    DEFAULT_SETTINGS,
    DEFAULT_TTL_S,
    GROUP_KINDS,
    LAYOUT_PATTERN,
    LAYOUT_WORDS,
    NAME_PATTERN,
    NO_ROUTE,
    FleetSpec,
    GroupRoute,
    GroupSpec,
    RemoteMember,
    RouterSpec,
    ServerSettings,
    name_from_model,
    unique_name,
)

KIND = "launch"
LOOPBACK = ("127.0.0.1", "localhost", "::1")

_TOP_1 = {
    "format",
    "name",
    "model",
    "hardware",
    "llama_server",
    "mmproj",
    "workload",
    "layout",
    "server",
    "router",
}
_TOP_2 = {"format", "name", "hardware", "router", "groups"}
_WORKLOAD = {"users", "ctx", "kv_type", "goal"}
_LAYOUT = {"kind", "cards", "pci_bus_ids", "tensor_split"}
_SERVER_1 = {"flash_attn", "extra_args", "health_timeout_s"}
_SERVER_2 = {"kv_type", "flash_attn", "extra_args", "health_timeout_s", "llama_server", "mmproj"}
_GROUP = {
    "name",
    "aliases",
    "kind",
    "model",
    "layout",
    "cards",
    "pci_bus_ids",
    "tensor_split",
    "users",
    "ctx",
    "goal",
    "server",
    "route",
    "on_demand",
    "ttl_s",
    "exclusive_with",
    "host",
    "rpc_host",
}
_ROUTE = {
    "overflow_to",
    "overflow_queue",
    "overflow_wait_s",
    "short_to",
    "short_prompt_tokens",
}
_ROUTER = {
    "enabled",
    "host",
    "port",
    "api_key_env",
    "affinity",
    "members",
    "default_model",
    "max_body_mb",
    "max_connections",
    "idle_timeout_s",
    "drain_s",
    "body_timeout_s",
    "queue_timeout_s",
}
_MEMBER = {"url", "weight", "api_key_env", "group"}


class _Check:
    """Typed reads of one file's tables; every failure names the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> LauncherError:
        return LauncherError(f"{self.path}: {key} {problem}")

    def keys(self, table: Any, allowed: set[str], where: str) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise self.fail(where, "must be a table.")
        for k in table:
            if k not in allowed:
                name = f"{where}.{k}" if where else k
                raise self.fail(
                    name, f"is not a known key; allowed here: {', '.join(sorted(allowed))}."
                )
        return table

    def typed(self, table: dict[str, Any], key: str, kind: type, where: str, what: str) -> Any:
        value = table.get(key)
        if value is None:
            return None
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise self.fail(f"{where}{key}", f"= {value!r}: must be {what}.")
        return value

    def flag(self, table: dict[str, Any], key: str, where: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{where}{key}", f"= {value!r}: must be true or false.")
        return value

    def strings(self, table: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(f"{where}{key}", "must be a list of strings.")
        return tuple(value)

    def count(self, table: dict[str, Any], key: str, where: str, least: int) -> int | None:
        value = self.typed(table, key, int, where, f"a whole number of {least} or more")
        if value is not None and value < least:
            raise self.fail(f"{where}{key}", f"= {value}: must be {least} or more.")
        return value  # type: ignore[no-any-return]

    def choice(
        self, table: dict[str, Any], key: str, where: str, allowed: tuple[str, ...], default: str
    ) -> str:
        value = table.get(key, default)
        if value not in allowed:
            raise self.fail(f"{where}{key}", f"= {value!r}: must be one of {', '.join(allowed)}.")
        return str(value)

    def name(self, value: Any, key: str, what: str) -> str:
        if not isinstance(value, str) or not NAME_PATTERN.match(value):
            raise self.fail(
                key,
                f"= {value!r}: a {what} name is up to 64 letters, digits, '-', '_' and '.', "
                "not starting with '.'.",
            )
        return value

    def model(self, table: dict[str, Any], where: str) -> str:
        model = self.typed(table, "model", str, where, "the path of a .gguf file")
        if not model:
            raise self.fail(f"{where}model", "is missing; give the path of the .gguf model.")
        if not model.startswith(("/", "~")):  # relative to the profile's own folder
            model = str((self.path.parent / model).resolve())
        return str(model)

    def layout(self, table: dict[str, Any], key: str, where: str) -> str:
        kind = table.get(key, "auto")
        if not isinstance(kind, str) or not LAYOUT_PATTERN.match(kind):
            raise self.fail(f"{where}{key}", f"= {kind!r}: must be {LAYOUT_WORDS}.")
        return kind

    def split(self, table: dict[str, Any], where: str) -> tuple[float, ...]:
        split = table.get("tensor_split", [])
        if not isinstance(split, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in split
        ):
            raise self.fail(
                f"{where}tensor_split",
                "must be a list of numbers of 0 or more (-ts: layers or proportions, per card).",
            )
        return tuple(split)

    def server(
        self, table: dict[str, Any], where: str, base: ServerSettings = DEFAULT_SETTINGS
    ) -> ServerSettings:
        extra = table.get("extra_args", list(base.extra_args))
        if not isinstance(extra, list) or not all(isinstance(v, str) for v in extra):
            raise self.fail(
                f"{where}extra_args", 'must be a list of strings, e.g. ["--temp", "0.7"].'
            )
        for arg in extra:
            if not arg.isprintable():
                raise self.fail(
                    f"{where}extra_args", f"has {arg!r}, with a character that is not printable."
                )
            if arg.startswith("-") and not _is_number(arg) and arg.split("=")[0] not in EXTRA_FLAGS:
                raise self.fail(
                    f"{where}extra_args",
                    f"has {arg!r}, which is not allowed; allowed "
                    f"flags: {', '.join(sorted(EXTRA_FLAGS))}.",
                )
        timeout = table.get("health_timeout_s", base.health_timeout_s)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise self.fail(
                f"{where}health_timeout_s", f"= {timeout!r}: must be a number of seconds."
            )
        return replace(
            base,
            kv_type=self.choice(table, "kv_type", where, KV_TYPES, base.kv_type),
            flash_attn=self.flag(table, "flash_attn", where, base.flash_attn),
            extra_args=tuple(extra),
            health_timeout_s=float(timeout),
            llama_server=self.typed(table, "llama_server", str, where, "a path")
            or base.llama_server,
            mmproj=self.typed(table, "mmproj", str, where, "a path") or base.mmproj,
        )

    def seconds(self, table: dict[str, Any], key: str, where: str) -> float | None:
        value = table.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise self.fail(f"{where}{key}", f"= {value!r}: must be a number of seconds above 0.")
        return float(value)

    def route(self, table: dict[str, Any], where: str) -> GroupRoute:
        r = self.keys(table, _ROUTE, where[:-1])
        overflow_queue = self.count(r, "overflow_queue", where, 0)
        return GroupRoute(
            overflow_to=self.typed(r, "overflow_to", str, where, "a group name"),
            overflow_queue=NO_ROUTE.overflow_queue if overflow_queue is None else overflow_queue,
            overflow_wait_s=self.seconds(r, "overflow_wait_s", where),
            short_to=self.typed(r, "short_to", str, where, "a group name"),
            short_prompt_tokens=self.count(r, "short_prompt_tokens", where, 1),
        )

    def router(self, data: dict[str, Any]) -> RouterSpec:
        r = self.keys(data.get("router", {}), _ROUTER, "router")
        host = self.typed(r, "host", str, "router.", "an address") or "127.0.0.1"
        port = r.get("port", 8080)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise self.fail("router.port", f"= {port!r}: must be a port number from 1 to 65535.")
        key_env = self.typed(r, "api_key_env", str, "router.", "an environment variable name")
        if host not in LOOPBACK and not key_env:
            raise self.fail(
                "router.host",
                f"= {host!r} is reachable from the network, so "
                "router.api_key_env must name the variable holding the API key.",
            )
        members = []
        for i, m in enumerate(r.get("members", [])):
            where = f"router.members[{i}]."
            m = self.keys(m, _MEMBER, where[:-1])
            url = self.typed(m, "url", str, where, "an http(s) URL")
            if not url or not url.startswith(("http://", "https://")):
                raise self.fail(f"{where}url", "must be an http:// or https:// URL.")
            weight = m.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
                raise self.fail(f"{where}weight", f"= {weight!r}: must be above 0.")
            members.append(
                RemoteMember(
                    url,
                    float(weight),
                    self.typed(m, "api_key_env", str, where, "a name"),
                    self.typed(m, "group", str, where, "a group name"),
                )
            )
        return RouterSpec(
            enabled=self.flag(r, "enabled", "router.", True),
            host=host,
            port=port,
            api_key_env=key_env,
            affinity=self.flag(r, "affinity", "router.", False),
            default_model=self.typed(r, "default_model", str, "router.", "a group name"),
            members=tuple(members),
            max_body_mb=self.count(r, "max_body_mb", "router.", 1) or 8,
            max_connections=self.count(r, "max_connections", "router.", 16) or 0,
            idle_timeout_s=self.seconds(r, "idle_timeout_s", "router.") or 15.0,
            drain_s=self.seconds(r, "drain_s", "router.") or 10.0,
            body_timeout_s=self.seconds(r, "body_timeout_s", "router.") or 30.0,
            queue_timeout_s=self.seconds(r, "queue_timeout_s", "router.") or 30.0,
        )


def load_launch_profile(path: Path) -> FleetSpec:
    """Read and validate a launch profile (format 1 or 2) as a fleet spec to plan and run."""
    data = store.read_toml(path)
    c = _Check(path)
    version = data.get("format")
    if version == 1:
        return _format_1(c, data)
    if version == 2:
        return _format_2(c, data)
    raise c.fail("format", f"= {version!r}: must be 2 (or 1 for a one-model profile).")


def _format_1(c: _Check, data: dict[str, Any]) -> FleetSpec:
    c.keys(data, _TOP_1, "")
    name = c.name(c.typed(data, "name", str, "", "a string") or c.path.stem, "name", "fleet")
    model = c.model(data, "")
    w = c.keys(data.get("workload", {}), _WORKLOAD, "workload")
    lay = c.keys(data.get("layout", {}), _LAYOUT, "layout")
    srv = c.keys(data.get("server", {}), _SERVER_1, "server")
    server = c.server(srv, "server.")
    server = replace(
        server,
        kv_type=c.choice(w, "kv_type", "workload.", KV_TYPES, "f16"),
        llama_server=c.typed(data, "llama_server", str, "", "a path"),
        mmproj=c.typed(data, "mmproj", str, "", "a path"),
    )
    group = GroupSpec(
        name=name_from_model(model),
        model=model,
        layout=c.layout(lay, "kind", "layout."),
        cards=c.strings(lay, "cards", "layout."),
        pci_bus_ids=c.strings(lay, "pci_bus_ids", "layout."),
        tensor_split=c.split(lay, "layout."),
        users=c.count(w, "users", "workload.", 1),
        ctx=c.count(w, "ctx", "workload.", 256),
        goal=c.choice(w, "goal", "workload.", GOALS, "throughput"),
        server=server,
    )
    return FleetSpec(
        name,
        (group,),
        c.router(data),
        hardware=c.typed(data, "hardware", str, "", "a hardware profile name or path"),
        source=str(c.path),
    )


def _format_2(c: _Check, data: dict[str, Any]) -> FleetSpec:
    c.keys(data, _TOP_2, "")
    raw = data.get("groups")
    if not isinstance(raw, list) or not raw:
        raise c.fail("groups", "is missing; add at least one [[groups]] table with a model.")
    groups: list[GroupSpec] = []
    for i, table in enumerate(raw):
        where = f"groups[{i}]."
        g = c.keys(table, _GROUP, where[:-1])
        model = c.model(g, where)
        taken = {x.name for x in groups}
        if "name" in g:
            name = c.name(g["name"], f"{where}name", "group")
            if name in taken:
                raise c.fail(f"{where}name", f"= {name!r} is already a group of this fleet.")
        else:
            name = unique_name(name_from_model(model), taken)
        aliases = c.strings(g, "aliases", where)
        for alias in aliases:
            if not alias.isprintable() or not 0 < len(alias) <= 128:
                raise c.fail(f"{where}aliases", f"has {alias!r}: up to 128 printable characters.")
        groups.append(
            GroupSpec(
                name=name,
                model=model,
                layout=c.layout(g, "layout", where),
                kind=c.choice(g, "kind", where, GROUP_KINDS, "generation"),
                aliases=aliases,
                cards=c.strings(g, "cards", where),
                pci_bus_ids=c.strings(g, "pci_bus_ids", where),
                tensor_split=c.split(g, where),
                users=c.count(g, "users", where, 1),
                ctx=c.count(g, "ctx", where, 256),
                goal=c.choice(g, "goal", where, GOALS, "throughput"),
                server=c.server(
                    c.keys(g.get("server", {}), _SERVER_2, f"{where}server"), f"{where}server."
                ),
                route=c.route(g.get("route", {}), f"{where}route."),
                on_demand=c.flag(g, "on_demand", where, False),
                ttl_s=c.seconds(g, "ttl_s", where) or DEFAULT_TTL_S,
                exclusive_with=c.strings(g, "exclusive_with", where),
                host=c.typed(g, "host", str, where, "a host name of the fleet's hardware profile"),
                rpc_host=c.typed(
                    g, "rpc_host", str, where, "a host name of the fleet's hardware profile"
                ),
            )
        )
    name = c.typed(data, "name", str, "", "a string") or groups[0].name
    spec = FleetSpec(
        c.name(name, "name", "fleet"),
        tuple(groups),
        c.router(data),
        hardware=c.typed(data, "hardware", str, "", "a hardware profile name or path"),
        source=str(c.path),
    )
    problems = spec.problems()
    if problems:
        raise LauncherError(f"{c.path}: {problems[0]}")
    return spec


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def to_toml(spec: FleetSpec) -> dict[str, Any]:
    """``spec`` as a format-2 launch profile: what was chosen, not the workers' argv."""
    data: dict[str, Any] = {"format": 2, "name": spec.name}
    if spec.hardware:
        data["hardware"] = spec.hardware
    r = spec.router
    router: dict[str, Any] = {"enabled": r.enabled, "host": r.host, "port": r.port}
    if r.api_key_env:
        router["api_key_env"] = r.api_key_env
    if r.affinity:
        router["affinity"] = True
    if r.default_model:
        router["default_model"] = r.default_model
    for key, default in (
        ("max_body_mb", 8),
        ("max_connections", 0),
        ("idle_timeout_s", 15.0),
        ("drain_s", 10.0),
        ("body_timeout_s", 30.0),
        ("queue_timeout_s", 30.0),
    ):
        if getattr(r, key) != default:
            router[key] = getattr(r, key)
    if r.members:
        router["members"] = [{k: v for k, v in vars(m).items() if v is not None} for m in r.members]
    data["router"] = router
    data["groups"] = [_group_toml(g) for g in spec.groups]
    return data


def _group_toml(g: GroupSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"name": g.name, "model": g.model, "layout": g.layout}
    if g.kind != "generation":
        out["kind"] = g.kind
    if g.aliases:
        out["aliases"] = list(g.aliases)
    for key in ("cards", "pci_bus_ids", "tensor_split"):
        if getattr(g, key):
            out[key] = list(getattr(g, key))
    for key in ("users", "ctx"):
        if getattr(g, key) is not None:
            out[key] = getattr(g, key)
    out["goal"] = g.goal
    s = g.server
    server: dict[str, Any] = {
        "kv_type": s.kv_type,
        "flash_attn": s.flash_attn,
        "extra_args": list(s.extra_args),
        "health_timeout_s": s.health_timeout_s,
    }
    if s.llama_server:
        server["llama_server"] = s.llama_server
    if s.mmproj:
        server["mmproj"] = s.mmproj
    out["server"] = server
    route = {k: v for k, v in vars(g.route).items() if v is not None and v != getattr(NO_ROUTE, k)}
    if route:
        out["route"] = route
    if g.on_demand:
        out["on_demand"] = True
        out["ttl_s"] = g.ttl_s
    if g.exclusive_with:
        out["exclusive_with"] = list(g.exclusive_with)
    if g.host:
        out["host"] = g.host
    if g.rpc_host:
        out["rpc_host"] = g.rpc_host
    return out


def resolve(spec: str) -> Path:
    """A launch profile from a path, or a name: the user's, then the shipped examples."""
    return store.resolve(KIND, spec)


def list_profiles() -> list[tuple[str, Path, str]]:
    return store.list_profiles(KIND)


def save_launch_profile(spec: FleetSpec, *, force: bool = False) -> Path:
    return store.write_new(KIND, spec.name, tomli_w.dumps(to_toml(spec)), force=force)
