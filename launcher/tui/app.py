"""llama-launcher's TUI: the hardware of this box and a live dashboard of running fleets.

Samplers run off the event loop (the GPU sampler's own thread; fleet state read in a thread
worker) and post messages that replace stale snapshots; widgets hold no handles.
"""

from __future__ import annotations

from typing import ClassVar

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

from launcher.gpu.card import GpuSample
from launcher.gpu.findings import host_findings
from launcher.gpu.inventory import Inventory, from_backend
from launcher.gpu.sampler import GpuSampler
from launcher.run.fleet_state import FleetState
from launcher.tui.services import Services

GIB = 1 << 30


def _bar(used: float, total: float, width: int = 12) -> str:
    """A text bar: ``█████░░░░░░░ 42%``."""
    share = 0.0 if total <= 0 else min(max(used / total, 0.0), 1.0)
    full = round(share * width)
    return f"{'█' * full}{'░' * (width - full)} {share * 100:3.0f}%"


class GpuSamples(Message):
    """One tick of GPU samples, from the sampler's thread."""

    def __init__(self, samples: list[GpuSample]) -> None:
        super().__init__()
        self.samples = samples


class FleetSnapshot(Message):
    """The running fleets, as their state files say."""

    def __init__(self, fleets: list[FleetState]) -> None:
        super().__init__()
        self.fleets = fleets


class LauncherApp(App[None]):
    """The app; ``services`` decides where its data comes from."""

    TITLE = "llama-launcher"
    CSS_PATH = "app.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "h", "show('hardware')", "Hardware", id="hardware", tooltip="Cards, links and findings"
        ),
        Binding(
            "d", "show('dashboard')", "Dashboard", id="dashboard", tooltip="Live cards and workers"
        ),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    def __init__(self, services: Services | None = None) -> None:
        super().__init__()
        self.services = services or Services()
        self.backend = self.services.gpu_backend()
        self.inventory: Inventory = from_backend(self.backend, self.services.host())
        self._sampler: GpuSampler | None = None

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield Static(id="banner")
        with TabbedContent(initial="hardware"):
            with TabPane("Hardware", id="hardware"), VerticalScroll():
                yield Static(id="host", classes="section-title")
                yield DataTable(id="cards", cursor_type="row", zebra_stripes=True)
                yield Static("Findings", classes="section-title")
                yield Static(id="findings")
            with TabPane("Dashboard", id="dashboard"), VerticalScroll():
                yield Static("Cards", classes="section-title")
                yield DataTable(id="live-cards", cursor_type="row")
                yield Static("Workers", classes="section-title")
                yield DataTable(id="workers", cursor_type="row")
                yield Static(id="endpoint")
        yield Footer()

    def on_mount(self) -> None:
        self._fill_hardware()
        live = self.query_one("#live-cards", DataTable)
        live.add_columns("GPU", "VRAM", "bandwidth", "PCIe RX/TX MiB/s", "temp", "power")
        workers = self.query_one("#workers", DataTable)
        workers.add_columns("worker", "state", "cards", "restarts", "slots", "tok/s", "url")
        cards = [c.index for c in self.inventory.local.cards]
        if cards:
            self._sampler = GpuSampler(
                self.backend, cards, self._on_samples, interval_s=self.services.sample_interval_s
            )
            self._sampler.start()
        self.set_interval(self.services.sample_interval_s, self.poll_fleets)
        self.poll_fleets()

    def _on_samples(self, samples: list[GpuSample], tick: float) -> None:
        self.post_message(GpuSamples(samples))  # from the sampler's thread

    def on_unmount(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()
        self.backend.close()

    def action_show(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    # -- hardware -----------------------------------------------------------------------

    def _fill_hardware(self) -> None:
        inv = self.inventory
        host = inv.local
        info = host.info
        banner = self.query_one("#banner", Static)
        if not inv.driver.available:
            banner.update(
                f"No NVIDIA GPU: {inv.driver.reason}. Plans can still use a hardware "
                "profile, and cpu:N workers still run."
            )
            banner.add_class("shown")
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
                f"{_bar(used, c.memory_total_bytes)} {used / GIB:.1f}/"
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
        findings = host_findings(host)
        self.query_one("#findings", Static).update(
            "\n".join(f"• {f.text}" for f in findings) if findings else "Nothing to report."
        )

    # -- dashboard ------------------------------------------------------------------------

    def on_gpu_samples(self, message: GpuSamples) -> None:
        table = self.query_one("#live-cards", DataTable)
        totals = {c.index: c.memory_total_bytes for c in self.inventory.local.cards}
        table.clear()
        for s in message.samples:
            used = s.memory_used_bytes or 0
            bw = (
                f"{_bar(s.bandwidth_pct or 0, 100, 8)} {s.bandwidth_label}"
                if s.bandwidth_pct is not None
                else "-"
            )
            rx = f"{(s.pcie_rx_kib_s or 0) / 1024:.0f}"
            tx = f"{(s.pcie_tx_kib_s or 0) / 1024:.0f}"
            table.add_row(
                str(s.index),
                f"{_bar(used, totals.get(s.index, 0))} {used / GIB:.1f} GiB",
                bw,
                f"{rx} / {tx}",
                f"{s.temperature_c}°C" if s.temperature_c is not None else "-",
                f"{s.power_draw_w:.0f} W" if s.power_draw_w is not None else "-",
            )

    @work(thread=True, exclusive=True, group="fleets")
    def poll_fleets(self) -> None:
        self.post_message(FleetSnapshot(self.services.fleets()))

    def on_fleet_snapshot(self, message: FleetSnapshot) -> None:
        table = self.query_one("#workers", DataTable)
        table.clear()
        endpoints = []
        for f in message.fleets:
            if f.router:
                endpoints.append(f"{f.name}: {f.router['url']}")
            for w in f.workers:
                table.add_row(
                    w.id,
                    w.state,
                    ",".join(map(str, w.cards)) or "cpu",
                    str(w.restarts),
                    f"{w.slots_busy}/{w.slots_total}",
                    f"{w.tok_s:.1f}",
                    w.url,
                )
        total = sum(w.tok_s for f in message.fleets for w in f.workers)
        self.query_one("#endpoint", Static).update(
            ("Endpoints: " + ", ".join(endpoints) if endpoints else "No fleet is running.")
            + (f"   Fleet total: {total:.1f} tok/s" if message.fleets else "")
        )
