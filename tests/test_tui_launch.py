"""What the Plan screen shows is what Launch starts: for each choice the TUI used to drop (a
q8_0 KV cache, the latency goal, an edited tensor split, a reserved card, this box after a look
at a hardware profile), the workers' command lines and cards, read back from the running
processes and the fleet's state file, are exactly the commands on screen.

The box is a fixed 4x H100 backend, so the workers are ``tests/fake_llama_server.py``: a CPU
llama-server cannot load a plan for GPUs, and what is checked here is the command line.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from textual.widgets import Button, DataTable, Input, Select, TabbedContent

from launcher.app.fleet import fleets, stop
from launcher.llamacpp.probe import ServerTarget
from launcher.profiles import hardware
from launcher.run.fleet_state import pid_alive
from launcher.tui.app import LauncherApp
from launcher.tui.screens.plan import PlanPane
from launcher.tui.services import Services
from tests import gpu_boxes
from tests.test_fleet import base_port
from tests.test_tui import HOST

FAKE = Path(__file__).with_name("fake_llama_server.py")


def proc_argv(pid: int) -> list[str]:
    """A process's command line, less the interpreter that runs the fake server's script."""
    raw = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    return raw[1:] if Path(raw[0]).name.startswith("python") else raw


def proc_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(item.split("=", 1) for item in raw if "=" in item)


def shown_commands(app: LauncherApp) -> list[str]:
    detail = str(app.query_one("#plan-detail").render())
    return [line[2:] for line in detail.splitlines() if line.startswith("$ ")]


def choose(app: LauncherApp, **values: str) -> None:
    for key, value in values.items():
        widget = app.query_one(f"#plan-{key}")
        if isinstance(widget, Select):
            widget.value = value
        else:
            assert isinstance(widget, Input)
            widget.value = value


async def kv_q8(app: LauncherApp, pilot: object) -> None:
    choose(app, users="8", kv="q8_0", layout="per-card")


async def latency_goal(app: LauncherApp, pilot: object) -> None:
    choose(app, users="4", goal="latency")


async def edited_split(app: LauncherApp, pilot: object) -> None:
    choose(app, users="8", layout="pooled-layer")
    app.query_one("#plan-run", Button).press()
    await pilot.pause(0.2)  # type: ignore[attr-defined]
    app.query_one("#plan-split", Input).value = "9,8,8,8"


async def reserved_card(app: LauncherApp, pilot: object) -> None:
    app.action_show("hardware")
    cards = app.query_one("#cards", DataTable)
    cards.move_cursor(row=1)
    app.query_one("#card-reserve", Button).press()
    await pilot.pause(0.2)  # type: ignore[attr-defined]
    app.action_show("plan")
    choose(app, users="6", layout="per-card")


async def profile_then_this_box(app: LauncherApp, pilot: object) -> None:
    source = app.query_one("#hardware-source", Select)
    source.value = str(hardware.resolve("six-2060s-risers"))
    await pilot.pause(0.2)  # type: ignore[attr-defined]
    choose(app, users="12", layout="pooled-layer")
    app.query_one("#plan-run", Button).press()
    await pilot.pause(0.2)  # type: ignore[attr-defined]
    assert "card 5:" in str(app.query_one("#plan-detail").render())
    source.value = "this-box"
    await pilot.pause(0.2)  # type: ignore[attr-defined]


Step = Callable[[LauncherApp, object], Awaitable[None]]


def four_h100_services(port: int, tmp_path: Path) -> Services:
    """A fixed 4x H100 box whose workers are the fake llama-server, routed on ``port``."""
    return Services(
        gpu_backend=gpu_boxes.four_h100_backend,
        host=lambda: HOST,
        server=lambda: ServerTarget(str(FAKE)),
        router_port=lambda: port,
        models_dir=tmp_path,
        model_places=lambda: [],
        sample_interval_s=0.2,
    )


CASES = {
    # choice: (model size, what the chosen plan's commands must say)
    "kv-q8_0": (kv_q8, "8b", ["-ctk q8_0 -ctv q8_0"] * 4),
    # a 70B model: per-card serves 4 users best, -sm tensor answers one user twice as fast
    "goal-latency": (latency_goal, "70b", ["GPU-h100-0,GPU-h100-1,GPU-h100-2,GPU-h100-3"]),
    "edited-split": (edited_split, "8b", ["-sm layer -ts 9,8,8,8"]),
    "reserved-card": (reserved_card, "8b", ["=GPU-h100-0 ", "=GPU-h100-2 ", "=GPU-h100-3 "]),
    "profile-then-this-box": (
        profile_then_this_box,
        "8b",
        ["GPU-h100-0,GPU-h100-1,GPU-h100-2,GPU-h100-3 ", "-sm layer"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_launch_starts_the_commands_the_plan_screen_shows(
    case: str, launcher_home: Path, model_factory: Callable[..., Path], tmp_path: Path
) -> None:
    step, size, expected = CASES[case]
    model = model_factory("llama", size, sparse=True)
    port = base_port()
    svc = four_h100_services(port, tmp_path)
    app = LauncherApp(svc, model=model)
    try:
        async with app.run_test(size=(140, 45)) as pilot:
            await pilot.pause(0.3)
            app.action_show("plan")
            await step(app, pilot)
            if step is not edited_split:  # the edit itself re-draws the plan
                app.query_one("#plan-run", Button).press()
            await pilot.pause(0.3)
            shown = shown_commands(app)
            assert len(shown) == (len(expected) if case != "profile-then-this-box" else 1)
            for line, want in zip(shown * len(expected), expected, strict=False):
                assert want in line, (want, line)
            if case == "goal-latency":
                assert "-sm tensor" in shown[0]
            assert f"--port {port + 1} " in shown[0]
            assert not app.query_one(PlanPane).query_one("#plan-launch", Button).disabled
            await pilot.press("l")  # the Launch key
            await pilot.pause(0.2)
            # the Dashboard shows the fleet coming up, and no input keeps the keys
            assert app.query_one(TabbedContent).active == "dashboard" and app.focused is None
            for _ in range(200):
                await pilot.pause(0.1)
                running = [f for f in app.fleets if f.workers]
                if running and all(w.state == "healthy" for w in running[0].workers):
                    break
            running = [f for f in fleets() if f.workers]
            assert len(running) == 1, "the fleet did not come up"
            workers = running[0].workers
            started = []
            for w in workers:
                assert w.pid is not None and pid_alive(w.pid)
                assert proc_argv(w.pid) == w.argv  # the state file says what really runs
                env = proc_env(w.pid)
                started.append(
                    f"CUDA_DEVICE_ORDER={env['CUDA_DEVICE_ORDER']} "
                    f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} {' '.join(w.argv)}"
                )
            assert started == shown
    finally:
        for f in fleets():
            stop(f.name, lambda line: None)


async def test_launch_of_a_box_of_two_models_starts_what_the_card_map_shows(
    launcher_home: Path, model_factory: Callable[..., Path], tmp_path: Path
) -> None:
    first = model_factory("llama", "8b", sparse=True)
    second = model_factory("qwen3", "8b", sparse=True)
    port = base_port()
    svc = four_h100_services(port, tmp_path)
    app = LauncherApp(svc, model=first)
    try:
        async with app.run_test(size=(140, 45)) as pilot:
            await pilot.pause(0.3)
            app.action_show("plan")
            choose(app, users="4")
            app.query_one("#plan-box-add", Button).press()
            app.query_one("#model-pane").open(second)  # type: ignore[attr-defined]
            await pilot.pause(0.3)
            choose(app, users="8")
            app.query_one("#plan-box-add", Button).press()
            await pilot.pause(0.1)
            assert "llama-8b-1-sparse.gguf (4 users)" in str(app.query_one("#plan-box").render())
            app.query_one("#plan-run", Button).press()
            await pilot.pause(0.3)
            detail = str(app.query_one("#plan-detail").render())
            assert "A = llama-8b-1-sparse" in detail and "B = qwen3-8b-1-sparse" in detail
            assert "card 0:" in detail  # the card map
            shown = shown_commands(app)
            assert any(str(first) in line for line in shown)
            assert any(str(second) in line for line in shown)
            ports = [int(line.split("--port ")[1].split()[0]) for line in shown]
            assert ports == list(range(port + 1, port + 1 + len(shown)))
            await pilot.press("l")
            await pilot.pause(0.2)
            for _ in range(200):
                await pilot.pause(0.1)
                running = [f for f in app.fleets if f.workers]
                if running and all(w.state == "healthy" for w in running[0].workers):
                    break
            running = [f for f in fleets() if f.workers]
            assert len(running) == 1, "the fleet did not come up"
            assert [g.name for g in running[0].groups] == [
                "llama-8b-1-sparse",
                "qwen3-8b-1-sparse",
            ]
            started = []
            for w in running[0].workers:
                assert w.pid is not None and proc_argv(w.pid) == w.argv
                env = proc_env(w.pid)
                started.append(
                    f"CUDA_DEVICE_ORDER={env['CUDA_DEVICE_ORDER']} "
                    f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} {' '.join(w.argv)}"
                )
            assert started == shown
    finally:
        for f in fleets():
            stop(f.name, lambda line: None)
