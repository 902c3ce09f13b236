"""The Model screen: pick a GGUF (a path, or one found in the usual places) and see its facts."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Button, DirectoryTree, Input, OptionList, Static
from textual.widgets.option_list import Option

from launcher.app import models
from launcher.errors import LauncherError
from launcher.model.scan import FoundModel, scan
from launcher.model.spec import ModelSpec


class ModelChosen(Message):
    """A model was read successfully; ``spec`` is None when the one asked for could not be
    read (the Plan screen then drops the model it had, so Launch cannot start the old one)."""

    def __init__(self, spec: ModelSpec | None) -> None:
        super().__init__()
        self.spec = spec


def facts(spec: ModelSpec) -> str:
    swa = f", sliding window {spec.swa_window}" if spec.swa_window else ""
    moe = f", {spec.n_expert} experts ({spec.n_expert_used} used)" if spec.n_expert else ""
    return (
        f"{spec.name}\n{spec.arch}, {spec.quantization}, {spec.parameters / 1e9:.2f}B "
        f"parameters, {spec.weights_bytes / 2**30:.2f} GiB in {len(spec.parts)} file(s)\n"
        f"{spec.n_layer} layers, width {spec.n_embd}, {spec.n_head_kv[0]} KV heads x "
        f"{spec.head_dim_k}, training context {spec.training_context}{swa}{moe}"
    )


class GGUFTree(DirectoryTree):
    """A file browser that shows folders and .gguf files only."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        return [
            p for p in paths if not p.name.startswith(".") and (p.is_dir() or p.suffix == ".gguf")
        ]


class ModelPane(Widget):
    """Path input, found models, facts, and a button that writes a tiny synthetic model."""

    DEFAULT_CSS = (
        "ModelPane { height: auto; } ModelPane OptionList { height: 8; } "
        "ModelPane DirectoryTree { height: 10; }"
    )

    def __init__(
        self, models_dir: Path, places: Callable[[], list[tuple[str, Path]]], id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self.models_dir = models_dir
        self.places = places
        self.found: list[FoundModel] = []

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static("Model file", classes="section-title")
            with Horizontal(classes="row"):
                yield Input(placeholder="/path/to/model.gguf", id="model-path")
                yield Button("Open", id="model-open", variant="primary")
                yield Button("Write a tiny synthetic model", id="model-make")
            yield Static("Found in the usual places", classes="section-title")
            yield OptionList(id="model-found")
            yield Static(f"Browse {self.models_dir}", classes="section-title")
            yield GGUFTree(
                self.models_dir if self.models_dir.is_dir() else Path.home(), id="model-tree"
            )
            yield Static(id="model-facts")

    def on_mount(self) -> None:
        self.rescan()

    @work(thread=True, exclusive=True, group="scan")
    def rescan(self) -> None:
        places = [("models", self.models_dir)]
        places += [p for p in self.places() if p[1] != self.models_dir]
        found = scan(places)
        self.app.call_from_thread(self._show_found, found)

    def _show_found(self, found: list[FoundModel]) -> None:
        self.found = found
        options = self.query_one("#model-found", OptionList)
        options.clear_options()
        if not found:
            options.add_option(
                Option(
                    "No GGUF model found; write a synthetic one with the button above.",
                    disabled=True,
                )
            )
        for i, m in enumerate(found):
            options.add_option(
                Option(f"{m.name}  ({m.size_bytes / 2**30:.2f} GiB, {m.source})", id=str(i))
            )

    @on(OptionList.OptionSelected, "#model-found")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        if event.option_id is not None:
            self.open(self.found[int(event.option_id)].path)

    @on(DirectoryTree.FileSelected, "#model-tree")
    def _browsed(self, event: DirectoryTree.FileSelected) -> None:
        self.open(event.path)

    @on(Button.Pressed, "#model-open")
    @on(Input.Submitted, "#model-path")
    def _open_typed(self) -> None:
        text = self.query_one("#model-path", Input).value.strip()
        if text:
            self.open(Path(text).expanduser())

    def open(self, path: Path) -> None:
        self.query_one("#model-path", Input).value = str(path)
        try:
            spec = models.read_model(path)
        except LauncherError as err:
            self.query_one("#model-facts", Static).update(str(err))
            self.post_message(ModelChosen(None))
            return
        self.query_one("#model-facts", Static).update(facts(spec))
        self.post_message(ModelChosen(spec))

    @on(Button.Pressed, "#model-make")
    def _make(self) -> None:
        self.make_synthetic()

    @work(thread=True, exclusive=True, group="make")
    def make_synthetic(self) -> None:
        target = self.models_dir / "tiny.gguf"  # the name the README and tiny-cpu use
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                models.make_model(target, "llama", "tiny")
        except LauncherError as err:
            self.app.call_from_thread(self.query_one("#model-facts", Static).update, str(err))
            return
        self.app.call_from_thread(self.open, target)
        self.rescan()
