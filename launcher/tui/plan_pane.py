"""The Plan screen: workload inputs, ranked layouts with per-card memory, launch and save."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Button, Input, OptionList, Select, Static
from textual.widgets.option_list import Option

from launcher.errors import LauncherError
from launcher.gpu.inventory import Inventory
from launcher.model.spec import ModelSpec
from launcher.plan.advisor import Plan, plan
from launcher.plan.layouts import Layout, ServerTarget
from launcher.plan.workload import DEFAULT_USERS_PER_WORKER, GOALS, KV_TYPES, Workload

GIB = 1 << 30
LAYOUT_CHOICES = ("auto", "per-card", "pooled-layer", "pooled-tensor", "cpu:1", "cpu:2")


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


def with_split(spec: ModelSpec, layout: Layout, split: list[int], workload: Workload) -> Layout:
    """``layout`` with a hand-made ``-ts``: memory per card recomputed, argv updated."""
    import dataclasses

    from launcher.plan import memory as mem
    from launcher.plan.layouts import MIN_HEADROOM_BYTES

    process = layout.processes[0]
    cards, host = mem.layer_split_memory(
        spec,
        [(c.card, c.uuid, c.free_bytes) for c in layout.cards],
        split,
        workload.ctx,
        process.slots,
        workload.kv_type,
    )
    argv = list(process.argv)
    argv[argv.index("-ts") + 1] = ",".join(map(str, split))
    short = [c for c in cards if c.free_after_bytes < MIN_HEADROOM_BYTES]
    problem = f"card {short[0].card} would not fit" if short else None
    return dataclasses.replace(
        layout,
        cards=tuple(cards),
        host_bytes=host,
        tensor_split=tuple(split),
        problem=problem,
        processes=(dataclasses.replace(process, argv=tuple(argv)),),
    )


class LaunchRequested(Message):
    def __init__(self, spec: ModelSpec, layout: Layout, workload: Workload) -> None:
        super().__init__()
        self.spec = spec
        self.layout = layout
        self.workload = workload


class PlanPane(Widget):
    """Inputs, the ranked layouts, the chosen one's bars and commands; launch or save it."""

    DEFAULT_CSS = "PlanPane { height: auto; } PlanPane OptionList { height: 8; }"

    def __init__(self, inventory: Inventory, server: ServerTarget, id: str | None = None) -> None:
        super().__init__(id=id)
        self.inventory = inventory
        self.server = server
        self.spec: ModelSpec | None = None
        self.result: Plan | None = None
        self.edited: dict[int, Layout] = {}  # layouts whose tensor split the user changed

    def compose(self) -> ComposeResult:
        cards = max(1, len([c for c in self.inventory.local.cards if c.usable]))
        with VerticalScroll():
            yield Static("Pick a model on the Model screen first.", id="plan-model")
            with Horizontal(classes="row"):
                yield Input(
                    str(DEFAULT_USERS_PER_WORKER * cards),
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
            yield OptionList(id="plan-layouts")
            yield Input(
                placeholder="tensor split (layers per card, e.g. 16,17): edit to see "
                "the bars change",
                id="plan-split",
            )
            yield Static(id="plan-detail")
            with Horizontal(classes="row"):
                yield Button("Launch", id="plan-launch", variant="success", disabled=True)
                yield Input(placeholder="profile name", id="plan-profile-name")
                yield Button("Save as profile", id="plan-save", disabled=True)
            yield Static(id="plan-status")
            yield Static(id="plan-bench")

    def set_inventory(self, inventory: Inventory) -> None:
        """Plan for other hardware (a profile) or this box again; re-plans if a model is set."""
        self.inventory = inventory
        if self.spec is not None:
            self.run_plan()

    def set_model(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.query_one("#plan-model", Static).update(f"Model: {spec.name} ({spec.path})")
        ctx = self.query_one("#plan-ctx", Input)
        ctx.value = str(min(int(ctx.value or 4096), spec.training_context))

    def workload(self) -> Workload:
        users = int(self.query_one("#plan-users", Input).value or 1)
        ctx = int(self.query_one("#plan-ctx", Input).value or 4096)
        return Workload(
            users=users,
            ctx=ctx,
            kv_type=str(self.query_one("#plan-kv", Select).value),
            goal=str(self.query_one("#plan-goal", Select).value),
        )

    @on(Button.Pressed, "#plan-run")
    def run_plan(self) -> None:
        if self.spec is None:
            self.query_one("#plan-status", Static).update("Pick a model first (Model screen).")
            return
        try:
            workload = self.workload()
            kind = str(self.query_one("#plan-layout", Select).value)
            self.result = plan(self.spec, self.inventory, workload, self.server, kind)
            self.edited = {}
        except (LauncherError, ValueError) as err:
            self.query_one("#plan-status", Static).update(str(err))
            return
        options = self.query_one("#plan-layouts", OptionList)
        options.clear_options()
        for r in self.result.layouts:
            t = r.layout.throughput
            fit = "" if r.layout.feasible else "  [does not fit]"
            options.add_option(
                Option(
                    f"{r.rank}. {r.layout.kind}{fit}: {t.aggregate_tok_s:.0f} tok/s for "
                    f"{workload.users}, {t.single_user_tok_s:.1f} for one",
                    id=str(r.rank - 1),
                )
            )
        if self.result.layouts:
            options.highlighted = 0
            self.show(0)
        advice = " ".join(self.result.advice)
        self.query_one("#plan-status", Static).update(advice)
        self.query_one("#plan-bench", Static).update(self._bench_plot())

    def _bench_plot(self) -> str:
        """This box's bench results for the model: the plot of tok/s against users."""
        from launcher.bench import results
        from launcher.bench.compare import plot

        if self.spec is None:
            return ""
        keys = results.keys_for(self.inventory, self.spec, self.server)
        flags = results.inherited_flags(self.result, self.server) if self.result else []
        runs = results.load(keys, flags)
        head = results.inherited_note(flags) + "\n" if flags else ""
        if not runs:
            return head + (
                results.stale_note(keys, flags)
                or "No bench results for this model here yet ('llama-launcher bench')."
            )
        return head + "Measured on this box:\n" + plot(results.averaged(runs))

    @on(OptionList.OptionHighlighted, "#plan-layouts")
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option_id is not None:
            self.show(int(event.option_id))

    def show(self, index: int) -> None:
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
        self.query_one("#plan-detail", Static).update(
            f"{reason}\n{memory_bars(layout)}\n{commands}"
        )
        ok = layout.feasible
        self.query_one("#plan-launch", Button).disabled = not ok
        self.query_one("#plan-save", Button).disabled = not ok

    @on(Input.Changed, "#plan-split")
    def _split_changed(self, event: Input.Changed) -> None:
        """Recompute the per-card memory for a hand-edited -ts, as the user types."""
        if self.result is None or self.spec is None:
            return
        index = self.query_one("#plan-layouts", OptionList).highlighted or 0
        base = self.result.layouts[index].layout
        try:
            split = [int(v) for v in event.value.split(",") if v.strip()]
        except ValueError:
            return
        if len(split) != len(base.cards) or sum(split) != self.spec.n_layer + 1 or min(split) < 0:
            self.query_one("#plan-status", Static).update(
                f"A split needs {len(base.cards)} numbers adding up to {self.spec.n_layer + 1} "
                "layers."
            )
            return
        self.query_one("#plan-status", Static).update("")
        layout = with_split(self.spec, base, split, self.workload())
        self.edited[index] = layout
        self._show_layout(self.result.layouts[index].reason + " (split edited)", layout)

    def selected(self) -> Layout | None:
        if self.result is None:
            return None
        index = self.query_one("#plan-layouts", OptionList).highlighted or 0
        return self.edited.get(index, self.result.layouts[index].layout)

    @on(Button.Pressed, "#plan-launch")
    def _launch(self) -> None:
        layout = self.selected()
        if layout is not None and self.spec is not None:
            self.post_message(LaunchRequested(self.spec, layout, self.workload()))

    @on(Button.Pressed, "#plan-save")
    def _save(self) -> None:
        self.save_profile()

    @work(thread=True, exclusive=True, group="save")
    def save_profile(self) -> None:
        from launcher.profiles import launch

        layout = self.selected()
        name = self.query_one("#plan-profile-name", Input).value.strip()
        status = self.query_one("#plan-status", Static)
        if layout is None or self.spec is None or not name:
            self.app.call_from_thread(status.update, "Give the profile a name first.")
            return
        w = self.workload()
        by_index = {c.index: c for c in self.inventory.local.cards}
        used = [by_index[i] for p in layout.processes for i in p.cards if i in by_index]
        profile = launch.LaunchProfile(
            name=name,
            model=str(self.spec.path),
            users=w.users,
            ctx=w.ctx,
            kv_type=w.kv_type,
            goal=w.goal,
            layout=layout.kind,
            cards=[c.uuid or str(c.index) for c in used],
            pci_bus_ids=[c.pci_bus_id or "" for c in used],
            tensor_split=list(layout.tensor_split),
        )
        try:
            path = launch.save_launch_profile(profile)
        except LauncherError as err:
            self.app.call_from_thread(status.update, str(err))
            return
        self.app.call_from_thread(status.update, f"Saved launch profile '{name}': {path}")
