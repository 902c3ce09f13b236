"""Hardware profiles: TOML descriptions of boxes, to plan for cards you do not own (yet).

```toml
format = 1
name = "six-2060s-risers"
[[hosts]]
name = "rig"
ram_gb = 32
cpu_cores = 8
[[hosts.cards]]
card = "rtx-2060-super"      # from the catalog; fields given beside it override the catalog
count = 6
pcie = "gen3 x1"
[[hosts.nvlink]]             # cards (indices on this host) joined by NVLink
cards = [0, 1]
links = 4
```

Every error names the file, the key and what is allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import tomli_w

from launcher.errors import LauncherError
from launcher.gpu import catalog
from launcher.gpu.card import DriverState, GpuCard, PairLink, PcieLink
from launcher.gpu.host import HostInfo
from launcher.gpu.inventory import Host, Inventory
from launcher.profiles import store

GIB = 1 << 30
KIND = "hardware"

_TOP_KEYS = {"format", "name", "description", "hosts"}
_HOST_KEYS = {
    "name",
    "ram_gb",
    "cpu_cores",
    "numa_nodes",
    "address",
    "cards",
    "nvlink",
    "ssh",
    "launcher",
    "home",
    "link",
    "rtt_ms",
    "reach",
    "cpu_flags",
}
_ADDRESS = re.compile(r"^[A-Za-z0-9._-]+:\d{1,5}$")
_SSH = re.compile(r"^(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9._-]+(?::\d{1,5})?$")
_LINK = re.compile(r"^(?:(\d+(?:\.\d+)?)gbe|(\d+(?:\.\d+)?)\s*gbit)$")
_CARD_KEYS = {
    "card",
    "name",
    "count",
    "vram_gb",
    "bandwidth_gb_s",
    "bus_width_bits",
    "pcie",
    "compute_capability",
    "reserved",
    "used_gb",
    "price_usd",
    "uuid",
    "pci_bus_id",
}
_NVLINK_KEYS = {"cards", "links"}
_PCIE = re.compile(r"^gen([1-6])\s*x(1|2|4|8|16)$", re.I)


@dataclass
class _Ctx:
    path: Path

    def fail(self, key: str, problem: str) -> LauncherError:
        return LauncherError(f"{self.path}: {key} {problem}")

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table.")
        return value

    def only(self, table: dict[str, Any], allowed: set[str], key: str) -> None:
        for k in table:
            if k not in allowed:
                where = f"{key}.{k}" if key else k
                raise self.fail(
                    where, f"is not a known key; allowed here: {', '.join(sorted(allowed))}."
                )

    def number(
        self,
        table: dict[str, Any],
        name: str,
        key: str,
        *,
        required: bool = False,
        minimum: float = 0.0,
        integer: bool = False,
    ) -> float | None:
        if name not in table:
            if required:
                raise self.fail(f"{key}.{name}", "is missing; it is required here.")
            return None
        value = table[name]
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
            what = "a whole number" if integer else "a number"
            raise self.fail(
                f"{key}.{name}", f"= {value!r}: must be {what} of at least {minimum:g}."
            )
        return float(value)

    def text(
        self, table: dict[str, Any], name: str, key: str, *, required: bool = False
    ) -> str | None:
        if name not in table:
            if required:
                raise self.fail(f"{key}.{name}", "is missing; it is required here.")
            return None
        value = table[name]
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{key}.{name}", f"= {value!r}: must be a non-empty string.")
        return value.strip()


# the instruction-set flags the planner uses (which weights llama.cpp repacks on a CPU)
REPACK_FLAGS = ("avx2", "avx512f", "asimddp", "i8mm")


def parse_link(text: str) -> float | None:
    """``"1gbe"``, ``"10gbe"``, ``"2.5gbit"`` as Gbit/s; None when it is none of those."""
    match = _LINK.match(text.strip().lower())
    if not match:
        return None
    return float(match.group(1) or match.group(2))


def parse_pcie(text: str) -> tuple[int, int] | None:
    """``"gen4 x16"`` as (4, 16); None when it does not have that form."""
    match = _PCIE.match(text.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def _reach(ctx: _Ctx, raw: dict[str, Any], key: str) -> str:
    reach = ctx.text(raw, "reach", key) or "tunnel"
    if reach not in ("tunnel", "lan"):
        raise ctx.fail(
            f"{key}.reach",
            f'= {reach!r}: must be "tunnel" (through SSH, the default) or "lan" (its '
            "router on address, with the fleet's API key).",
        )
    address = raw.get("address")
    if reach == "lan" and not (isinstance(address, str) and _ADDRESS.match(address)):
        raise ctx.fail(
            f"{key}.reach",
            '= "lan" needs address = "host:port": where its router listens on the LAN.',
        )
    return reach


def load_hardware_profile(path: Path) -> Inventory:
    """Read and validate a hardware profile; raises ``LauncherError`` naming file and key."""
    data = store.read_toml(path)
    ctx = _Ctx(path)
    ctx.only(data, _TOP_KEYS, "")
    if data.get("format") != 1:
        raise ctx.fail(
            "format", f"= {data.get('format')!r}: must be 1 (add 'format = 1' at the top)."
        )
    name = ctx.text(data, "name", "profile") or path.stem
    hosts_raw = data.get("hosts")
    if not isinstance(hosts_raw, list) or not hosts_raw:
        raise ctx.fail("hosts", "is missing; add at least one [[hosts]] table.")
    hosts = tuple(
        _host(ctx, ctx.table(h, f"hosts[{i}]"), f"hosts[{i}]") for i, h in enumerate(hosts_raw)
    )
    return Inventory(
        hosts, f"profile:{name}", DriverState(False, "planned from a hardware profile")
    )


def _host(ctx: _Ctx, raw: dict[str, Any], key: str) -> Host:
    ctx.only(raw, _HOST_KEYS, key)
    name = ctx.text(raw, "name", key, required=True) or ""
    ram = ctx.number(raw, "ram_gb", key) or 0.0
    cores = ctx.number(raw, "cpu_cores", key, integer=True, minimum=1)
    numa = ctx.number(raw, "numa_nodes", key, integer=True, minimum=1)
    ssh = ctx.text(raw, "ssh", key)
    if ssh is not None and not _SSH.match(ssh):
        raise ctx.fail(f"{key}.ssh", f"= {ssh!r}: must be user@host or user@host:port.")
    link_text = ctx.text(raw, "link", key)
    link_gbit = parse_link(link_text) if link_text is not None else None
    if link_text is not None and link_gbit is None:
        raise ctx.fail(
            f"{key}.link", f"= {link_text!r}: must be 1gbe, 10gbe, 25gbe or a figure like 2.5gbit."
        )
    flags = raw.get("cpu_flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise ctx.fail(
            f"{key}.cpu_flags",
            'must be a list of the CPU\'s instruction-set flags, e.g. ["avx2", "avx512f"].',
        )
    info = HostInfo(
        name,
        int(ram * GIB),
        int(ram * GIB),
        int(cores or 1),
        int(numa) if numa else None,
        ctx.text(raw, "address", key),
        cpu_flags=tuple(sorted(set(flags))),
        ssh=ssh,
        launcher=ctx.text(raw, "launcher", key),
        home=ctx.text(raw, "home", key),
        link_gbit=link_gbit,
        rtt_ms=ctx.number(raw, "rtt_ms", key),
        reach=_reach(ctx, raw, key),
    )
    cards: list[GpuCard] = []
    cards_raw = raw.get("cards", [])
    if not isinstance(cards_raw, list):
        raise ctx.fail(f"{key}.cards", "must be a list of [[hosts.cards]] tables.")
    for i, c in enumerate(cards_raw):
        cards += _cards(ctx, ctx.table(c, f"{key}.cards[{i}]"), f"{key}.cards[{i}]", len(cards))
    links = _nvlink(ctx, raw.get("nvlink", []), key, len(cards))
    if links:
        # a card's links, as NVML counts them: the most it has towards any one peer
        per_card: dict[int, int] = {}
        for link in links:
            for end in (link.a, link.b):
                per_card[end] = max(per_card.get(end, 0), link.nvlink_links)
        cards = [_with_links(c, per_card.get(c.index)) for c in cards]
    return Host(info, tuple(cards), tuple(links))


def _with_links(card: GpuCard, links: int | None) -> GpuCard:
    return replace(card, nvlink_active_links=links) if links else card


def _cards(ctx: _Ctx, raw: dict[str, Any], key: str, first_index: int) -> list[GpuCard]:
    ctx.only(raw, _CARD_KEYS, key)
    base: catalog.CatalogCard | None = None
    card_id = ctx.text(raw, "card", key)
    if card_id is not None:
        if card_id.lower() not in catalog.CATALOG:
            raise ctx.fail(
                f"{key}.card",
                f"= {card_id!r} is not in the catalog; known cards: "
                f"{', '.join(catalog.CATALOG)}. Or give name, vram_gb and "
                "bandwidth_gb_s instead.",
            )
        base = catalog.CATALOG[card_id.lower()]
    need = base is None
    name = ctx.text(raw, "name", key, required=need) or (base.name if base else "")
    vram = ctx.number(raw, "vram_gb", key, required=need, minimum=0.5)
    bandwidth = ctx.number(raw, "bandwidth_gb_s", key, required=need, minimum=1)
    bus = ctx.number(raw, "bus_width_bits", key, integer=True, minimum=1)
    count = int(ctx.number(raw, "count", key, integer=True, minimum=1) or 1)
    used = ctx.number(raw, "used_gb", key) or 0.0
    price = ctx.number(raw, "price_usd", key)
    reserved = raw.get("reserved", False)
    if not isinstance(reserved, bool):
        raise ctx.fail(f"{key}.reserved", f"= {reserved!r}: must be true or false.")
    cc = base.compute_capability if base else None
    if "compute_capability" in raw:
        cc_text = str(raw["compute_capability"])
        match = re.match(r"^(\d+)\.(\d)$", cc_text)
        if not match:
            raise ctx.fail(
                f"{key}.compute_capability",
                f'= {raw["compute_capability"]!r}: must look like "8.6".',
            )
        cc = (int(match.group(1)), int(match.group(2)))
    card_gen, card_width = (base.pcie_gen, base.pcie_width) if base else (None, None)
    gen, width = card_gen, card_width
    if "pcie" in raw:
        parsed = parse_pcie(str(raw["pcie"]))
        if parsed is None:
            raise ctx.fail(
                f"{key}.pcie",
                f'= {raw["pcie"]!r}: must look like "gen4 x16" '
                "(generation 1-6, width 1, 2, 4, 8 or 16).",
            )
        gen, width = parsed
    if count > 1 and ("uuid" in raw or "pci_bus_id" in raw):
        raise ctx.fail(f"{key}.count", "must be 1 when uuid or pci_bus_id is given.")
    total = int((vram if vram is not None else base.vram_gib if base else 0) * GIB)
    bw = bandwidth * 1e9 if bandwidth is not None else (base.bandwidth_bytes_s if base else None)
    used_bytes = int(used * GIB)
    if used_bytes > total:
        raise ctx.fail(f"{key}.used_gb", f"= {used:g} is more than the card's memory.")
    return [
        GpuCard(
            index=first_index + i,
            name=name,
            memory_total_bytes=total,
            uuid=ctx.text(raw, "uuid", key),
            pci_bus_id=ctx.text(raw, "pci_bus_id", key),
            compute_capability=cc,
            memory_free_bytes=total - used_bytes,
            memory_used_bytes=used_bytes,
            pcie=PcieLink(gen, gen, card_gen or gen, width, width, card_width or width),
            memory_bandwidth_bytes_s=bw,
            memory_bus_width_bits=int(bus) if bus else (base.bus_width_bits if base else None),
            reserved=reserved,
            catalog_id=base.id if base else None,
            price_usd=price,
        )
        for i in range(count)
    ]


def _nvlink(ctx: _Ctx, raw: Any, key: str, n_cards: int) -> list[PairLink]:
    if not isinstance(raw, list):
        raise ctx.fail(f"{key}.nvlink", "must be a list of [[hosts.nvlink]] tables.")
    links: list[PairLink] = []
    for g, group in enumerate(raw):
        gkey = f"{key}.nvlink[{g}]"
        ctx.only(ctx.table(group, gkey), _NVLINK_KEYS, gkey)
        members = group.get("cards")
        if (
            not isinstance(members, list)
            or len(members) < 2
            or not all(isinstance(m, int) and 0 <= m < n_cards for m in members)
        ):
            raise ctx.fail(
                f"{gkey}.cards",
                f"= {members!r}: must list two or more card indices "
                f"of this host (0 to {n_cards - 1}).",
            )
        per_pair = int(ctx.number(group, "links", gkey, integer=True, minimum=1) or 1)
        ordered = sorted(set(members))
        for i, a in enumerate(ordered):
            for b in ordered[i + 1 :]:
                links.append(PairLink(a, b, "nvlink", True, per_pair))
    return links


# --- finding and saving ---------------------------------------------------------------------


def resolve(spec: str) -> Path:
    """A hardware profile from a path, or a name: the user's, then the shipped examples."""
    return store.resolve(KIND, spec)


def list_profiles() -> list[tuple[str, Path, str]]:
    """(name, path, origin) of every hardware profile, the user's first."""
    return store.list_profiles(KIND)


def profile_toml(inventory: Inventory, name: str) -> dict[str, Any]:
    """An inventory (this box) as a hardware profile, cards field by field."""
    hosts = []
    for host in inventory.hosts:
        cards = []
        for c in host.cards:
            entry: dict[str, Any] = {
                "name": c.name,
                "vram_gb": round(c.memory_total_bytes / GIB, 2),
            }
            known = catalog.match_name(c.name)
            if known:
                entry = {"card": known.id, **entry}
            if c.memory_bandwidth_bytes_s:
                entry["bandwidth_gb_s"] = round(c.memory_bandwidth_bytes_s / 1e9, 1)
            else:
                entry["bandwidth_gb_s"] = known.bandwidth_gb_s if known else 100.0
            if c.memory_bus_width_bits:
                entry["bus_width_bits"] = c.memory_bus_width_bits
            if c.pcie.gen_max and c.pcie.width_max:
                entry["pcie"] = f"gen{c.pcie.gen_max} x{c.pcie.width_max}"
            if c.compute_capability:
                entry["compute_capability"] = ".".join(map(str, c.compute_capability))
            if c.uuid:
                entry["uuid"] = c.uuid
            if c.pci_bus_id:
                entry["pci_bus_id"] = c.pci_bus_id
            if c.display_active or c.reserved:
                entry["reserved"] = True
            cards.append(entry)
        table: dict[str, Any] = {
            "name": host.name,
            "ram_gb": round(host.info.ram_total_bytes / GIB, 1),
            "cpu_cores": host.info.cpu_cores,
        }
        if host.info.numa_nodes:
            table["numa_nodes"] = host.info.numa_nodes
        if host.info.address:
            table["address"] = host.info.address
        wanted = [f for f in host.info.cpu_flags if f in REPACK_FLAGS]
        if wanted:
            table["cpu_flags"] = wanted  # what CPU workers' memory depends on
        table["cards"] = cards
        groups = _nvlink_groups(host.links)
        if groups:
            table["nvlink"] = groups
        hosts.append(table)
    return {"format": 1, "name": name, "hosts": hosts}


def _nvlink_groups(links: tuple[PairLink, ...]) -> list[dict[str, Any]]:
    """Connected sets of NVLinked cards, each with the fewest links of any pair in it."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    nv = [link for link in links if link.nvlink_links > 0]
    for link in nv:
        parent[find(link.a)] = find(link.b)
    groups: dict[int, list[int]] = {}
    for x in list(parent):
        groups.setdefault(find(x), []).append(x)
    out = []
    for members in groups.values():
        count = min(link.nvlink_links for link in nv if link.a in members)
        out.append({"cards": sorted(members), "links": count})
    return sorted(out, key=lambda g: g["cards"])


def save_profile(inventory: Inventory, name: str, *, force: bool = False) -> Path:
    """Write this box as the user's hardware profile NAME; refuses to overwrite unless ``force``."""
    text = (
        f"# Hardware profile saved by llama-launcher from this box.\n"
        f"{tomli_w.dumps(profile_toml(inventory, name))}"
    )
    return store.write_new(KIND, name, text, force=force)


def set_host_link(path: Path, host: str, link: str, rtt_ms: float | None = None) -> None:
    """Write ``link = "..."`` (and ``rtt_ms``) into host ``host`` of the profile at ``path``,
    leaving every other line (comments too) as it is; the file is replaced whole, never
    half-written."""
    lines = path.read_text().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == "[[hosts]]"]
    entries = {"link": f'link = "{link}"\n'}
    if rtt_ms is not None:
        entries["rtt_ms"] = f"rtt_ms = {rtt_ms:.3f}\n"
    for start in starts:
        end = next(
            (
                i
                for i in range(start + 1, len(lines))
                if lines[i].lstrip().startswith("[") and lines[i].strip() != ""
            ),
            len(lines),
        )
        block = lines[start:end]
        name_at = next((i for i, line in enumerate(block) if re.match(r"\s*name\s*=", line)), None)
        if name_at is None or f'"{host}"' not in block[name_at]:
            continue
        for key, entry in entries.items():
            at = next((i for i, line in enumerate(block) if re.match(rf"\s*{key}\s*=", line)), None)
            if at is not None:
                block[at] = entry
            else:
                block.insert(name_at + 1, entry)
        lines[start:end] = block
        store.replace_text(path, "".join(lines))
        return
    raise LauncherError(f"{path} has no host named {host!r}.")
