"""The Dashboard screen: live cards (NVML samples), the model groups of every running fleet
(state, tok/s, queue, overflow; load or unload an on-demand one) and their workers, with a
worker's tokens/s history and log tail; restart a worker or stop its fleet."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Button, DataTable, RichLog, Sparkline, Static

from launcher.app.fleet import FleetState, WorkerState
from launcher.gpu.card import GpuSample
from launcher.tui.screens.hardware import GIB, bar


class RestartWorker(Message):
    """The user asked to restart a worker (its supervisor starts it again)."""

    def __init__(self, worker_id: str) -> None:
        super().__init__()
        self.worker_id = worker_id


class GroupAction(Message):
    """The user asked to load or unload a model group of a running fleet."""

    def __init__(self, fleet: str, group: str, action: str) -> None:
        super().__init__()
        self.fleet = fleet
        self.group = group
        self.action = action


class StopFleet(Message):
    """The user asked to stop a fleet."""

    def __init__(self, fleet: str) -> None:
        super().__init__()
        self.fleet = fleet


class DashboardPane(Widget):
    """Tables drawn from the snapshots the app passes in; it holds no handles itself."""

    DEFAULT_CSS = "DashboardPane { height: auto; }"

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id=id)
        self.fleets: list[FleetState] = []
        self.history: dict[str, list[float]] = {}  # worker id -> recent tok/s
        # this box's last samples: redrawn with the other boxes' cards when the fleets change
        self.samples: list[GpuSample] = []
        self.totals: dict[int, int] = {}

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static("Cards", classes="section-title")
            yield DataTable(id="live-cards", cursor_type="row")
            yield Static("Models", classes="section-title")
            yield DataTable(id="groups", cursor_type="row")
            with Horizontal(classes="row"):
                yield Button("Load / unload model", id="group-toggle")
            yield Static("Workers", classes="section-title")
            yield DataTable(id="workers", cursor_type="row")
            yield Sparkline([], id="worker-spark")
            yield Static(id="endpoint")
            with Horizontal(classes="row"):
                yield Button("Restart worker", id="worker-restart")
                yield Button("Stop fleet", id="fleet-stop", variant="error")
            yield RichLog(id="log-tail", max_lines=200)

    def on_mount(self) -> None:
        live = self.query_one("#live-cards", DataTable)
        live.add_columns("GPU", "VRAM", "bandwidth", "PCIe RX/TX MiB/s", "temp", "power")
        groups = self.query_one("#groups", DataTable)
        groups.add_columns(
            "model", "state", "workers", "tok/s", "queue", "reqs", "overflow", "names"
        )
        workers = self.query_one("#workers", DataTable)
        workers.add_columns(
            "worker", "model", "state", "cards", "restarts", "slots", "tok/s", "port"
        )

    def show_samples(self, samples: list[GpuSample], totals: dict[int, int]) -> None:
        """One tick of GPU samples; ``totals`` is each card's memory in bytes."""
        self.samples, self.totals = samples, totals
        table = next(self.query("#live-cards").results(DataTable), None)
        if table is None:  # not composed yet, or closing: the next tick draws it
            return
        table.clear()
        rows = [(str(s.index), s, totals.get(s.index, 0)) for s in samples]
        # the fleets' other boxes, as their agents last sent their cards over SSH
        for fleet in self.fleets:
            for card in fleet.remote_cards:
                total = card.get("memory_total_bytes")
                label = f"{card.get('host')}:{card.get('index')}"
                rows.append(
                    (label, GpuSample.from_json(card), total if isinstance(total, int) else 0)
                )
        for label, s, total in rows:
            used = s.memory_used_bytes or 0
            bw = (
                f"{bar(s.bandwidth_pct or 0, 100, 8)} {s.bandwidth_label}"
                if s.bandwidth_pct is not None
                else "-"
            )
            rx = f"{(s.pcie_rx_kib_s or 0) / 1024:.0f}"
            tx = f"{(s.pcie_tx_kib_s or 0) / 1024:.0f}"
            table.add_row(
                label,
                f"{bar(used, total)} {used / GIB:.1f} GiB",
                bw,
                f"{rx} / {tx}",
                f"{s.temperature_c}°C" if s.temperature_c is not None else "-",
                f"{s.power_draw_w:.0f} W" if s.power_draw_w is not None else "-",
            )

    def selected_worker(self) -> str | None:
        table = self.query_one("#workers", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return str(key) if key is not None else None

    def _worker(self, worker_id: str) -> WorkerState | None:
        return next((w for f in self.fleets for w in f.workers if w.id == worker_id), None)

    def _tail(self, worker_id: str) -> None:
        worker = self._worker(worker_id)
        if worker is None:
            return
        log = self.query_one("#log-tail", RichLog)
        log.clear()
        try:
            with open(worker.log, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 4096))
                lines = f.read().decode(errors="replace").splitlines()[-12:]
        except OSError:
            return
        for line in lines:
            log.write(line)

    def show_fleets(self, fleets: list[FleetState]) -> None:
        """The running fleets, as their state files say."""
        table = next(self.query("#workers").results(DataTable), None)
        if table is None:  # not composed yet, or closing: the next snapshot draws it
            return
        selected = self.selected_worker()
        table.clear()
        self.fleets = fleets
        if any(f.remote_cards for f in fleets):
            self.show_samples(self.samples, self.totals)
        endpoints = []
        for f in fleets:
            if f.router:
                endpoints.append(f"{f.name}: {f.router['url']}")
            for w in f.workers:
                history = self.history.setdefault(w.id, [])
                history.append(w.tok_s)
                del history[:-60]
                table.add_row(
                    w.id,
                    w.group,
                    w.state,
                    ",".join(map(str, w.cards)) or "cpu",
                    str(w.restarts),
                    f"{w.slots_busy}/{w.slots_total}",
                    f"{w.tok_s:.1f}",
                    str(w.port),  # workers listen on 127.0.0.1; the endpoint is below
                    key=w.id,
                )
        self._show_groups(fleets)
        ids = {w.id for f in fleets for w in f.workers}
        if selected is not None and selected in ids:
            table.move_cursor(row=table.get_row_index(selected))
        current = self.selected_worker()
        spark = self.query_one("#worker-spark", Sparkline)
        history = self.history.get(current, []) if current else []
        # from 0, so that one reading or a steady rate is a bar of its height, not a full block
        spark.data = [0.0, *history] if history else []
        if current is not None:
            self._tail(current)
        total = sum(w.tok_s for f in fleets for w in f.workers)
        self.query_one("#endpoint", Static).update(
            ("Endpoints: " + ", ".join(endpoints) if endpoints else "No fleet is running.")
            + (f"   Fleet total: {total:.1f} tok/s" if fleets else "")
        )

    def _show_groups(self, fleets: list[FleetState]) -> None:
        """One row per model group: what it serves and how its requests went."""
        table = self.query_one("#groups", DataTable)
        selected = self.selected_group()
        table.clear()
        for f in fleets:
            for g in f.groups:
                key = f"{f.name}/{g.name}"
                state = g.state + (" (on demand)" if g.on_demand else "")
                table.add_row(
                    key,
                    state,
                    str(len(g.workers)),
                    f"{g.tok_s:.1f}",
                    str(g.queued),
                    str(g.requests),
                    str(g.overflowed),
                    ", ".join(g.aliases) or "-",
                    key=key,
                )
        if selected is not None and selected in {
            f"{f.name}/{g.name}" for f in fleets for g in f.groups
        }:
            table.move_cursor(row=table.get_row_index(selected))

    def selected_group(self) -> str | None:
        table = self.query_one("#groups", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return str(key) if key is not None else None

    @on(Button.Pressed, "#group-toggle")
    def toggle_selected_group(self) -> None:
        """Load the selected model group if it is unloaded, else unload it."""
        key = self.selected_group()
        if key is None:
            return
        fleet, _, name = key.partition("/")
        group = next(
            (g for f in self.fleets if f.name == fleet for g in f.groups if g.name == name), None
        )
        if group is not None:
            action = "load" if group.state in ("unloaded", "failed") else "unload"
            self.post_message(GroupAction(fleet, name, action))

    @on(Button.Pressed, "#worker-restart")
    def restart_selected(self) -> None:
        worker_id = self.selected_worker()
        if worker_id and (w := self._worker(worker_id)) is not None and w.pid:
            self.post_message(RestartWorker(worker_id))

    @on(Button.Pressed, "#fleet-stop")
    def stop_selected(self) -> None:
        worker_id = self.selected_worker()
        if worker_id:
            self.post_message(StopFleet(worker_id.split("/")[0]))
