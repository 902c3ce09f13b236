"""The TUI driven with Pilot against fixed GPU boxes and fleet states (no GPU, no Textual
outside tui/)."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Static, TabbedContent

from launcher.gpu.host import HostInfo
from launcher.run.fleet_state import FleetState, WorkerState
from launcher.tui.app import LauncherApp
from launcher.tui.services import Services
from tests import gpu_boxes

HOST = HostInfo("rig", 64 << 30, 60 << 30, 16)


def services(backend: object, fleets: list[FleetState] | None = None) -> Services:
    return Services(
        gpu_backend=lambda: backend,
        host=lambda: HOST,  # type: ignore[arg-type,return-value]
        fleets=lambda: list(fleets or []),
        sample_interval_s=0.05,
    )


async def open_model(app: LauncherApp, pilot: Pilot[None], model: Path) -> None:
    """Open ``model`` on the Model screen, as a user types it, and go to the Plan screen."""
    from textual.widgets import Button, Input

    app.action_show("model")
    await pilot.pause()
    app.query_one("#model-path", Input).value = str(model)
    app.query_one("#model-open", Button).press()
    await pilot.pause()
    app.action_show("plan")


def text(app: LauncherApp, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


async def test_hardware_screen_lists_cards_and_findings() -> None:
    app = LauncherApp(services(gpu_boxes.mixed_desktop_backend()))
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.pause()
        table = app.query_one("#cards", DataTable)
        assert table.row_count == 2
        row = table.get_row("1")
        assert row[1] == "NVIDIA GeForce RTX 2060 SUPER"
        assert "gen2 x1 / gen2 x1 ⚠" in row[3]  # slot limit marked
        findings = text(app, "#findings")
        assert "linked at x1 of x16 lanes" in findings and "drives a display" in findings
        assert "shown" not in app.query_one("#banner").classes
        assert "rig: 16 CPU threads" in text(app, "#host")


async def test_no_gpu_shows_a_banner() -> None:
    app = LauncherApp(services(gpu_boxes.no_driver_backend()))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert "shown" in app.query_one("#banner").classes
        assert "No NVIDIA GPU: no NVIDIA driver is installed" in text(app, "#banner")
        assert app.query_one("#cards", DataTable).row_count == 0


async def test_dashboard_shows_live_cards_and_workers() -> None:
    fleet = FleetState(
        "tiny",
        1234,
        {"url": "http://127.0.0.1:8080", "port": 8080},
        [
            WorkerState(
                "tiny/w0", 1235, 8081, "http://127.0.0.1:8081", [0], "healthy", 0, 41.5, 1, 4
            ),
            WorkerState("tiny/w1", 1236, 8082, "http://127.0.0.1:8082", [1], "restarting", 2),
        ],
    )
    app = LauncherApp(services(gpu_boxes.mixed_desktop_backend(), [fleet]))
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("d")
        assert app.query_one(TabbedContent).active == "dashboard"
        await pilot.pause(0.3)
        workers = app.query_one("#workers", DataTable)
        assert workers.row_count == 2
        first = workers.get_row_at(0)
        assert first[:7] == ["tiny/w0", "", "healthy", "0", "0", "1/4", "41.5"]
        assert workers.get_row_at(1)[2:5] == ["restarting", "1", "2"]
        live = app.query_one("#live-cards", DataTable)
        assert live.row_count == 2
        assert "70%" in live.get_row_at(0)[2] and "mem busy" in live.get_row_at(0)[2]
        endpoint = text(app, "#endpoint")
        assert "tiny: http://127.0.0.1:8080" in endpoint and "41.5 tok/s" in endpoint
        await pilot.press("h")
        assert app.query_one(TabbedContent).active == "hardware"


async def test_dashboard_shows_the_cards_of_a_second_box() -> None:
    """A fleet with a group on another box: that box's cards, as its agent sent them over
    SSH, are rows of the live cards table after this box's own."""
    fleet = FleetState(
        "pair",
        1234,
        {"url": "http://127.0.0.1:8080", "port": 8080},
        remote_cards=[
            {
                "host": "lan-box",
                "index": 0,
                "name": "NVIDIA GeForce RTX 5060 Ti",
                "memory_total_bytes": 16 << 30,
                "time_s": 1.0,
                "memory_used_bytes": 6 << 30,
                "memory_busy_pct": 40.0,
                "temperature_c": 55,
                "power_draw_w": 120.0,
            }
        ],
    )
    app = LauncherApp(services(gpu_boxes.mixed_desktop_backend(), [fleet]))
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("d")
        await pilot.pause(0.3)
        live = app.query_one("#live-cards", DataTable)
        assert live.row_count == 3  # two cards here, one there
        row = live.get_row_at(2)
        assert row[0] == "lan-box:0" and "6.0 GiB" in row[1] and "40%" in row[2]
        assert row[4:] == ["55°C", "120 W"]
    # a main box without cards shows the other box's all the same
    app = LauncherApp(services(gpu_boxes.no_driver_backend(), [fleet]))
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("d")
        await pilot.pause(0.3)
        live = app.query_one("#live-cards", DataTable)
        assert [live.get_row_at(i)[0] for i in range(live.row_count)] == ["lan-box:0"]


async def test_main_flow_on_a_real_cpu_server(
    model_factory: object,
    llama_server: object,
    launcher_home: object,
    monkeypatch: object,
    tmp_path: object,
) -> None:
    """Pick a synthetic model, plan, launch cpu:2, send a request, see its tokens/s on the
    dashboard, stop the fleet: no llama-server left."""
    import json
    import threading
    import urllib.request

    from textual.widgets import Button, Input, Select

    from launcher.run.fleet_state import pid_alive

    monkeypatch.setenv("LLAMA_SERVER", str(llama_server))  # type: ignore[attr-defined]
    model: Path = model_factory("llama")  # type: ignore[operator]
    svc = services(gpu_boxes.no_driver_backend())
    svc.fleets = Services().fleets
    svc.launch_fleet = Services().launch_fleet
    svc.stop_fleet = Services().stop_fleet
    svc.server = Services().server
    svc.models_dir = tmp_path  # type: ignore[assignment]
    svc.sample_interval_s = 0.5
    app = LauncherApp(svc)
    async with app.run_test(size=(140, 45)) as pilot:
        await open_model(app, pilot, model)
        await pilot.pause()
        app.query_one("#plan-users", Input).value = "2"
        app.query_one("#plan-ctx", Input).value = "512"
        app.query_one("#plan-layout", Select).value = "cpu:2"
        app.query_one("#plan-run", Button).press()
        await pilot.pause()
        await pilot.pause()
        assert "2 workers (1/1 slots)" in str(app.query_one("#plan-detail").render())
        assert not app.query_one("#plan-launch", Button).disabled
        app.query_one("#plan-launch", Button).press()
        await pilot.pause()
        workers = app.query_one("#workers", DataTable)
        for _ in range(240):
            await pilot.pause(0.25)
            if workers.row_count == 2 and all(
                workers.get_row_at(i)[2] == "healthy" for i in range(2)
            ):
                break
        assert workers.row_count == 2
        fleet = app.fleets[0]
        assert fleet.router is not None
        pids = [w.pid for w in fleet.workers]

        def request() -> None:
            body = json.dumps({"prompt": "Hi", "n_predict": 1500, "ignore_eos": True}).encode()
            req = urllib.request.Request(
                f"{fleet.router['url']}/completion",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            urllib.request.urlopen(req, timeout=120).read()

        sender = threading.Thread(target=request)
        sender.start()
        seen = 0.0
        for _ in range(80):
            await pilot.pause(0.25)
            rows = [workers.get_row_at(i) for i in range(workers.row_count)]
            seen = max([seen] + [float(r[6]) for r in rows])
            if seen > 0:
                break
        sender.join()
        assert seen > 0, "the dashboard never showed tokens/s"
        assert "Fleet total" in str(app.query_one("#endpoint").render())
        app.query_one("#fleet-stop", Button).press()
        await pilot.pause()
        for _ in range(120):
            await pilot.pause(0.25)
            if not app.fleets:
                break
        assert not app.fleets
    assert not any(pid_alive(p) for p in pids)


async def test_plan_for_a_profile_reserve_a_card_and_edit_the_split(
    model_factory: object, tmp_path: object
) -> None:

    from textual.widgets import Button, Input, Select

    from launcher.llamacpp.probe import ServerTarget
    from launcher.profiles import hardware

    svc = services(gpu_boxes.four_h100_backend())
    svc.server = lambda: ServerTarget("llama-server")
    svc.models_dir = tmp_path  # type: ignore[assignment]
    svc.model_places = lambda: []
    model: Path = model_factory("llama", "8b", sparse=True)  # type: ignore[operator]
    app = LauncherApp(svc, model=model)
    async with app.run_test(size=(140, 45)) as pilot:
        await pilot.pause(0.3)
        # reserve card 1: plans stop using it
        cards = app.query_one("#cards", DataTable)
        cards.move_cursor(row=1)
        app.query_one("#card-reserve", Button).press()
        await pilot.pause()
        assert "[reserved]" in cards.get_row_at(1)[1]
        assert app.inventory.local.cards[1].reserved
        # plan for cards I don't own: the six risers profile
        path = str(hardware.resolve("six-2060s-risers"))
        app.query_one("#hardware-source", Select).value = path
        await pilot.pause(0.2)
        assert app.query_one("#cards", DataTable).row_count == 6
        assert "Planning for hardware profile:six-2060s-risers" in str(
            app.query_one("#banner").render()
        )
        app.action_show("plan")
        app.query_one("#plan-users", Input).value = "12"
        app.query_one("#plan-layout", Select).value = "pooled-layer"
        app.query_one("#plan-run", Button).press()
        await pilot.pause(0.2)
        before = str(app.query_one("#plan-detail").render())
        assert "card 5:" in before and "-sm layer -ts " in before
        split = app.query_one("#plan-split", Input)
        assert not split.disabled
        split.value = "28,1,1,1,1,1"  # almost everything on card 0: it cannot hold it
        await pilot.pause(0.2)
        after = str(app.query_one("#plan-detail").render())
        assert "(split edited)" in after and "-ts 28,1,1,1,1,1" in after
        assert after != before
        assert app.query_one("#plan-launch", Button).disabled  # card 0 would not fit


async def test_profiles_load_and_delete_with_confirmation(
    model_factory: object, launcher_home: object, tmp_path: object
) -> None:

    from textual.widgets import Button, Input, Select

    from launcher.profiles import launch
    from launcher.spec.fleet import FleetSpec, GroupSpec

    model: Path = model_factory("llama")  # type: ignore[operator]
    saved = launch.save_launch_profile(
        FleetSpec("mine", (GroupSpec(name="m", model=str(model), layout="cpu:1", users=2),))
    )
    svc = services(gpu_boxes.no_driver_backend())
    svc.model_places = lambda: []
    svc.models_dir = tmp_path  # type: ignore[assignment]
    app = LauncherApp(svc)
    async with app.run_test(size=(140, 40)) as pilot:
        app.action_show("profiles")
        await pilot.pause()
        table = app.query_one("#profiles-table", DataTable)
        assert table.get_row_at(0)[1:4] == ["mine", "m", "user"]  # its one group: m
        table.move_cursor(row=0)
        app.query_one("#profile-load", Button).press()
        for _ in range(30):  # the model's message travels up the panes: on a busy box, a while
            await pilot.pause(0.1)
            if str(model) in str(app.query_one("#plan-model").render()):
                break
        assert app.query_one(TabbedContent).active == "plan"
        assert str(model) in str(app.query_one("#plan-model").render())
        # the profile's workload and layout come with it
        assert app.query_one("#plan-users", Input).value == "2"
        assert app.query_one("#plan-layout", Select).value == "cpu:1"
        app.action_show("profiles")
        await pilot.pause()
        table.move_cursor(row=0)
        app.query_one("#profile-delete", Button).press()
        await pilot.pause()
        app.screen.query_one("#no", Button).press()  # keep it
        await pilot.pause()
        assert saved.exists()
        app.query_one("#profile-delete", Button).press()
        await pilot.pause()
        app.screen.query_one("#yes", Button).press()
        await pilot.pause()
        assert not saved.exists()
        assert table.get_row_at(0)[3] == "example"  # shipped examples cannot be deleted


async def test_quit_asks_about_fleets_started_here() -> None:
    from textual.widgets import Button

    from launcher.tui.app import QuitScreen

    fleet = FleetState("mine", 4321, None, [])
    stopped: list[str] = []
    svc = services(gpu_boxes.no_driver_backend(), [fleet])
    svc.model_places = lambda: []
    svc.stop_fleet = stopped.append
    app = LauncherApp(svc)
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.pause(0.2)
        app.launched.add("mine")
        await app.action_quit()
        await pilot.pause()
        await pilot.press("escape")  # Esc stays too
        await pilot.pause()
        assert app.is_running and stopped == [] and not isinstance(app.screen, QuitScreen)
        await app.action_quit()
        await pilot.pause()
        app.screen.query_one("#cancel", Button).press()  # stay
        await pilot.pause()
        assert app.is_running and stopped == []
        await app.action_quit()
        await pilot.pause()
        app.screen.query_one("#stop", Button).press()
        await pilot.pause()
    assert stopped == ["mine"]


async def test_palette_offers_the_screens() -> None:
    app = LauncherApp(services(gpu_boxes.no_driver_backend()))
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.pause()
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert {
            "Show Hardware",
            "Show Model",
            "Show Plan",
            "Show Dashboard",
            "Show Profiles",
        } <= set(titles)
        next(c for c in app.get_system_commands(app.screen) if c.title == "Show Plan").callback()
        await pilot.pause()
        assert app.query_one(TabbedContent).active == "plan"


@pytest.mark.parametrize(
    ("defaults", "shell"),
    [(["--cache-ram", "0"], {}), ([], {}), (["--cache-ram", "0"], {"LLAMA_ARG_TIMEOUT": "900"})],
)
async def test_plan_screen_plots_this_boxs_bench_results(
    model_factory: object,
    launcher_home: object,
    tmp_path: object,
    monkeypatch: pytest.MonkeyPatch,
    defaults: list[str],
    shell: dict[str, str],
) -> None:

    from launcher.bench import results
    from launcher.bench.results import BenchRun
    from launcher.llamacpp.probe import ServerTarget
    from launcher.model.spec import read_model_spec

    model: Path = model_factory("llama")  # type: ignore[operator]
    key = results.model_key(read_model_spec(model))
    results.append(
        [
            BenchRun(
                "cpu:1",
                u,
                4,
                64,
                tok,
                10,
                1,
                1,
                1,
                1,
                0,
                100,
                64,
                hardware_key="nvml",
                model_key=key,
                server_defaults=defaults,  # [] as written before the prompt cache went off
            )
            for u, tok in ((1, 120.0), (4, 300.0), (4, 200.0))  # two rounds at 4 users
        ]
    )
    for name, value in shell.items():
        monkeypatch.setenv(name, value)
    svc = services(gpu_boxes.no_driver_backend())
    svc.server = lambda: ServerTarget("llama-server")
    svc.model_places = lambda: []
    svc.models_dir = tmp_path  # type: ignore[assignment]
    app = LauncherApp(svc, model=model)
    async with app.run_test(size=(140, 45)) as pilot:
        await pilot.pause(0.3)
        text = str(app.query_one("#plan-bench").render())
        if shell:  # rows measured without a variable this shell would give the workers
            assert "Workers started from this shell also take LLAMA_ARG_TIMEOUT=900" in text
            assert "Measured on this box" not in text
            return
        if not defaults:
            assert "3 bench result(s) of this model here were measured with llama.cpp's" in text
            return
        assert "Measured on this box" in text and "* cpu:1" in text
        assert "250" in text and "300" not in text  # the rounds' mean, as plan uses


async def test_a_model_that_cannot_be_read_leaves_nothing_to_launch(
    model_factory: object, tmp_path: object
) -> None:

    from textual.widgets import Button

    from launcher.tui.screens.model import ModelPane

    svc = services(gpu_boxes.no_driver_backend())
    svc.model_places = lambda: []
    svc.models_dir = tmp_path  # type: ignore[assignment]
    model: Path = model_factory("llama")  # type: ignore[operator]
    app = LauncherApp(svc, model=model)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.3)
        assert not app.query_one("#plan-launch", Button).disabled
        broken = tmp_path / "broken.gguf"  # type: ignore[operator]
        broken.write_bytes(b"not a gguf")
        app.query_one(ModelPane).open(broken)
        await pilot.pause(0.2)
        assert app.query_one("#plan-launch", Button).disabled
        assert "No model" in text(app, "#plan-model")


async def test_save_as_profile_keeps_the_layout_on_screen(
    model_factory: object, tmp_path: object, launcher_home: object
) -> None:

    from textual.widgets import Button, Input, Select

    from launcher.profiles import hardware, launch

    svc = services(gpu_boxes.four_h100_backend())
    svc.model_places = lambda: []
    svc.models_dir = tmp_path  # type: ignore[assignment]
    svc.router_port = lambda: 9100
    model: Path = model_factory("llama", "8b", sparse=True)  # type: ignore[operator]
    app = LauncherApp(svc, model=model)
    async with app.run_test(size=(140, 45)) as pilot:
        await pilot.pause(0.3)
        # a plan for cards this box does not have can be saved, not launched
        app.query_one("#hardware-source", Select).value = str(hardware.resolve("six-2060s-risers"))
        await pilot.pause(0.2)
        app.query_one("#plan-users", Input).value = "12"
        app.query_one("#plan-layout", Select).value = "pooled-layer"
        app.query_one("#plan-run", Button).press()
        await pilot.pause(0.2)
        app.query_one("#plan-profile-name", Input).value = "risers"
        app.query_one("#plan-save", Button).press()
        for _ in range(30):
            await pilot.pause(0.1)
            if "Saved launch profile" in text(app, "#plan-status"):
                break
        assert "Saved launch profile 'risers'" in text(app, "#plan-status")
    spec = launch.load_launch_profile(launch.resolve("risers"))
    (group,) = spec.groups
    assert spec.hardware == "six-2060s-risers" and spec.router.port == 9100
    assert group.layout == "pooled-layer" and group.users == 12 and len(group.tensor_split) == 6


async def test_measure_button_measures_this_box_and_plans_again(
    model_factory: object, llama_server: object, launcher_home: object, monkeypatch: object
) -> None:
    """The Plan screen's Measure runs plan --measure's three llama-server runs (real, on the
    CPU), shows their progress, then plans again with what it measured."""

    from textual.widgets import Button, OptionList

    from launcher.plan.fits import ERROR_PCT

    monkeypatch.setenv("LLAMA_SERVER", str(llama_server))  # type: ignore[attr-defined]
    model: Path = model_factory("llama")  # type: ignore[operator]
    svc = services(gpu_boxes.no_driver_backend())
    app = LauncherApp(svc)
    async with app.run_test(size=(100, 40)) as pilot:
        await open_model(app, pilot, model)
        app.query_one("#plan-run", Button).press()
        await pilot.pause()
        first = str(app.query_one("#plan-layouts", OptionList).get_option_at_index(0).prompt)
        assert first.endswith(f"±{ERROR_PCT['cpu']:.0f}%")  # a CPU never measured
        app.query_one("#plan-measure", Button).press()
        seen = set()
        for _ in range(480):
            await pilot.pause(0.25)
            status = text(app, "#plan-status")
            seen.add(status.split(",")[0])
            if status.startswith("Measured this box"):
                break
        assert status.startswith("Measured this box"), status
        assert any(s.startswith("Measuring the CPU") for s in seen)
        assert not app.query_one("#plan-measure", Button).disabled
        again = str(app.query_one("#plan-layouts", OptionList).get_option_at_index(0).prompt)
        assert again.endswith(f"±{ERROR_PCT['cpu-measured']:.0f}%")
        assert "measured here by plan --measure" in str(app.query_one("#plan-detail").render())
