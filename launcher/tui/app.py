"""llama-launcher's TUI: one TabbedContent of panes (``screens/``): Hardware, Model, Plan,
Dashboard and Profiles.

Samplers run off the event loop (the GPU sampler's own thread; fleet state read in a thread
worker) and post messages that replace stale snapshots; panes hold no handles and act through
``Services`` (``launcher.app`` underneath).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Header, Input, Label, TabbedContent, TabPane

from launcher.app.fleet import FleetState
from launcher.errors import LauncherError
from launcher.gpu.card import GpuSample
from launcher.gpu.inventory import Inventory, from_backend
from launcher.gpu.sampler import GpuSampler
from launcher.tui.screens.dashboard import DashboardPane, GroupAction, RestartWorker, StopFleet
from launcher.tui.screens.hardware import HardwarePane, InventoryChanged
from launcher.tui.screens.model import ModelChosen, ModelPane
from launcher.tui.screens.plan import LaunchRequested, PlanPane
from launcher.tui.screens.profiles import ProfileLoaded, ProfilesPane
from launcher.tui.services import Services


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
        Binding(
            "l", "launch", "Launch", id="launch", tooltip="Start the layout on the Plan screen"
        ),
        Binding("q", "quit", "Quit", id="quit"),
        Binding(
            "escape",
            "leave_input",
            "Leave input",
            id="leave-input",
            tooltip="Leave the text field; the screen keys act again",
        ),
    ]

    def __init__(self, services: Services | None = None, model: Path | None = None) -> None:
        super().__init__()
        self.services = services or Services()
        self.initial_model = model
        self.backend = self.services.gpu_backend()
        self.inventory: Inventory = self._this_box()
        self._sampler: GpuSampler | None = None
        self.launched: set[str] = set()  # fleets started from this TUI
        self.fleets: list[FleetState] = []

    def _this_box(self) -> Inventory:
        return from_backend(self.backend, self.services.host())

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with TabbedContent(initial="hardware"):
            with TabPane("Hardware", id="hardware"):
                yield HardwarePane(self.inventory, self._this_box, id="hardware-pane")
            with TabPane("Model", id="model"):
                yield ModelPane(
                    self.services.models_dir, self.services.model_places, id="model-pane"
                )
            with TabPane("Plan", id="plan"):
                yield PlanPane(
                    self.inventory,
                    self.services.server(),
                    self.services.router_port,
                    id="plan-pane",
                )
            with TabPane("Dashboard", id="dashboard"):
                yield DashboardPane(id="dashboard-pane")
            with TabPane("Profiles", id="profiles"):
                yield ProfilesPane(id="profiles-pane")
        yield Footer()

    def on_mount(self) -> None:
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
        dashboard = self.query_one(DashboardPane)
        yield SystemCommand(
            "Restart the selected worker",
            "Its supervisor starts it again",
            dashboard.restart_selected,
        )
        yield SystemCommand(
            "Stop the selected worker's fleet", "SIGTERM, then SIGKILL", dashboard.stop_selected
        )
        yield SystemCommand(
            "Load or unload the selected model",
            "An on-demand model group of a running fleet",
            dashboard.toggle_selected_group,
        )

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """ "Leave input" is offered (and shown in the footer) only while a text field has
        focus; there, letters are typed, and Escape gives the screen keys back."""
        if action == "leave_input":
            return isinstance(self.focused, Input)
        if action == "launch":  # on the Plan screen, once there is a layout that fits
            plan = self.query_one(TabbedContent).active == "plan"
            return plan and not self.query_one("#plan-launch", Button).disabled
        return True

    def action_launch(self) -> None:
        self.query_one("#plan-launch", Button).press()

    def action_leave_input(self) -> None:
        self.screen.set_focus(None)

    def action_show(self, tab: str) -> None:
        # a focused widget left in the old pane would take its tab back (and get the keys)
        self.screen.set_focus(None)
        self.query_one(TabbedContent).active = tab

    # -- hardware, model, plan, profiles ---------------------------------------------------

    def on_inventory_changed(self, message: InventoryChanged) -> None:
        self.inventory = message.inventory
        self.query_one(PlanPane).set_inventory(message.inventory)

    def on_model_chosen(self, message: ModelChosen) -> None:
        pane = self.query_one(PlanPane)
        if message.spec is None:
            pane.clear_model("the model could not be read (see the Model screen).")
            return
        pane.set_model(message.spec)
        pane.run_plan()  # a model chosen shows its plan at once, with the form's workload

    def on_profile_loaded(self, message: ProfileLoaded) -> None:
        group = message.spec.groups[0]
        pane = self.query_one(PlanPane)
        pane.set_group(group)
        if len(message.spec.groups) > 1:  # several models: the box list, planned together
            pane.set_box(message.spec)
        self.query_one(ModelPane).open(Path(group.model).expanduser())
        self.action_show("plan")

    def on_launch_requested(self, message: LaunchRequested) -> None:
        self.launch(message)

    @work(thread=True, group="launch")
    def launch(self, message: LaunchRequested) -> None:
        spec = message.spec
        self.call_from_thread(self.action_show, "dashboard")  # focus leaves the plan's inputs
        layouts = ", ".join(f"{g.name} {g.layout}" for g in spec.groups)
        self.call_from_thread(self.notify, f"Starting fleet {spec.name} ({layouts})")
        try:
            code = self.services.launch_fleet(spec)
        except LauncherError as err:
            self.call_from_thread(self.notify, str(err), severity="error")
            return
        if code == 0:
            self.launched.add(spec.name)
            self.call_from_thread(
                self.notify, f"Fleet {spec.name} is up on http://127.0.0.1:{spec.router.port}"
            )
        else:
            self.call_from_thread(
                self.notify, f"Fleet {spec.name} did not start; see its log.", severity="error"
            )

    # -- dashboard --------------------------------------------------------------------------

    def on_gpu_samples(self, message: GpuSamples) -> None:
        pane = next(self.query(DashboardPane).results(), None)
        if pane is None:  # the app is closing
            return
        totals = {c.index: c.memory_total_bytes for c in self.inventory.local.cards}
        pane.show_samples(message.samples, totals)

    @work(thread=True, exclusive=True, group="fleets")
    def poll_fleets(self) -> None:
        self.post_message(FleetSnapshot(self.services.fleets()))

    def on_fleet_snapshot(self, message: FleetSnapshot) -> None:
        pane = next(self.query(DashboardPane).results(), None)
        if pane is None:  # the app is closing; a late snapshot has nowhere to go
            return
        self.fleets = message.fleets
        pane.show_fleets(message.fleets)

    def on_restart_worker(self, message: RestartWorker) -> None:
        try:
            self.services.restart_worker(message.worker_id)
        except LauncherError as err:
            self.notify(str(err), severity="error")
            return
        self.notify(f"{message.worker_id}: restarting")

    def on_group_action(self, message: GroupAction) -> None:
        self.group_action(message)

    @work(thread=True, group="group")
    def group_action(self, message: GroupAction) -> None:
        name = f"{message.fleet}/{message.group}"
        self.call_from_thread(self.notify, f"{name}: {message.action}ing")
        try:
            state = self.services.group_action(message.fleet, message.group, message.action)
        except LauncherError as err:
            self.call_from_thread(self.notify, str(err), severity="error")
            return
        self.call_from_thread(self.notify, f"{name} is {state}")

    def on_stop_fleet(self, message: StopFleet) -> None:
        self.stop_fleets([message.fleet])

    @work(thread=True, group="stop")
    def stop_fleets(self, names: list[str]) -> None:
        for name in names:
            self.services.stop_fleet(name)
            self.launched.discard(name)
        self.call_from_thread(self.notify, f"Stopped {', '.join(names)}")

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


class QuitScreen(ModalScreen[str]):
    """Fleets started here are still running: stop them, leave them, or stay."""

    DEFAULT_CSS = (
        "QuitScreen { align: center middle; } QuitScreen > Vertical { width: 70; "
        "height: auto; border: thick $warning; padding: 1 2; background: $surface; }"
    )

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", tooltip="Stay in the app; the fleets keep running")
    ]

    def __init__(self, fleets: list[str]) -> None:
        super().__init__()
        self.fleets = fleets

    def action_cancel(self) -> None:
        self.dismiss("cancel")

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Fleets started here are still running: {', '.join(self.fleets)}.")
            with Horizontal(classes="row"):
                yield Button("Stop them and quit", id="stop", variant="error")
                yield Button("Leave them running", id="keep", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed)
    def _chosen(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)
