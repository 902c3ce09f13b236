"""The Plan screen: workload inputs, ranked layouts with per-card memory, launch and save.

One model, or a box of several: "Add to box" puts the open model (with the users and context
in the form) on the box list, "Remove" takes it off; with models on the list, Plan ranks
whole-box plans, shows the card map (which card runs which model) and Launch starts them all
as one fleet."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Button, Input, OptionList, Select, Static
from textual.widgets.option_list import Option

from launcher.app import fleet, models, planning
from launcher.bench import report
from launcher.errors import LauncherError
from launcher.gpu.inventory import Inventory
from launcher.llamacpp.args import KV_TYPES
from launcher.llamacpp.probe import ServerTarget
from launcher.model.spec import ModelSpec
from launcher.plan.advisor import Plan
from launcher.plan.box import BoxPlan, BoxResult
from launcher.plan.layouts import Layout, with_tensor_split
from launcher.plan.split import parse_split
from launcher.plan.workload import GOALS, Workload
from launcher.spec.fleet import FleetSpec, GroupSpec

GIB = 1 << 30
LAYOUT_CHOICES = ("auto", "per-card", "pooled-layer", "pooled-tensor", "cpu:1", "cpu:2")
NO_BOX = "Box: empty; Add to box puts this model on it, to plan several together."


def memory_bars(layout: Layout, width: int = 30) -> str:
    """Per card: weights (█), KV (▓), compute (▒), free (░), with the numbers."""
    lines = []
    for c in layout.cards:
        total = max(c.free_bytes, c.total_bytes, 1)
        parts = [(c.weights_bytes, "█"), (c.kv_bytes, "▓"), (c.compute_bytes, "▒")]
        bar = "".join(ch * round(v / total * width) for v, ch in parts)[:width]
        bar += "░" * (width - len(bar))
        lines.append(
            f"card {c.card}: {bar} weights {c.weights_bytes / GIB:.1f} + KV "
            f"{c.kv_bytes / GIB:.1f} + compute {c.compute_bytes / GIB:.1f} GiB, "
            f"free after {c.free_after_bytes / GIB:.1f} GiB"
        )
    if not layout.cards:
        lines.append(f"host RAM: {layout.host_bytes / GIB:.2f} GiB")
    return "\n".join(lines)


def card_map(plan: BoxPlan, inventory: Inventory, width: int = 30) -> str:
    """Per card, which models it holds: one letter per model (lower case: on demand), sized
    by the memory it takes, then the free rest (░); a legend names the letters."""
    letters = {p.name: chr(ord("A") + i) for i, p in enumerate(plan.placements)}
    totals = {c.index: c.memory_total_bytes for c in inventory.local.cards}
    used: dict[int, list[tuple[str, int]]] = {}
    for p in plan.placements:
        letter = letters[p.name].lower() if p.on_demand else letters[p.name]
        for c in p.layout.cards:
            used.setdefault(c.card, []).append((letter, c.total_bytes))
    lines = []
    for index, parts in sorted(used.items()):
        total = max(totals.get(index, 0), sum(n for _, n in parts), 1)
        bar = "".join(letter * max(1, round(n / total * width)) for letter, n in parts)[:width]
        bar += "░" * (width - len(bar))
        what = " + ".join(f"{letter} {n / GIB:.1f}" for letter, n in parts)
        lines.append(f"card {index}: {bar} {what} of {total / GIB:.0f} GiB")
    if not used:
        ram = " + ".join(
            f"{letters[p.name]} {p.layout.host_bytes / GIB:.2f}" for p in plan.placements
        )
        lines.append(f"host RAM: {ram} GiB")
    legend = ", ".join(
        f"{letters[p.name]} = {p.name}" + (" (on demand)" if p.on_demand else "")
        for p in plan.placements
    )
    return "\n".join([*lines, legend])


class LaunchRequested(Message):
    """Launch pressed: the fleet spec of the layout on screen, exactly as shown."""

    def __init__(self, spec: FleetSpec) -> None:
        super().__init__()
        self.spec = spec


class PlanPane(Widget):
    """Inputs, the ranked layouts, the chosen one's bars and commands; launch or save it."""

    DEFAULT_CSS = "PlanPane { height: auto; } PlanPane OptionList { height: 8; }"

    def __init__(
        self,
        inventory: Inventory,
        server: ServerTarget,
        router_port: Callable[[], int],
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.inventory = inventory
        self.server = server
        self.router_port = router_port  # the port a launch would use, asked at each plan
        self.spec: ModelSpec | None = None
        self.result: Plan | None = None
        self.planned_workload: Workload | None = None
        self.planned_port = 8080  # the router port the shown commands are planned for
        self.edited: dict[int, Layout] = {}  # layouts whose tensor split the user changed
        # the box: models to plan together (model, users, ctx), and its last plan
        self.box: list[tuple[ModelSpec, int | None, int | None]] = []
        self.box_result: BoxResult | None = None

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static("Pick a model on the Model screen first.", id="plan-model")
            with Horizontal(classes="row"):
                yield Input(
                    str(planning.default_users(self.inventory.local)),
                    id="plan-users",
                    type="integer",
                    tooltip="concurrent users (slots in total)",
                )
                yield Input("4096", id="plan-ctx", type="integer", tooltip="context per user")
                yield Select(
                    [(k, k) for k in KV_TYPES], value="f16", id="plan-kv", allow_blank=False
                )
                yield Select(
                    [(g, g) for g in GOALS], value="throughput", id="plan-goal", allow_blank=False
                )
            with Horizontal(classes="row"):  # two rows: the whole form fits 80 columns
                yield Select(
                    [(k, k) for k in LAYOUT_CHOICES],
                    value="auto",
                    id="plan-layout",
                    allow_blank=False,
                )
                yield Button("Plan", id="plan-run", variant="primary")
                # beside Plan, so that it is on screen at 80x24 too
                yield Button("Launch", id="plan-launch", variant="success", disabled=True)
            with Horizontal(classes="row"):
                yield Button("Add to box", id="plan-box-add")
                yield Button("Remove", id="plan-box-remove")
                yield Button(
                    "Measure",
                    id="plan-measure",
                    tooltip="measure this box's decode speed (under a minute), then plan again",
                )
            yield Static(NO_BOX, id="plan-box")
            yield OptionList(id="plan-layouts")
            yield Input(
                placeholder="tensor split per card: layers (16,17) or proportions (3,1); "
                "edit to see the bars change",
                id="plan-split",
            )
            yield Static(id="plan-detail")
            with Horizontal(classes="row"):
                yield Input(placeholder="profile name", id="plan-profile-name")
                yield Button("Save as profile", id="plan-save", disabled=True)
            yield Static(id="plan-status")
            yield Static(id="plan-bench")

    def on_mount(self) -> None:
        # each field says what it is, on its border (no extra rows at 80x24)
        for selector, title in (
            ("#plan-users", "users"),
            ("#plan-ctx", "context"),
            ("#plan-kv", "KV cache"),
            ("#plan-goal", "goal"),
            ("#plan-layout", "layout"),
            ("#plan-split", "tensor split"),
            ("#plan-profile-name", "save as"),
        ):
            field = self.query_one(selector)
            # a Select draws its border on the part that shows the value
            shown = field.query_one("SelectCurrent") if isinstance(field, Select) else field
            shown.border_title = title

    def set_inventory(self, inventory: Inventory) -> None:
        """Plan for other hardware (a profile) or this box again; re-plans if a model is set."""
        self.inventory = inventory
        if self.spec is not None:
            self.run_plan()

    def set_group(self, group: GroupSpec) -> None:
        """Fill the form from a launch profile's group (its model is opened separately)."""
        if group.users is not None:
            self.query_one("#plan-users", Input).value = str(group.users)
        if group.ctx is not None:
            self.query_one("#plan-ctx", Input).value = str(group.ctx)
        self.query_one("#plan-kv", Select).value = group.server.kv_type
        self.query_one("#plan-goal", Select).value = group.goal
        layout = group.layout if group.layout in LAYOUT_CHOICES else "auto"
        self.query_one("#plan-layout", Select).value = layout

    def set_box(self, spec: FleetSpec) -> None:
        """A launch profile of several groups: its models on the box list, with their users
        and context (a model that cannot be read is said and left off)."""
        box = []
        for g in spec.groups:
            try:
                box.append((models.read_model(Path(g.model).expanduser()), g.users, g.ctx))
            except LauncherError as err:
                self.query_one("#plan-status", Static).update(str(err))
        self.box = box
        self._show_box_list()

    def clear_model(self, why: str) -> None:
        """No model to plan (the last one asked for could not be read): nothing to launch."""
        self.spec = None
        self.result = None
        self.planned_workload = None
        self.query_one("#plan-model", Static).update(f"No model: {why}")
        self.query_one("#plan-layouts", OptionList).clear_options()
        self.query_one("#plan-detail", Static).update("")
        self._can_launch(False)

    def set_model(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.query_one("#plan-model", Static).update(f"Model: {spec.name} ({spec.path})")
        ctx = self.query_one("#plan-ctx", Input)
        ctx.value = str(min(int(ctx.value or 4096), spec.training_context))

    def workload(self) -> Workload:
        """The form's workload; an empty field takes the default (``app.planning``)."""
        assert self.spec is not None
        users = self.query_one("#plan-users", Input).value
        ctx = self.query_one("#plan-ctx", Input).value
        return planning.default_workload(
            self.spec,
            self.inventory.local,
            users=int(users) if users else None,
            ctx=int(ctx) if ctx else None,
            kv_type=str(self.query_one("#plan-kv", Select).value),
            goal=str(self.query_one("#plan-goal", Select).value),
        )

    def _show_box_list(self) -> None:
        text = ", ".join(f"{m.path.name} ({u or 'default'} users)" for m, u, _ in self.box)
        self.query_one("#plan-box", Static).update(f"Box: {text}" if self.box else NO_BOX)

    @on(Button.Pressed, "#plan-box-add")
    def add_to_box(self) -> None:
        """Put the open model on the box list, with the form's users and context."""
        if self.spec is None:
            self.query_one("#plan-status", Static).update("Pick a model first (Model screen).")
            return
        users = self.query_one("#plan-users", Input).value
        ctx = self.query_one("#plan-ctx", Input).value
        entry = (self.spec, int(users) if users else None, int(ctx) if ctx else None)
        self.box = [b for b in self.box if b[0].path != self.spec.path] + [entry]
        self._show_box_list()

    @on(Button.Pressed, "#plan-box-remove")
    def remove_from_box(self) -> None:
        """Take the open model off the box list."""
        if self.spec is not None:
            self.box = [b for b in self.box if b[0].path != self.spec.path]
        self._show_box_list()

    def run_box_plan(self) -> None:
        """Plan the box list as one fleet: ranked whole-box plans."""
        try:
            port = self.router_port()
            result = planning.plan_models_on(
                self.box,
                self.inventory,
                self.server,
                kv_type=str(self.query_one("#plan-kv", Select).value),
                goal=str(self.query_one("#plan-goal", Select).value),
                layout=str(self.query_one("#plan-layout", Select).value),
                router_port=port,
            )
        except (LauncherError, ValueError) as err:
            self.query_one("#plan-status", Static).update(str(err))
            return
        self.box_result = result
        self.result = None
        self.planned_port = port
        options = self.query_one("#plan-layouts", OptionList)
        options.clear_options()
        for plan in result.plans:
            parts = ", ".join(
                f"{p.name} {p.layout.kind}" + (" on demand" if p.on_demand else "")
                for p in plan.placements
            )
            options.add_option(Option(f"{plan.rank}. {parts}", id=str(plan.rank - 1)))
        self.query_one("#plan-split", Input).disabled = True
        if result.plans:
            options.highlighted = 0
            self.show(0)
        self.query_one("#plan-status", Static).update(
            "" if result.plans else "These models cannot run together on this box."
        )
        self.query_one("#plan-bench", Static).update("")

    @on(Button.Pressed, "#plan-measure")
    def _measure(self) -> None:
        if self.inventory.source != "nvml":
            self.query_one("#plan-status", Static).update(
                "Measure works on this box; a hardware profile's cards are not here."
            )
            return
        self.query_one("#plan-measure", Button).disabled = True
        self._measure_worker()

    @work(thread=True, exclusive=True, group="measure")
    def _measure_worker(self) -> None:
        status = self.query_one("#plan-status", Static)
        try:
            result = planning.measure_here(
                self.inventory, lambda line: self.app.call_from_thread(status.update, line)
            )
            done = f"Measured this box in {result.seconds:.0f} s; the plan now uses it."
        except LauncherError as err:
            done = str(err)
        self.app.call_from_thread(self._measured, done)

    def _measured(self, message: str) -> None:
        self.query_one("#plan-measure", Button).disabled = False
        if self.spec is not None or self.box:
            self.run_plan()
        self.query_one("#plan-status", Static).update(message)

    @on(Button.Pressed, "#plan-run")
    def run_plan(self) -> None:
        if self.box:
            self.run_box_plan()
            return
        self.box_result = None
        if self.spec is None:
            self.query_one("#plan-status", Static).update("Pick a model first (Model screen).")
            return
        try:
            workload = self.workload()
            kind = str(self.query_one("#plan-layout", Select).value)
            port = self.router_port()
            outcome = planning.plan_with(
                self.spec, self.inventory, workload, self.server, kind, router_port=port
            )
        except (LauncherError, ValueError) as err:
            self.query_one("#plan-status", Static).update(str(err))
            return
        self.result = outcome.plan
        self.planned_workload = workload
        self.planned_port = port
        self.edited = {}
        options = self.query_one("#plan-layouts", OptionList)
        options.clear_options()
        for r in self.result.layouts:
            t = r.layout.throughput
            fit = "" if r.layout.feasible else "  [does not fit]"
            band = f" ±{r.layout.basis.error_pct:.0f}%" if r.layout.basis else ""
            options.add_option(
                Option(
                    f"{r.rank}. {r.layout.kind}{fit}: {t.aggregate_tok_s:.0f} tok/s for "
                    f"{workload.users}, {t.single_user_tok_s:.1f} for one{band}",
                    id=str(r.rank - 1),
                )
            )
        if self.result.layouts:
            options.highlighted = 0
            self.show(0)
        advice = " ".join(self.result.advice)
        self.query_one("#plan-status", Static).update(advice)
        self.query_one("#plan-bench", Static).update(self._bench_plot(outcome))

    def _bench_plot(self, outcome: planning.PlanOutcome) -> str:
        """This box's bench results for the model: the plot of tok/s against users."""
        head = f"{outcome.flags_note}\n" if outcome.flags_note else ""
        if not outcome.runs:
            return head + (
                outcome.stale_note
                or "No bench results for this model here yet ('llama-launcher bench')."
            )
        return head + "Measured on this box:\n" + report.plot(outcome.averaged_runs)

    @on(OptionList.OptionHighlighted, "#plan-layouts")
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option_id is not None:
            self.show(int(event.option_id))

    def show(self, index: int) -> None:
        if self.box_result is not None:
            plan = self.box_result.plans[index]
            commands = "\n".join(
                f"$ {' '.join(f'{k}={v}' for k, v in proc.env.items())} {' '.join(proc.argv)}"
                for p in plan.placements
                for proc in p.layout.processes
            )
            self.query_one("#plan-detail", Static).update(
                f"{plan.reason}\n{card_map(plan, self.inventory)}\n{commands}"
            )
            self._can_launch(not plan.missing)
            return
        assert self.result is not None
        r = self.result.layouts[index]
        layout = self.edited.get(index, r.layout)
        split = self.query_one("#plan-split", Input)
        split.disabled = not (layout.tensor_split and layout.kind.startswith("pooled-layer"))
        with split.prevent(Input.Changed):
            split.value = ",".join(map(str, layout.tensor_split))
        self._show_layout(r.reason, layout)

    def _show_layout(self, reason: str, layout: Layout) -> None:
        commands = "\n".join(
            f"$ {' '.join(f'{k}={v}' for k, v in p.env.items())} {' '.join(p.argv)}"
            for p in layout.processes
        )
        speed = f"Speed {layout.basis.label}.\n" if layout.basis else ""
        self.query_one("#plan-detail", Static).update(
            f"{reason}\n{speed}{memory_bars(layout)}\n{commands}"
        )
        self._can_launch(layout.feasible)

    def _can_launch(self, ok: bool) -> None:
        self.query_one("#plan-launch", Button).disabled = not ok
        self.query_one("#plan-save", Button).disabled = not ok
        self.app.refresh_bindings()  # the footer's "l Launch" follows the button

    @on(Input.Changed, "#plan-split")
    def _split_changed(self, event: Input.Changed) -> None:
        """Recompute the per-card memory for a hand-edited -ts, as the user types."""
        if self.result is None or self.spec is None or self.planned_workload is None:
            return
        index = self.query_one("#plan-layouts", OptionList).highlighted or 0
        base = self.result.layouts[index].layout
        if event.value.rstrip().endswith((",", "/")):
            return  # still typing the next number
        try:
            split = parse_split(event.value)
            layout = with_tensor_split(self.spec, base, split, self.planned_workload)
        except LauncherError as err:
            self.query_one("#plan-status", Static).update(str(err))
            return
        self.query_one("#plan-status", Static).update("")
        self.edited[index] = layout
        self._show_layout(self.result.layouts[index].reason + " (split edited)", layout)

    def selected(self) -> Layout | None:
        if self.result is None:
            return None
        index = self.query_one("#plan-layouts", OptionList).highlighted or 0
        return self.edited.get(index, self.result.layouts[index].layout)

    def box_plan(self) -> BoxPlan | None:
        if self.box_result is None or not self.box_result.plans:
            return None
        index = self.query_one("#plan-layouts", OptionList).highlighted or 0
        return self.box_result.plans[index]

    def fleet_spec(self, name: str | None = None, launch: bool = True) -> FleetSpec:
        """The fleet of the layout (or box plan) on screen, as shown (raises when it cannot
        run here); ``launch=False`` for "Save as profile"."""
        box = self.box_plan()
        if box is not None:
            return fleet.spec_for_box(
                box, self.inventory, name=name, router_port=self.planned_port, launch=launch
            )
        layout = self.selected()
        if layout is None or self.spec is None or self.planned_workload is None:
            raise LauncherError("Plan a model first.")
        return fleet.spec_for_layout(
            self.spec,
            layout,
            self.planned_workload,
            self.inventory,
            name=name,
            router_port=self.planned_port,
            launch=launch,
        )

    @on(Button.Pressed, "#plan-launch")
    def _launch(self) -> None:
        try:
            spec = self.fleet_spec()
        except LauncherError as err:
            self.query_one("#plan-status", Static).update(str(err))
            self.app.notify(str(err), severity="error")
            return
        self.post_message(LaunchRequested(spec))

    @on(Button.Pressed, "#plan-save")
    def _save(self) -> None:
        self.save_profile()

    @work(thread=True, exclusive=True, group="save")
    def save_profile(self) -> None:
        name = self.query_one("#plan-profile-name", Input).value.strip()
        status = self.query_one("#plan-status", Static)
        if not name:
            self.app.call_from_thread(status.update, "Give the profile a name first.")
            return
        try:
            path = fleet.save_planned(self.fleet_spec(name, launch=False))
        except LauncherError as err:
            self.app.call_from_thread(status.update, str(err))
            return
        self.app.call_from_thread(status.update, f"Saved launch profile '{name}': {path}")
