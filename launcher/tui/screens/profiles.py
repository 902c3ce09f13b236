"""The Profiles screen: hardware and launch profiles; load a launch profile, delete your own."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, DataTable, Label, Static

from launcher.app import fleet, hardware
from launcher.errors import LauncherError
from launcher.spec.fleet import FleetSpec


class ProfileLoaded(Message):
    """A launch profile was loaded: its model and workload go to the Model and Plan screens."""

    def __init__(self, spec: FleetSpec) -> None:
        super().__init__()
        self.spec = spec


class ConfirmDelete(ModalScreen[bool]):
    DEFAULT_CSS = (
        "ConfirmDelete { align: center middle; } ConfirmDelete > Vertical { "
        "width: 90%; max-width: 100; height: auto; border: thick $error; padding: 1 2; "
        "background: $surface; } ConfirmDelete Label { width: 100%; }"
    )

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "keep", "Keep it", tooltip="Close this and keep the profile")
    ]

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def action_keep(self) -> None:
        self.dismiss(False)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Delete {self.path}? This cannot be undone.")
            with Horizontal(classes="row"):
                yield Button("Delete", id="yes", variant="error")
                yield Button("Keep it", id="no", variant="primary")

    @on(Button.Pressed)
    def _chosen(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class ProfilesPane(Widget):
    DEFAULT_CSS = "ProfilesPane { height: auto; }"

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield DataTable(id="profiles-table", cursor_type="row")
            with Horizontal(classes="row"):
                yield Button("Load launch profile", id="profile-load", variant="primary")
                yield Button("Delete", id="profile-delete", variant="error")
            yield Static(id="profile-status")

    def on_mount(self) -> None:
        table = self.query_one("#profiles-table", DataTable)
        table.add_columns("kind", "name", "models", "origin", "file")
        self.refresh_list()

    def refresh_list(self) -> None:
        table = self.query_one("#profiles-table", DataTable)
        table.clear()
        self.rows: dict[str, tuple[str, str, Path]] = {}
        for kind, items in (
            ("launch", fleet.profiles()),
            ("hardware", hardware.profiles()),
        ):
            for name, path, origin in items:
                # yours: the file under the config folder (its whole path when loaded);
                # shipped examples live inside the package, where nobody edits them
                shown = "-" if origin == "example" else fleet.config_relative(path)
                key = f"{kind}:{path}"
                self.rows[key] = (kind, origin, path)
                models = fleet.profile_models(path) if kind == "launch" else "-"
                table.add_row(kind, name, models, origin, shown, key=key)

    def _selected(self) -> tuple[str, str, Path] | None:
        table = self.query_one("#profiles-table", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.rows.get(str(key))

    @on(Button.Pressed, "#profile-load")
    def _load(self) -> None:
        chosen = self._selected()
        status = self.query_one("#profile-status", Static)
        if chosen is None or chosen[0] != "launch":
            status.update("Pick a launch profile to load.")
            return
        try:
            profile = fleet.load_profile(str(chosen[2]))
        except LauncherError as err:
            status.update(str(err))
            return
        missing = [g.model for g in profile.groups if not Path(g.model).expanduser().is_file()]
        groups = ", ".join(f"{g.name} ({g.layout})" for g in profile.groups)
        if not missing:
            status.update(f"Loaded {profile.name}: {groups}")
        else:
            status.update(
                f"Loaded {profile.name}, but its model {missing[0]} is not here: make it with "
                "'Write a tiny synthetic model' (tiny-cpu) or 'llama-launcher make-model', or "
                "edit the profile."
            )
        self.post_message(ProfileLoaded(profile))

    @on(Button.Pressed, "#profile-delete")
    def _delete(self) -> None:
        chosen = self._selected()
        status = self.query_one("#profile-status", Static)
        if chosen is None or chosen[1] != "user":
            status.update("Only your own profiles can be deleted; shipped examples stay.")
            return
        path = chosen[2]

        def answer(yes: bool | None) -> None:
            if yes:
                fleet.delete_profile(path)
                status.update(f"Deleted {path}")
                self.refresh_list()

        self.app.push_screen(ConfirmDelete(path), answer)
