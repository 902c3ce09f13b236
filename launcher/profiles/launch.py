"""Launch profiles: a model, a layout and its settings in TOML, so a fleet starts headless.

Every key is documented in docs/launch-profiles.md. Reading validates everything and names
the file, the key and what is allowed; writing refuses to replace a file without ``force``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.errors import LauncherError
from launcher.plan.workload import GOALS, KV_TYPES
from launcher.profiles import store

KIND = "launch"
LAYOUT_PATTERN = re.compile(
    r"^(auto|per-card|pooled-layer|pooled-tensor|partial-offload|"
    r"groups:\d+|cpu:\d+)$"
)
# llama-server flags a profile may add (shown to the user before anything starts). Flags
# that the plan sets itself (-m, -c, -np, -ngl, -ts, -sm, --host, --port, ...) are not here.
EXTRA_FLAGS = {
    "--temp",
    "--top-k",
    "--top-p",
    "--min-p",
    "--repeat-penalty",
    "--seed",
    "--chat-template",
    "--jinja",
    "--no-webui",
    "--alias",
    "-a",
    "--threads",
    "-t",
    "--threads-batch",
    "-tb",
    "--batch-size",
    "-b",
    "--ubatch-size",
    "-ub",
    "--mlock",
    "--no-mmap",
    "--cont-batching",
    "--cache-reuse",
    "--reasoning-format",
    "--n-predict",
    "-n",
    "--timeout",
    "--slot-save-path",
    "--lora",
    "--rope-scaling",
    "--rope-freq-base",
    "--yarn-orig-ctx",
    "--defrag-thold",
    "--swa-full",
    "--kv-unified",
    "--log-verbosity",
    "-lv",
    "--log-timestamps",
    "--log-prefix",
    "--cache-ram",
    "--backend-sampling",
}

_TOP = {
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
_WORKLOAD = {"users", "ctx", "kv_type", "goal"}
_LAYOUT = {"kind", "cards", "pci_bus_ids", "tensor_split"}
_SERVER = {"flash_attn", "extra_args", "health_timeout_s"}
_ROUTER = {"enabled", "host", "port", "api_key_env", "affinity", "members"}
_MEMBER = {"url", "weight", "api_key_env"}


@dataclass
class RouterMember:
    url: str
    weight: float = 1.0
    api_key_env: str | None = None


@dataclass
class LaunchProfile:
    """A fleet, as saved: what to run and how."""

    name: str
    model: str
    hardware: str | None = None
    llama_server: str | None = None
    mmproj: str | None = None
    users: int | None = None
    ctx: int | None = None
    kv_type: str = "f16"
    goal: str = "throughput"
    layout: str = "auto"
    cards: list[str] = field(default_factory=list)  # UUIDs, in the order planned
    pci_bus_ids: list[str] = field(default_factory=list)  # fallback when a UUID is not found
    tensor_split: list[int] = field(default_factory=list)
    flash_attn: bool = True
    extra_args: list[str] = field(default_factory=list)
    health_timeout_s: float = 600.0
    router_enabled: bool = True
    router_host: str = "127.0.0.1"
    router_port: int = 8080
    api_key_env: str | None = None
    affinity: bool = False
    members: list[RouterMember] = field(default_factory=list)

    def to_toml(self) -> dict[str, Any]:
        data: dict[str, Any] = {"format": 1, "name": self.name, "model": self.model}
        for key in ("hardware", "llama_server", "mmproj"):
            if getattr(self, key):
                data[key] = getattr(self, key)
        workload: dict[str, Any] = {"kv_type": self.kv_type, "goal": self.goal}
        if self.users is not None:
            workload["users"] = self.users
        if self.ctx is not None:
            workload["ctx"] = self.ctx
        data["workload"] = workload
        layout: dict[str, Any] = {"kind": self.layout}
        if self.cards:
            layout["cards"] = self.cards
        if self.pci_bus_ids:
            layout["pci_bus_ids"] = self.pci_bus_ids
        if self.tensor_split:
            layout["tensor_split"] = self.tensor_split
        data["layout"] = layout
        data["server"] = {
            "flash_attn": self.flash_attn,
            "extra_args": self.extra_args,
            "health_timeout_s": self.health_timeout_s,
        }
        router: dict[str, Any] = {
            "enabled": self.router_enabled,
            "host": self.router_host,
            "port": self.router_port,
        }
        if self.api_key_env:
            router["api_key_env"] = self.api_key_env
        if self.affinity:
            router["affinity"] = True
        if self.members:
            router["members"] = [
                {k: v for k, v in vars(m).items() if v is not None} for m in self.members
            ]
        data["router"] = router
        return data


class _Check:
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

    def typed(
        self, table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, what: str
    ) -> Any:
        value = table.get(key)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            and kind is not bool
            and bool not in (kind if isinstance(kind, tuple) else (kind,))
        ):
            raise self.fail(f"{where}{key}", f"= {value!r}: must be {what}.")
        if not isinstance(value, kind):
            raise self.fail(f"{where}{key}", f"= {value!r}: must be {what}.")
        return value


def load_launch_profile(path: Path) -> LaunchProfile:
    """Read and validate a launch profile."""
    data = store.read_toml(path)
    c = _Check(path)
    c.keys(data, _TOP, "")
    if data.get("format") != 1:
        raise c.fail("format", f"= {data.get('format')!r}: must be 1 (add 'format = 1').")
    model = c.typed(data, "model", str, "", "the path of a .gguf file")
    if not model:
        raise c.fail("model", "is missing; give the path of the .gguf model to run.")
    if not model.startswith(("/", "~")):  # relative to the profile's own folder
        model = str((path.parent / model).resolve())
    p = LaunchProfile(name=c.typed(data, "name", str, "", "a string") or path.stem, model=model)
    p.hardware = c.typed(data, "hardware", str, "", "a hardware profile name or path")
    p.llama_server = c.typed(data, "llama_server", str, "", "a path")
    p.mmproj = c.typed(data, "mmproj", str, "", "a path")
    w = c.keys(data.get("workload", {}), _WORKLOAD, "workload")
    p.users = c.typed(w, "users", int, "workload.", "a whole number of 1 or more")
    p.ctx = c.typed(w, "ctx", int, "workload.", "a whole number of 256 or more")
    if p.users is not None and p.users < 1:
        raise c.fail("workload.users", f"= {p.users}: must be 1 or more.")
    if p.ctx is not None and p.ctx < 256:
        raise c.fail("workload.ctx", f"= {p.ctx}: must be 256 or more.")
    p.kv_type = w.get("kv_type", "f16")
    if p.kv_type not in KV_TYPES:
        raise c.fail("workload.kv_type", f"= {p.kv_type!r}: must be one of {', '.join(KV_TYPES)}.")
    p.goal = w.get("goal", "throughput")
    if p.goal not in GOALS:
        raise c.fail("workload.goal", f"= {p.goal!r}: must be one of {', '.join(GOALS)}.")
    lay = c.keys(data.get("layout", {}), _LAYOUT, "layout")
    p.layout = lay.get("kind", "auto")
    if not isinstance(p.layout, str) or not LAYOUT_PATTERN.match(p.layout):
        raise c.fail(
            "layout.kind",
            f"= {p.layout!r}: must be auto, per-card, pooled-layer, "
            "pooled-tensor, groups:K, partial-offload or cpu:N.",
        )
    for key in ("cards", "pci_bus_ids"):
        value = lay.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise c.fail(f"layout.{key}", "must be a list of strings.")
        setattr(p, key, list(value))
    split = lay.get("tensor_split", [])
    if not isinstance(split, list) or not all(isinstance(v, int) and v >= 0 for v in split):
        raise c.fail("layout.tensor_split", "must be a list of whole numbers (layers per card).")
    p.tensor_split = list(split)
    srv = c.keys(data.get("server", {}), _SERVER, "server")
    fa = srv.get("flash_attn", True)
    if not isinstance(fa, bool):
        raise c.fail("server.flash_attn", f"= {fa!r}: must be true or false.")
    p.flash_attn = fa
    extra = srv.get("extra_args", [])
    if not isinstance(extra, list) or not all(isinstance(v, str) for v in extra):
        raise c.fail("server.extra_args", 'must be a list of strings, e.g. ["--temp", "0.7"].')
    for arg in extra:
        if arg.startswith("-") and not _is_number(arg) and arg.split("=")[0] not in EXTRA_FLAGS:
            raise c.fail(
                "server.extra_args",
                f"has {arg!r}, which is not allowed; allowed "
                f"flags: {', '.join(sorted(EXTRA_FLAGS))}.",
            )
    p.extra_args = list(extra)
    timeout = srv.get("health_timeout_s", 600.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise c.fail("server.health_timeout_s", f"= {timeout!r}: must be a number of seconds.")
    p.health_timeout_s = float(timeout)
    r = c.keys(data.get("router", {}), _ROUTER, "router")
    enabled = r.get("enabled", True)
    if not isinstance(enabled, bool):
        raise c.fail("router.enabled", f"= {enabled!r}: must be true or false.")
    p.router_enabled = enabled
    affinity = r.get("affinity", False)
    if not isinstance(affinity, bool):
        raise c.fail("router.affinity", f"= {affinity!r}: must be true or false.")
    p.affinity = affinity
    p.router_host = c.typed(r, "host", str, "router.", "an address") or "127.0.0.1"
    port = r.get("port", 8080)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise c.fail("router.port", f"= {port!r}: must be a port number from 1 to 65535.")
    p.router_port = port
    p.api_key_env = c.typed(r, "api_key_env", str, "router.", "an environment variable name")
    if p.router_host not in ("127.0.0.1", "localhost", "::1") and not p.api_key_env:
        raise c.fail(
            "router.host",
            f"= {p.router_host!r} is reachable from the network, so "
            "router.api_key_env must name the variable holding the API key.",
        )
    for i, m in enumerate(r.get("members", [])):
        m = c.keys(m, _MEMBER, f"router.members[{i}]")
        url = c.typed(m, "url", str, f"router.members[{i}].", "an http(s) URL")
        if not url or not url.startswith(("http://", "https://")):
            raise c.fail(f"router.members[{i}].url", "must be an http:// or https:// URL.")
        weight = m.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
            raise c.fail(f"router.members[{i}].weight", f"= {weight!r}: must be above 0.")
        p.members.append(RouterMember(url, float(weight), m.get("api_key_env")))
    return p


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def resolve(spec: str) -> Path:
    """A launch profile from a path, or a name: the user's, then the shipped examples."""
    return store.resolve(KIND, spec)


def list_profiles() -> list[tuple[str, Path, str]]:
    return store.list_profiles(KIND)


def save_launch_profile(profile: LaunchProfile, *, force: bool = False) -> Path:
    import tomli_w

    return store.write_new(KIND, profile.name, tomli_w.dumps(profile.to_toml()), force=force)
