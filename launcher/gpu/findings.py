"""Findings about a host's cards, in words, each with what it means for placement."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from launcher.gpu import catalog
from launcher.gpu.card import GpuCard, GpuSample
from launcher.gpu.inventory import Host

GIB = 1 << 30
# Memory in use on a card before anything of ours runs; below this it is the driver's context.
OTHER_USE_BYTES = 512 << 20
# GPU busy % from which a card counts as "under load" for the PCIe check.
LOAD_BUSY_PCT = 50.0


@dataclass(frozen=True)
class Finding:
    """``what`` happened on ``cards``; ``meaning`` says what that changes for placement."""

    kind: str  # slot-limit, narrow-link, narrow-under-load, mixed-cards, memory-in-use,
    # display, reserved, mig, lost
    cards: tuple[int, ...]
    what: str
    meaning: str

    @property
    def text(self) -> str:
        return f"{self.what} {self.meaning}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "text": self.text}


def _label(card: GpuCard) -> str:
    return f"GPU {card.index} ({card.name})"


def _card_width(card: GpuCard) -> int | None:
    """The lane count the card itself supports: NVML's, else the catalog's."""
    if card.pcie.width_card_max is not None:
        return card.pcie.width_card_max
    known = catalog.lookup(card.catalog_id) if card.catalog_id else catalog.match_name(card.name)
    return known.pcie_width if known else None


def host_findings(host: Host, samples: Sequence[GpuSample] = ()) -> list[Finding]:
    """What a user should know about ``host``'s cards; ``samples`` add the under-load check."""
    out: list[Finding] = []
    by_index = {s.index: s for s in samples}
    per_card: list[Finding] = []
    for card in host.cards:
        per_card += _card_findings(card, by_index.get(card.index))
    out += _group(per_card, {c.index: c for c in host.cards})
    usable = [c for c in host.cards if c.usable]
    names = {c.name for c in usable}
    if len(names) > 1:
        slowest = min(usable, key=lambda c: c.memory_bandwidth_bytes_s or float("inf"))
        fastest = max(usable, key=lambda c: c.memory_bandwidth_bytes_s or 0.0)
        bw = ""
        if slowest.memory_bandwidth_bytes_s and fastest.memory_bandwidth_bytes_s:
            bw = (
                f" ({slowest.memory_bandwidth_bytes_s / 1e9:.0f} GB/s against "
                f"{fastest.memory_bandwidth_bytes_s / 1e9:.0f} GB/s)"
            )
        out.append(
            Finding(
                "mixed-cards",
                tuple(c.index for c in usable),
                f"Mixed cards: {', '.join(sorted(names))}.",
                f"In a layer split every token passes through each card in turn, so the slowest, "
                f"{_label(slowest)}{bw}, sets the pace of its share of layers; give it fewer "
                "layers, "
                "or run it as its own worker for a smaller model.",
            )
        )
    return out


_LABEL = "\0card\0"


def _group(findings: list[Finding], cards: dict[int, GpuCard]) -> list[Finding]:
    """Merge the same finding on several cards into one: "GPUs 0, 1, 2 (RTX 2060 SUPER) ..."."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for f in findings:
        groups.setdefault((f.kind, f.what, f.meaning), []).extend(f.cards)
    out = []
    for (kind, what, meaning), indices in groups.items():
        names = sorted({cards[i].name for i in indices})
        if len(indices) == 1:
            label = _label(cards[indices[0]])
        else:
            label = f"GPUs {', '.join(map(str, indices))} ({', '.join(names)})"
        out.append(
            Finding(
                kind, tuple(indices), what.replace(_LABEL, label), meaning.replace(_LABEL, label)
            )
        )
    return out


def _card_findings(card: GpuCard, sample: GpuSample | None) -> list[Finding]:
    """Findings about one card, with ``_LABEL`` where its name goes (see ``_group``)."""
    out: list[Finding] = []
    label = _LABEL
    if card.lost:
        return [
            Finding(
                "lost",
                (card.index,),
                f"{label}: fell off the bus (NVML: GPU lost).",
                "No layout will use it until the machine is restarted.",
            )
        ]
    if card.mig_enabled:
        out.append(
            Finding(
                "mig",
                (card.index,),
                f"{label}: in MIG mode.",
                "llama.cpp cannot use a MIG card as a whole; it is left out of "
                "layouts. Disable MIG (nvidia-smi -mig 0) to use it.",
            )
        )
    if card.reserved:
        out.append(
            Finding(
                "reserved",
                (card.index,),
                f"{label}: marked reserved.",
                "No layout will place work on it.",
            )
        )
    link = card.pcie
    if (
        link.gen_max is not None
        and link.gen_card_max is not None
        and (link.gen_max < link.gen_card_max)
    ):
        out.append(
            Finding(
                "slot-limit",
                (card.index,),
                f"{label}: the card can run PCIe gen{link.gen_card_max} but this slot allows "
                f"gen{link.gen_max} "
                "at most (slot, riser or BIOS setting).",
                "Prompt processing and tensor split move data over this link and slow down; "
                "decode of a layer split or a per-card worker barely uses it.",
            )
        )
    width = _card_width(card)
    linked = link.width_max if link.width_max is not None else link.width_current
    if width is not None and linked is not None and linked < width:
        out.append(
            Finding(
                "narrow-link",
                (card.index,),
                f"{label}: linked at x{linked} of x{width} lanes (riser or bifurcation).",
                f"At {link.describe(link.gen_max, linked)} ("
                f"{(link.bytes_per_s(link.gen_max, linked) or 0) / 1e9:.1f} GB/s) loading the "
                "model and prompt processing are slow, and a tensor split over such a link is "
                "not worth it; "
                "a per-card worker or a layer split still decodes at full speed.",
            )
        )
    if (
        sample is not None
        and sample.gpu_busy_pct is not None
        and sample.gpu_busy_pct >= LOAD_BUSY_PCT
        and sample.pcie_gen_current is not None
        and link.gen_max is not None
        and sample.pcie_gen_current < link.gen_max
    ):
        out.append(
            Finding(
                "narrow-under-load",
                (card.index,),
                f"{label}: {sample.gpu_busy_pct:.0f}% busy yet the link stays at "
                f"gen{sample.pcie_gen_current} of gen{link.gen_max}.",
                "At idle a lower generation is power saving; under load it is a limit (power "
                "settings, ASPM or a marginal riser) that slows prompt processing on this card.",
            )
        )
    used = card.memory_used_bytes or 0
    if card.processes or used > OTHER_USE_BYTES:
        names = sorted({p.name or f"pid {p.pid}" for p in card.processes})
        who = f" by {len(names)} process(es): {', '.join(names[:4])}" if names else ""
        free = (
            card.memory_free_bytes
            if card.memory_free_bytes is not None
            else (card.memory_total_bytes - used)
        )
        out.append(
            Finding(
                "memory-in-use",
                (card.index,),
                f"{label}: {used / GIB:.1f} GiB already in use{who}.",
                f"Plans count only the {free / GIB:.1f} GiB that is free; stop those processes to "
                "get the rest.",
            )
        )
    if card.display_active:
        out.append(
            Finding(
                "display",
                (card.index,),
                f"{label}: drives a display.",
                "The desktop takes memory and time on it that can change at any moment: keep "
                "headroom on it, or mark it reserved in a hardware profile.",
            )
        )
    return out
