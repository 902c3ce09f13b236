"""Fleets on real CPU llama-servers: up, status, restarts, supervisor death, down, profiles."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from launcher.errors import LauncherError
from launcher.profiles import launch
from launcher.run.fleet_state import pid_alive
from launcher.spec.fleet import FleetSpec, GroupSpec, RemoteMember, RouterSpec, ServerSettings
from tests.conftest import free_port, run_cli


def status(env: dict[str, str]) -> dict[str, object]:
    result = run_cli("status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def workers(env: dict[str, str]) -> list[dict[str, object]]:
    fleets = status(env)["fleets"]
    assert isinstance(fleets, list) and len(fleets) == 1
    return list(fleets[0]["workers"])


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def base_port() -> int:
    """A router port whose next few ports are free too."""
    for _ in range(50):
        port = free_port()
        if port < 60000 and all(_free(port + i) for i in range(1, 5)):
            return port
    raise AssertionError("no run of free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def fleet_env(llama_server: Path, launcher_home: Path) -> Iterator[dict[str, str]]:
    """Environment for CLI calls; any fleet left running is stopped afterwards."""
    env = {"LLAMA_SERVER": str(llama_server), "LLAMA_LAUNCHER_HOME": str(launcher_home)}
    yield env
    run_cli("down", env=env, timeout=60)


def up_cpu2(model: Path, env: dict[str, str], port: int, *extra: str) -> str:
    result = run_cli(
        "up",
        str(model),
        "--layout",
        "cpu:2",
        "--users",
        "4",
        "--ctx",
        "512",
        "--port",
        str(port),
        "--detach",
        *extra,
        env=env,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_up_status_restart_and_down(
    model_factory: Callable[..., Path], fleet_env: dict[str, str]
) -> None:
    port = base_port()
    said = up_cpu2(model_factory("llama"), fleet_env, port)
    # "up" only once the router listens, and where
    assert f"Fleet llama-tiny-1 is up on http://127.0.0.1:{port};" in said
    ws = workers(fleet_env)
    assert [w["state"] for w in ws] == ["healthy", "healthy"]
    assert [w["id"] for w in ws] == ["llama-tiny-1/w0", "llama-tiny-1/w1"]
    assert [w["port"] for w in ws] == [port + 1, port + 2]
    assert all(w["slots_total"] == 2 for w in ws)
    fleet = status(fleet_env)["fleets"][0]  # type: ignore[index]
    assert pid_alive(fleet["supervisor_pid"]) and "router" in fleet
    victim = int(ws[1]["pid"])  # type: ignore[arg-type]
    os.kill(victim, signal.SIGKILL)

    def back() -> bool:
        w = workers(fleet_env)[1]
        return w["state"] == "healthy" and w["pid"] != victim

    wait_for(back, 30, "the killed worker to be restarted and healthy")
    assert workers(fleet_env)[1]["restarts"] == 1
    pids = [int(w["pid"]) for w in workers(fleet_env)]  # type: ignore[arg-type]
    down = run_cli("down", env=fleet_env, timeout=60)
    assert down.returncode == 0 and "stopped" in down.stdout
    wait_for(lambda: not any(pid_alive(p) for p in pids), 10, "the workers to exit")
    assert status(fleet_env)["fleets"] == []


def test_killing_the_supervisor_kills_its_workers(
    model_factory: Callable[..., Path], fleet_env: dict[str, str]
) -> None:
    up_cpu2(model_factory("llama"), fleet_env, base_port())
    fleet = status(fleet_env)["fleets"][0]  # type: ignore[index]
    pids = [int(w["pid"]) for w in fleet["workers"]]
    os.kill(int(fleet["supervisor_pid"]), signal.SIGKILL)
    wait_for(lambda: not any(pid_alive(p) for p in pids), 10, "workers to die with the supervisor")
    ws = workers(fleet_env)
    assert [w["state"] for w in ws] == ["stopped", "stopped"]  # stale state reads as stopped


def test_taken_port_moves_the_worker(
    model_factory: Callable[..., Path], fleet_env: dict[str, str]
) -> None:
    port = base_port()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port + 1))
        blocker.listen()
        up_cpu2(model_factory("llama"), fleet_env, port)
        log = Path(fleet_env["LLAMA_LAUNCHER_HOME"]) / "state/logs/llama-tiny-1/supervisor.log"
        text = log.read_text()
        assert f"Port {port + 1} is in use; llama-tiny-1/w0 moves to port" in text
        ws = workers(fleet_env)
        assert ws[0]["port"] != port + 1 and ws[0]["state"] == "healthy"
        with urllib.request.urlopen(f"{ws[0]['url']}/health", timeout=5) as resp:
            assert resp.status == 200


def test_missing_model_and_bad_profile_are_one_sentence(
    tmp_path: Path, fleet_env: dict[str, str]
) -> None:
    missing = run_cli("up", str(tmp_path / "nope.gguf"), env=fleet_env)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"llama-launcher: {tmp_path / 'nope.gguf'} does not exist; check the path to the model "
        "file."
    ]
    bad = tmp_path / "bad.toml"
    bad.write_text('format = 1\nmodel = "x.gguf"\n[layout]\nkind = "sideways"\n')
    result = run_cli("up", str(bad), env=fleet_env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "layout.kind = 'sideways': must be auto, per-card" in result.stderr
    lan = tmp_path / "lan.toml"
    lan.write_text('format = 1\nmodel = "x.gguf"\n[router]\nhost = "0.0.0.0"\n')
    result = run_cli("up", str(lan), env=fleet_env)
    assert "router.api_key_env must name the variable" in result.stderr


def test_a_worker_that_dies_while_loading_is_reported(
    model_factory: Callable[..., Path], tmp_path: Path, fleet_env: dict[str, str]
) -> None:
    profile = tmp_path / "bad-flag.toml"
    profile.write_text(
        f'format = 1\nname = "badflag"\nmodel = "{model_factory("llama")}"\n'
        '[layout]\nkind = "cpu:1"\n[router]\nport = '
        + str(base_port())
        + '\n[server]\nextra_args = ["--cache-ram", "64", "--rope-scaling", "sideways"]\n'
    )
    result = run_cli("up", str(profile), env=fleet_env, timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert (
        "Extra llama-server flags from the profile: --cache-ram 64 --rope-scaling sideways" in out
    )
    # the profile's --cache-ram replaced the launcher's --cache-ram 0 instead of repeating it
    log = (Path(fleet_env["LLAMA_LAUNCHER_HOME"]) / "state/logs/badflag/w0.log").read_text()
    assert "error while handling argument" in log and "specified multiple times" not in log
    assert "badflag/w0 exited with code" in out and "while loading" in out
    tail = out.split("while loading")[1]  # the log tail says what was wrong
    assert 'error while handling argument "--rope-scaling": invalid value' in tail
    assert "Fleet badflag did not start" in out
    assert status(fleet_env)["fleets"] == []


def test_profile_round_trips(tmp_path: Path, launcher_home: Path) -> None:
    group = GroupSpec(
        name="m",
        model="/models/m.gguf",
        layout="per-card",
        aliases=("gpt-4o",),
        cards=("GPU-a", "GPU-b"),
        pci_bus_ids=("0000:01:00.0", "0000:02:00.0"),
        users=8,
        ctx=2048,
        goal="latency",
        server=ServerSettings(kv_type="q8_0", extra_args=("--temp", "0.7")),
    )
    profile = FleetSpec(
        "rt",
        (group,),
        RouterSpec(
            port=9000,
            default_model="m",
            members=(RemoteMember("http://192.168.1.20:8080", 0.5, "LAN_KEY"),),
        ),
    )
    path = launch.save_launch_profile(profile)
    loaded = launch.load_launch_profile(path)
    assert loaded == replace(profile, source=str(path))
    before = path.read_text()
    with pytest.raises(Exception, match="already exists"):
        launch.save_launch_profile(profile)
    assert path.read_text() == before
    launch.save_launch_profile(loaded, force=True)
    assert path.read_text() == before


def test_a_format_1_profile_loads_as_a_fleet_of_one_group(tmp_path: Path) -> None:
    old = tmp_path / "old.toml"
    old.write_text(
        'format = 1\nname = "h100-8b"\nmodel = "/m/llama-8b-00001-of-00002.gguf"\n'
        'llama_server = "/opt/llama-server"\n'
        '[workload]\nusers = 64\nctx = 2048\nkv_type = "q8_0"\ngoal = "latency"\n'
        '[layout]\nkind = "pooled-layer"\ncards = ["GPU-a", "GPU-b"]\ntensor_split = [16, 17]\n'
        '[server]\nflash_attn = true\nextra_args = ["--temp", "0.7"]\n'
        "[router]\nport = 9000\n"
    )
    spec = launch.load_launch_profile(old)
    assert spec.name == "h100-8b" and len(spec.groups) == 1
    (group,) = spec.groups
    assert group.name == "llama-8b" and group.model == "/m/llama-8b-00001-of-00002.gguf"
    assert (group.layout, group.cards, group.tensor_split) == (
        "pooled-layer", ("GPU-a", "GPU-b"), (16, 17),
    )  # fmt: skip
    assert (group.users, group.ctx, group.goal) == (64, 2048, "latency")
    assert group.server == ServerSettings(
        kv_type="q8_0", extra_args=("--temp", "0.7"), llama_server="/opt/llama-server"
    )
    assert spec.router.port == 9000 and not group.planned


def test_format_2_names_groups_and_checks_them(tmp_path: Path) -> None:
    two = tmp_path / "two.toml"
    two.write_text(
        'format = 2\n[[groups]]\nmodel = "/m/qwen-32b.gguf"\n'
        '[[groups]]\nmodel = "/m/qwen-32b.gguf"\nkind = "embedding"\n'
    )
    spec = launch.load_launch_profile(two)
    assert [g.name for g in spec.groups] == ["qwen-32b", "qwen-32b-2"]
    assert spec.name == "qwen-32b" and spec.groups[1].kind == "embedding"
    bad = tmp_path / "bad.toml"
    for body, message in (
        ('[[groups]]\nname = "../x"\nmodel = "/m.gguf"\n', "groups[0].name = '../x'"),
        ('[[groups]]\nmodel = "/m.gguf"\nkind = "chat"\n', "groups[0].kind = 'chat'"),
        ('[router]\ndefault_model = "nope"\n[[groups]]\nmodel = "/m.gguf"\n', "nope"),
        ("", "groups is missing"),
    ):
        bad.write_text("format = 2\n" + body)
        with pytest.raises(LauncherError, match=re.escape(message)):
            launch.load_launch_profile(bad)


def test_profile_save_and_show_on_this_box(
    model_factory: Callable[..., Path], fleet_env: dict[str, str]
) -> None:
    model = model_factory("llama")
    saved = run_cli("profile", "save", "mine", "--model", str(model), "--users", "2", env=fleet_env)
    assert saved.returncode == 0, saved.stderr
    shown = run_cli("profile", "show", "mine", env=fleet_env)
    assert shown.returncode == 0 and 'layout = "cpu:1"' in shown.stdout
    assert "format = 2" in shown.stdout and "users = 2" in shown.stdout
    listed = run_cli("profile", "list", env=fleet_env)
    assert "mine" in listed.stdout and "six-2060s-risers" in listed.stdout
    unit = run_cli("systemd", "mine", env=fleet_env)
    assert unit.returncode == 0, unit.stderr
    path = (
        Path(fleet_env["LLAMA_LAUNCHER_HOME"]) / "config/systemd/user/llama-launcher-mine.service"
    )
    text = path.read_text()
    assert "ExecStart=" in text and " up " in text and "Restart=on-failure" in text
    assert "systemctl --user enable --now llama-launcher-mine.service" in unit.stdout


def test_load_counts_match_the_workers_metrics(
    model_factory: Callable[..., Path], fleet_env: dict[str, str]
) -> None:
    port = base_port()
    up_cpu2(model_factory("llama"), fleet_env, port)
    urls = [str(w["url"]) for w in workers(fleet_env)]
    result = run_cli(
        "load", *urls, "-c", "4", "-n", "8", "--tokens", "24", "--json", env=fleet_env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["errors"] == 0 and data["requests"] == 8 and data["tokens"] == 8 * 24
    served = 0
    for url in urls:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("llamacpp:tokens_predicted_total"):
                    served += int(float(line.split()[-1]))
    assert served == data["tokens"]
    assert data["ttft_ms_p50"] is not None and data["latency_ms_p95"] >= data["latency_ms_p50"]


def test_load_against_nothing_is_one_sentence(fleet_env: dict[str, str]) -> None:
    result = run_cli("load", f"http://127.0.0.1:{free_port()}", "-n", "2", env=fleet_env)
    assert result.returncode == 1
    assert "All 2 requests failed" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["8b-per-card", "70b-pooled", "tiny-cpu", "lan-router"])
def test_shipped_launch_profiles_load(name: str) -> None:
    profile = launch.load_launch_profile(launch.resolve(name))
    assert profile.name == name and profile.groups[0].model.endswith(".gguf")


def test_a_profile_whose_card_is_gone_is_reported(
    model_factory: Callable[..., Path], tmp_path: Path, fleet_env: dict[str, str]
) -> None:
    from tests import gpu_boxes

    backend = gpu_boxes.save(gpu_boxes.four_h100_backend(), tmp_path / "box.json")
    profile = tmp_path / "old.toml"
    profile.write_text(
        f'format = 1\nname = "old"\nmodel = "{model_factory("llama")}"\n'
        '[layout]\nkind = "per-card"\ncards = ["GPU-h100-0", "GPU-gone"]\n'
    )
    env = {**fleet_env, "LLAMA_LAUNCHER_GPU_BACKEND": backend}
    result = run_cli("up", str(profile), env=env)
    assert result.returncode == 2
    assert "uses card(s) GPU-gone that are not in this box" in result.stderr
    assert "--replan" in result.stderr and "Traceback" not in result.stderr


def test_router_port_in_use_is_one_sentence(
    model_factory: Callable[..., Path], fleet_env: dict[str, str]
) -> None:
    port = base_port()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        result = run_cli(
            "up",
            str(model_factory("llama")),
            "--layout",
            "cpu:1",
            "--port",
            str(port),
            env=fleet_env,
            timeout=60,
        )
    assert result.returncode == 2
    assert f"The router's port {port} on 127.0.0.1 is in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert status(fleet_env)["fleets"] == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_foreground_fleet_stops_cleanly_and_logs_to_stdout(
    sig: signal.Signals, model_factory: Callable[..., Path], fleet_env: dict[str, str]
) -> None:
    import subprocess
    import sys

    port = base_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launcher",
            "up",
            str(model_factory("llama")),
            "--layout",
            "cpu:1",
            "--users",
            "1",
            "--ctx",
            "512",
            "--port",
            str(port),
        ],
        env={**os.environ, **fleet_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: (
                status(fleet_env)["fleets"] != [] and workers(fleet_env)[0]["state"] == "healthy"
            ),
            60,
            "the fleet to be up",
        )
        pid = int(workers(fleet_env)[0]["pid"])  # type: ignore[arg-type]
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "[llama-tiny-1/w0] " in out  # worker logs on stdout, prefixed
    assert "Fleet llama-tiny-1 stopped." in err
    assert not pid_alive(pid)
    assert status(fleet_env)["fleets"] == []


def test_lan_fleet_answers_with_the_key_its_workers_do_not_inherit(
    model_factory: Callable[..., Path], fleet_env: dict[str, str], tmp_path: Path
) -> None:
    """LLAMA_API_KEY, the documented name of the router's key, is also llama-server's
    --api-key: workers that took it answered the router 401."""
    port = base_port()
    profile = tmp_path / "lan.toml"
    profile.write_text(
        f'format = 1\nname = "lan"\nmodel = "{model_factory("llama")}"\n'
        '[workload]\nusers = 2\nctx = 512\n[layout]\nkind = "cpu:1"\n'
        f'[router]\nhost = "0.0.0.0"\nport = {port}\napi_key_env = "LLAMA_API_KEY"\n'
    )
    env = {**fleet_env, "LLAMA_API_KEY": "s3cret"}
    result = run_cli("up", str(profile), "--detach", env=env, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})

    def ask(key: str | None) -> int:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions", body.encode(), headers
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                assert json.load(response)["choices"]
                return int(response.status)
        except urllib.error.HTTPError as err:
            return err.code

    assert ask(None) == 401  # the router asks for the key
    assert ask("s3cret") == 200  # and the worker behind it does not
    [worker] = workers(fleet_env)
    assert worker["slots_total"] == 2  # the router and status read the worker's /slots


def test_up_detach_runs_what_plan_printed_and_replan_says_what_changed(
    model_factory: Callable[..., Path], tmp_path: Path, fleet_env: dict[str, str]
) -> None:
    """On a fixed 4x H100 box with the fake llama-server (a CPU build cannot load a GPU plan):
    the workers `up --detach` starts run exactly the commands `plan --json` printed for the
    same options, and a profile whose card is gone, started with --replan, says what changed."""
    from tests import gpu_boxes

    fake = Path(__file__).with_name("fake_llama_server.py")
    backend = gpu_boxes.save(gpu_boxes.four_h100_backend(), tmp_path / "box.json")
    env = {
        **fleet_env,
        "LLAMA_LAUNCHER_GPU_BACKEND": backend,
        "LLAMA_SERVER": str(fake),
        "FAKE_LLAMA_SERVER_REAL": fleet_env["LLAMA_SERVER"],
    }
    model = model_factory("llama", "8b", sparse=True)
    port = base_port()
    options = ["--layout", "pooled-layer", "--users", "8", "--ctx", "1024", "--kv-type", "q8_0"]
    options += ["--port", str(port)]
    planned = run_cli("plan", str(model), *options, "--json", env=env)
    assert planned.returncode == 0, planned.stderr
    (process,) = json.loads(planned.stdout)["layouts"][0]["processes"]
    assert "-ctk" in process["argv"] and "q8_0" in process["argv"]
    up = run_cli("up", str(model), *options, "--detach", env=env, timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    (worker,) = workers(env)
    assert worker["argv"] == process["argv"]
    assert worker["cards"] == process["cards"] == [0, 1, 2, 3]
    run_cli("down", env=env, timeout=60)

    profile = tmp_path / "moved.toml"
    profile.write_text(
        f'format = 2\nname = "moved"\n[router]\nport = {port}\n[[groups]]\nname = "m"\n'
        f'model = "{model}"\nlayout = "pooled-layer"\ncards = ["GPU-h100-0", "GPU-gone"]\n'
        "tensor_split = [16, 17]\nusers = 4\nctx = 1024\n"
    )
    gone = run_cli("up", str(profile), "--detach", env=env)
    assert gone.returncode == 2 and "GPU-gone that are not in this box" in gone.stderr
    replanned = run_cli("up", str(profile), "--replan", "--detach", env=env, timeout=120)
    assert replanned.returncode == 0, replanned.stdout + replanned.stderr
    assert (
        "Replanned m: cards GPU-h100-0,GPU-gone -> GPU-h100-0,GPU-h100-1,GPU-h100-2,GPU-h100-3"
        in replanned.stdout
    )
    assert "tensor_split 16,17 ->" in replanned.stdout
    (worker,) = workers(env)
    assert worker["cards"] == [0, 1, 2, 3]


def test_profile_save_keeps_the_plan_and_its_options(
    model_factory: Callable[..., Path], tmp_path: Path, fleet_env: dict[str, str]
) -> None:
    # on a fixed 4x H100 box: the cards left by --exclude-cards, the KV type and the users
    # are what the profile keeps, and `up` of that profile would run the same plan
    from tests import gpu_boxes

    backend = gpu_boxes.save(gpu_boxes.four_h100_backend(), tmp_path / "box.json")
    env = {**fleet_env, "LLAMA_LAUNCHER_GPU_BACKEND": backend}
    model = model_factory("llama", "8b", sparse=True)
    options = ["--layout", "pooled-layer", "--exclude-cards", "3", "--kv-type", "q8_0"]
    saved = run_cli("profile", "save", "three", "--model", str(model), *options, env=env)
    assert saved.returncode == 0, saved.stderr
    spec = launch.load_launch_profile(launch.resolve("three"))
    (group,) = spec.groups
    assert group.cards == ("GPU-h100-0", "GPU-h100-1", "GPU-h100-2")
    assert group.layout == "pooled-layer" and group.server.kv_type == "q8_0"
    assert group.users == 12 and len(group.tensor_split) == 3  # 4 users per card
    planned = run_cli("plan", str(model), *options, "--json", env=env)
    layout = json.loads(planned.stdout)["layouts"][0]
    assert tuple(layout["tensor_split"]) == group.tensor_split


def test_a_detached_fleet_that_fails_shows_this_runs_log_only(
    model_factory: Callable[..., Path], tmp_path: Path, fleet_env: dict[str, str]
) -> None:
    model = model_factory("llama")
    port = base_port()
    up_cpu2(model, fleet_env, port, "--name", "again")
    run_cli("down", "again", env=fleet_env, timeout=60)
    profile = tmp_path / "again.toml"
    profile.write_text(
        f'format = 2\nname = "again"\n[router]\nport = {port}\n[[groups]]\nmodel = "{model}"\n'
        'layout = "cpu:1"\n[groups.server]\nextra_args = ["--rope-scaling", "sideways"]\n'
    )
    failed = run_cli("up", str(profile), "--detach", env=fleet_env, timeout=120)
    out = failed.stdout + failed.stderr
    assert failed.returncode == 1 and "Fleet again did not start" in out
    tail = out.split("Fleet again did not start")[1]
    assert "--rope-scaling" in tail and "is up" not in tail  # not the earlier run's lines
