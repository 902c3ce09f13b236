"""The Hardware screen: this box's cards (or a hardware profile's), links and findings; a card
can be reserved so that no plan uses it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Button, DataTable, Select, Static

from launcher.app import hardware
from launcher.errors import LauncherError
from launcher.gpu.inventory import Inventory

GIB = 1 << 30


def bar(used: float, total: float, width: int = 12) -> str:
    """A text bar: ``█████░░░░░░░ 42%``."""
    share = 0.0 if total <= 0 else min(max(used / total, 0.0), 1.0)
    full = round(share * width)
    return f"{'█' * full}{'░' * (width - full)} {share * 100:3.0f}%"


class InventoryChanged(Message):
    """The hardware to plan for changed: another source, or a card (un)reserved."""

    def __init__(self, inventory: Inventory) -> None:
        super().__init__()
        self.inventory = inventory


class HardwarePane(Widget):
    """The source picker, the cards table, the reserve button and the findings."""

    DEFAULT_CSS = "HardwarePane { height: auto; }"

    def __init__(
        self, inventory: Inventory, this_box: Callable[[], Inventory], id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self.inventory = inventory
        self.this_box = this_box  # this box's inventory, read again when chosen

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(id="banner")
            with Horizontal(classes="row"):
                yield Select(
                    [("This box", "this-box")]
                    + [(f"Profile: {name}", str(path)) for name, path, _ in hardware.profiles()],
                    value="this-box",
                    allow_blank=False,
                    id="hardware-source",
                )
                yield Button("Reserve / unreserve card", id="card-reserve")
            yield Static(id="host", classes="section-title")
            yield DataTable(id="cards", cursor_type="row", zebra_stripes=True)
            yield Static("Findings", classes="section-title")
            yield Static(id="findings")

    def on_mount(self) -> None:
        self.fill()

    def _changed(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.fill()
        self.post_message(InventoryChanged(inventory))

    @on(Select.Changed, "#hardware-source")
    def _source(self, event: Select.Changed) -> None:
        """Plan for cards you do not own: switch to a hardware profile, or back to this box."""
        if event.value == "this-box":
            self._changed(self.this_box())
            return
        try:
            self._changed(hardware.load_profile(Path(str(event.value))))
        except LauncherError as err:
            self.app.notify(str(err), severity="error")

    @on(Button.Pressed, "#card-reserve")
    def toggle_reserved(self) -> None:
        """Mark the highlighted card reserved (no plan uses it), or free it again."""
        table = self.query_one("#cards", DataTable)
        if table.row_count == 0:
            return
        index = int(str(table.get_row_at(table.cursor_row)[0]))
        host = self.inventory.local
        cards = tuple(
            dataclasses.replace(c, reserved=not c.reserved) if c.index == index else c
            for c in host.cards
        )
        hosts = (dataclasses.replace(host, cards=cards), *self.inventory.hosts[1:])
        self._changed(dataclasses.replace(self.inventory, hosts=hosts))
        table.move_cursor(row=index)

    def fill(self) -> None:
        inv = self.inventory
        host = inv.local
        info = host.info
        banner = self.query_one("#banner", Static)
        banner.remove_class("shown")
        if inv.source != "nvml":
            banner.update(f"Planning for hardware {inv.source}: these cards are not in this box.")
            banner.add_class("shown")
        elif not inv.driver.available:
            banner.update(
                f"No NVIDIA GPU: {inv.driver.reason}. Plans can still use a hardware "
                "profile, and cpu:N workers still run."
            )
            banner.add_class("shown")
            self.app.sub_title = "no NVIDIA GPU"
        self.query_one("#host", Static).update(
            f"{host.name}: {info.cpu_cores} CPU threads, {info.ram_total_bytes / GIB:.1f} GiB "
            f"RAM ({info.ram_available_bytes / GIB:.1f} GiB available)"
            + (
                f"; driver {inv.driver.driver_version}, CUDA {inv.driver.cuda_version}"
                if inv.driver.available
                else ""
            )
        )
        table = self.query_one("#cards", DataTable)
        table.clear(columns=True)
        table.add_columns(
            "GPU", "name", "VRAM used/total", "PCIe now / max", "mem bw", "NVLink", "temp", "power"
        )
        for c in host.cards:
            link = c.pcie
            limited = (
                link.gen_max is not None
                and link.gen_card_max is not None
                and link.gen_max < link.gen_card_max
            )
            pcie = (
                f"{link.describe(link.gen_current, link.width_current)} / "
                f"{link.describe(link.gen_max, link.width_max)}" + (" ⚠" if limited else "")
            )
            used = c.memory_used_bytes or 0
            peers = sum(1 for p in host.links if p.nvlink_links and c.index in (p.a, p.b))
            table.add_row(
                str(c.index),
                c.name + (" [reserved]" if c.reserved else ""),
                f"{bar(used, c.memory_total_bytes)} {used / GIB:.1f}/"
                f"{c.memory_total_bytes / GIB:.1f} GiB",
                pcie,
                f"{c.memory_bandwidth_bytes_s / 1e9:.0f} GB/s"
                if c.memory_bandwidth_bytes_s
                else "?",
                f"{peers} peers" if peers else "-",
                f"{c.temperature_c}°C" if c.temperature_c is not None else "-",
                f"{c.power_draw_w:.0f}/{c.power_limit_w:.0f} W"
                if c.power_draw_w is not None and c.power_limit_w is not None
                else "-",
                key=str(c.index),
            )
        findings = hardware.findings(inv)[0] if inv.hosts else []
        self.query_one("#findings", Static).update(
            "\n".join(f"• {f.text}" for f in findings) if findings else "Nothing to report."
        )
