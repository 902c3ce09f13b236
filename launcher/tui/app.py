"""llama-launcher's TUI: the hardware of this box and a live dashboard of running fleets.

Samplers run off the event loop (the GPU sampler's own thread; fleet state read in a thread
worker) and post messages that replace stale snapshots; widgets hold no handles.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Header,
    Label,
    RichLog,
    Select,
    Sparkline,
    Static,
    TabbedContent,
    TabPane,
)

from launcher.errors import LauncherError
from launcher.gpu.card import GpuSample
from launcher.gpu.findings import host_findings
from launcher.gpu.inventory import Inventory, from_backend
from launcher.gpu.sampler import GpuSampler
from launcher.run.fleet_state import FleetState
from launcher.tui.model_pane import ModelChosen, ModelPane
from launcher.tui.plan_pane import LaunchRequested, PlanPane
from launcher.tui.profiles_pane import ProfileLoaded, ProfilesPane
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
        Binding("m", "show('model')", "Model", id="model", tooltip="Pick a GGUF model"),
        Binding("p", "show('plan')", "Plan", id="plan", tooltip="Rank layouts, launch one"),
        Binding(
            "d", "show('dashboard')", "Dashboard", id="dashboard", tooltip="Live cards and workers"
        ),
        Binding(
            "f", "show('profiles')", "Profiles", id="profiles", tooltip="Saved and example profiles"
        ),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    def __init__(self, services: Services | None = None, model: Path | None = None) -> None:
        super().__init__()
        self.services = services or Services()
        self.initial_model = model
        self.backend = self.services.gpu_backend()
        self.inventory: Inventory = from_backend(self.backend, self.services.host())
        self._sampler: GpuSampler | None = None
        self.launched: set[str] = set()  # fleets started from this TUI
        self.fleets: list[FleetState] = []
        self.history: dict[str, list[float]] = {}  # worker id -> recent tok/s

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with TabbedContent(initial="hardware"):
            with TabPane("Hardware", id="hardware"), VerticalScroll():
                yield Static(id="banner")
                with Horizontal(classes="row"):
                    yield Select(
                        self._hardware_choices(),
                        value="this-box",
                        allow_blank=False,
                        id="hardware-source",
                    )
                    yield Button("Reserve / unreserve card", id="card-reserve")
                yield Static(id="host", classes="section-title")
                yield DataTable(id="cards", cursor_type="row", zebra_stripes=True)
                yield Static("Findings", classes="section-title")
                yield Static(id="findings")
            with TabPane("Model", id="model"):
                yield ModelPane(
                    self.services.models_dir, self.services.model_places, id="model-pane"
                )
            with TabPane("Plan", id="plan"):
                yield PlanPane(self.inventory, self.services.server(), id="plan-pane")
            with TabPane("Dashboard", id="dashboard"), VerticalScroll():
                yield Static("Cards", classes="section-title")
                yield DataTable(id="live-cards", cursor_type="row")
                yield Static("Workers", classes="section-title")
                yield DataTable(id="workers", cursor_type="row")
                yield Sparkline([], id="worker-spark")
                yield Static(id="endpoint")
                with Horizontal(classes="row"):
                    yield Button("Restart worker", id="worker-restart")
                    yield Button("Stop fleet", id="fleet-stop", variant="error")
                yield RichLog(id="log-tail", max_lines=200)
            with TabPane("Profiles", id="profiles"):
                yield ProfilesPane(id="profiles-pane")
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
        if self.initial_model is not None:
            self.query_one(ModelPane).open(self.initial_model)

    def _on_samples(self, samples: list[GpuSample], tick: float) -> None:
        self.post_message(GpuSamples(samples))  # from the sampler's thread

    def on_unmount(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()
        self.backend.close()

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        """The palette (^p): the screens and the fleet actions, beside Textual's own."""
        yield from super().get_system_commands(screen)
        for tab, title, help_text in (
            ("hardware", "Hardware", "Cards, PCIe links and findings"),
            ("model", "Model", "Pick a GGUF model"),
            ("plan", "Plan", "Rank the layouts and launch one"),
            ("dashboard", "Dashboard", "Live cards and workers"),
            ("profiles", "Profiles", "Saved and example profiles"),
        ):
            yield SystemCommand(f"Show {title}", help_text, lambda t=tab: self.action_show(t))
        yield SystemCommand(
            "Restart the selected worker", "Its supervisor starts it again", self.restart_worker
        )
        yield SystemCommand(
            "Stop the selected worker's fleet", "SIGTERM, then SIGKILL", self.stop_selected_fleet
        )

    def action_show(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    # -- hardware -----------------------------------------------------------------------

    def _hardware_choices(self) -> list[tuple[str, str]]:
        from launcher.profiles import hardware

        return [("This box", "this-box")] + [
            (f"Profile: {name}", str(path)) for name, path, _ in hardware.list_profiles()
        ]

    @on(Select.Changed, "#hardware-source")
    def _hardware_source(self, event: Select.Changed) -> None:
        """Plan for cards you do not own: switch to a hardware profile, or back to this box."""
        from launcher.profiles import hardware

        if event.value == "this-box":
            self.inventory = from_backend(self.backend, self.services.host())
        else:
            try:
                self.inventory = hardware.load_hardware_profile(Path(str(event.value)))
            except LauncherError as err:
                self.notify(str(err), severity="error")
                return
        self._fill_hardware()
        self.query_one(PlanPane).set_inventory(self.inventory)

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
        self.inventory = dataclasses.replace(self.inventory, hosts=hosts)
        self._fill_hardware()
        table.move_cursor(row=index)
        self.query_one(PlanPane).set_inventory(self.inventory)

    def _fill_hardware(self) -> None:
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
            self.sub_title = "no NVIDIA GPU"
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
        table = next(self.query("#live-cards").results(DataTable), None)
        if table is None:  # the app is closing
            return
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

    def _selected_worker(self) -> str | None:
        table = self.query_one("#workers", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return str(key) if key is not None else None

    def _worker(self, worker_id: str) -> tuple[FleetState, object] | None:
        for f in self.fleets:
            for w in f.workers:
                if w.id == worker_id:
                    return f, w
        return None

    def _tail(self, worker_id: str) -> None:
        found = self._worker(worker_id)
        if found is None:
            return
        path = getattr(found[1], "log", "")
        log = self.query_one("#log-tail", RichLog)
        log.clear()
        try:
            with open(path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 4096))
                lines = f.read().decode(errors="replace").splitlines()[-12:]
        except OSError:
            return
        for line in lines:
            log.write(line)

    @on(Button.Pressed, "#worker-restart")
    def restart_worker(self) -> None:
        """Stop the selected worker; its supervisor restarts it (it counts as a restart)."""
        import os
        import signal

        worker_id = self._selected_worker()
        found = self._worker(worker_id) if worker_id else None
        pid = getattr(found[1], "pid", None) if found else None
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)
            self.notify(f"{worker_id}: restarting")

    @on(Button.Pressed, "#fleet-stop")
    def stop_selected_fleet(self) -> None:
        worker_id = self._selected_worker()
        if worker_id:
            self.stop_fleets([worker_id.split("/")[0]])

    @work(thread=True, group="stop")
    def stop_fleets(self, names: list[str]) -> None:
        for name in names:
            self.services.stop_fleet(name)
            self.launched.discard(name)
        self.call_from_thread(self.notify, f"Stopped {', '.join(names)}")

    # -- model, plan, profiles -----------------------------------------------------------

    def on_model_chosen(self, message: ModelChosen) -> None:
        pane = self.query_one(PlanPane)
        pane.set_model(message.spec)
        pane.run_plan()  # a model chosen shows its plan at once, with the default workload

    def on_profile_loaded(self, message: ProfileLoaded) -> None:
        self.query_one(ModelPane).open(message.model)
        self.action_show("plan")

    def on_launch_requested(self, message: LaunchRequested) -> None:
        self.launch(message)

    @work(thread=True, group="launch")
    def launch(self, message: LaunchRequested) -> None:
        from launcher.run.supervisor import free_port, port_free

        name = message.spec.path.name.removesuffix(".gguf").split("-00001-of-")[0]
        port = 8080 if port_free(8080) else free_port(set(), 18080)
        argv = [
            "up",
            str(message.spec.path),
            "--layout",
            message.layout.kind,
            "--users",
            str(message.workload.users),
            "--ctx",
            str(message.workload.ctx),
            "--port",
            str(port),
            "--name",
            name,
            "--daemon",
        ]
        self.call_from_thread(self.notify, f"Starting fleet {name} ({message.layout.kind})")
        code = self.services.start_fleet(name, argv)
        if code == 0:
            self.launched.add(name)
            self.call_from_thread(self.notify, f"Fleet {name} is up on http://127.0.0.1:{port}")
            self.call_from_thread(self.action_show, "dashboard")
        else:
            self.call_from_thread(
                self.notify, f"Fleet {name} did not start; see its log.", severity="error"
            )

    # -- quitting -------------------------------------------------------------------------

    async def action_quit(self) -> None:
        running = [f.name for f in self.fleets if f.name in self.launched]
        if not running:
            self.exit()
            return

        def answer(choice: str | None) -> None:
            if choice == "stop":
                for name in running:
                    self.services.stop_fleet(name)
                self.exit()
            elif choice == "keep":
                self.exit()

        self.push_screen(QuitScreen(running), answer)

    @work(thread=True, exclusive=True, group="fleets")
    def poll_fleets(self) -> None:
        self.post_message(FleetSnapshot(self.services.fleets()))

    def on_fleet_snapshot(self, message: FleetSnapshot) -> None:
        tables = self.query("#workers").results(DataTable)
        table = next(tables, None)
        if table is None:  # the app is closing; a late snapshot has nowhere to go
            return
        selected = self._selected_worker()
        table.clear()
        self.fleets = message.fleets
        endpoints = []
        for f in message.fleets:
            if f.router:
                endpoints.append(f"{f.name}: {f.router['url']}")
            for w in f.workers:
                history = self.history.setdefault(w.id, [])
                history.append(w.tok_s)
                del history[:-60]
                table.add_row(
                    w.id,
                    w.state,
                    ",".join(map(str, w.cards)) or "cpu",
                    str(w.restarts),
                    f"{w.slots_busy}/{w.slots_total}",
                    f"{w.tok_s:.1f}",
                    w.url,
                    key=w.id,
                )
        ids = {w.id for f in message.fleets for w in f.workers}
        if selected is not None and selected in ids:
            table.move_cursor(row=table.get_row_index(selected))
        current = self._selected_worker()
        spark = self.query_one("#worker-spark", Sparkline)
        spark.data = self.history.get(current, []) if current else []
        if current is not None:
            self._tail(current)
        total = sum(w.tok_s for f in message.fleets for w in f.workers)
        self.query_one("#endpoint", Static).update(
            ("Endpoints: " + ", ".join(endpoints) if endpoints else "No fleet is running.")
            + (f"   Fleet total: {total:.1f} tok/s" if message.fleets else "")
        )


class QuitScreen(ModalScreen[str]):
    """Fleets started here are still running: stop them, leave them, or stay."""

    DEFAULT_CSS = (
        "QuitScreen { align: center middle; } QuitScreen > Vertical { width: 70; "
        "height: auto; border: thick $warning; padding: 1 2; background: $surface; }"
    )

    def __init__(self, fleets: list[str]) -> None:
        super().__init__()
        self.fleets = fleets

    def compose(self) -> ComposeResult:
        from textual.containers import Vertical

        with Vertical():
            yield Label(f"Fleets started here are still running: {', '.join(self.fleets)}.")
            with Horizontal(classes="row"):
                yield Button("Stop them and quit", id="stop", variant="error")
                yield Button("Leave them running", id="keep", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed)
    def _chosen(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)
