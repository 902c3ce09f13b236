"""Snapshots of every screen at 80x24 and 120x40 with a fixed GPU box, a running fleet (fixed
states) and no clock."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from launcher.llamacpp.probe import ServerTarget
from launcher.run.fleet_state import FleetState, WorkerState
from launcher.tui.app import LauncherApp
from launcher.tui.services import Services
from tests import gpu_boxes
from tests.test_tui import HOST

FLEET = FleetState(
    "tiny",
    1234,
    {"url": "http://127.0.0.1:8080", "port": 8080},
    [
        WorkerState("tiny/w0", 1235, 8081, "http://127.0.0.1:8081", [0], "healthy", 0, 41.5, 1, 4),
        WorkerState(
            "tiny/w1",
            1236,
            8082,
            "http://127.0.0.1:8082",
            [1],
            "restarting",
            2,
            message="exited with code -9; restart 2 in 2 s",
        ),
    ],
)


# a fixed folder: the model's path is on screen, and must not change between runs
MODELS = Path(tempfile.gettempdir()) / "llama-launcher-snapshots" / "models"


def make_app(tmp_path: Path, model: Path | None = None) -> LauncherApp:
    models = MODELS
    models.mkdir(parents=True, exist_ok=True)
    if model is not None:
        (models / "tiny.gguf").write_bytes(model.read_bytes())
    return LauncherApp(
        Services(
            gpu_backend=gpu_boxes.mixed_desktop_backend,
            host=lambda: HOST,
            fleets=lambda: [FLEET],
            server=lambda: ServerTarget("llama-server"),
            router_port=lambda: 8080,  # the screen shows ports: not whether 8080 is free here
            models_dir=models,
            model_places=lambda: [],
            sample_interval_s=3600,
        )
    )


@pytest.mark.parametrize("tab", ["hardware", "model", "plan", "dashboard", "profiles"])
@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_screen_snapshot(
    tab: str,
    size: tuple[int, int],
    snap_compare,
    tmp_path: Path,  # type: ignore[no-untyped-def]
    model_factory,
) -> None:  # type: ignore[no-untyped-def]
    app = make_app(tmp_path, model_factory("llama"))

    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        await pilot.pause(0.2)
        if tab in ("model", "plan"):
            app.query_one("#model-pane").open(MODELS / "tiny.gguf")  # type: ignore[attr-defined]
        if tab == "plan":
            from textual.widgets import Button, Input

            app.query_one("#plan-users", Input).value = "8"
            app.query_one("#plan-run", Button).press()
        app.action_show(tab)
        await pilot.pause(0.3)
        app.set_focus(None)
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)
