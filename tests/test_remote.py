"""A fleet over two boxes: a real sshd on 127.0.0.1 is the second box, with its own
LLAMA_LAUNCHER_HOME; real llama-servers on both sides (docs/remote.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from launcher.errors import LauncherError
from launcher.profiles.hardware import load_hardware_profile, parse_link

from . import sshbox
from .conftest import free_port, run_cli

needs_sshd = pytest.mark.skipif(
    not sshbox.available(), reason="no OpenSSH server here (.ci/run installs openssh-server)"
)
LAUNCHER = str(Path(sys.executable).parent / "llama-launcher")


def _up(
    tmp_path: Path,
    ssh: str,
    model: Path,
    llama_server: Path,
    name: str,
    edit: Callable[[str], str] = lambda text: text,
    overflow: bool = True,
) -> tuple[int, subprocess.CompletedProcess[str]]:
    """``up --detach`` of a two-host fleet (group near here, group far on the host at
    ``ssh``); its router port and what ``up`` printed."""
    hardware = _hardware(tmp_path, ssh, tmp_path / "second-home")
    hardware.write_text(edit(hardware.read_text()))
    port = free_port()
    fleet = _fleet(tmp_path, hardware, model, llama_server, port, name, overflow)
    return port, run_cli("up", str(fleet), "--detach", timeout=240)


def _hardware(tmp_path: Path, ssh: str, home: Path, more: str = "") -> Path:
    """A hardware profile of this box and host "second" at ``ssh``; ``more``: lines added to
    the second host (its cards)."""
    path = tmp_path / "two-boxes.toml"
    path.write_text(
        f"""format = 1
name = "two-boxes"
[[hosts]]
name = "main"
ram_gb = 16
cpu_cores = 2
[[hosts]]
name = "second"
ram_gb = 16
cpu_cores = 2
ssh = "{ssh}"
launcher = "{LAUNCHER}"
home = "{home}"
link = "1gbe"
{more}"""
    )
    return path


def _fleet(
    tmp_path: Path,
    hardware: Path,
    model: Path,
    llama_server: Path,
    port: int,
    name: str,
    overflow: bool = True,
) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f"""format = 2
name = "{name}"
hardware = "{hardware}"
[router]
port = {port}
[[groups]]
name = "near"
model = "{model}"
layout = "cpu:1"
users = 1
ctx = 512
[groups.server]
llama_server = "{llama_server}"
[[groups]]
name = "far"
model = "{model}"
host = "second"
layout = "cpu:1"
users = 1
ctx = 512
{"[groups.route]" + chr(10) + 'overflow_to = "near"' if overflow else ""}
[groups.server]
llama_server = "{llama_server}"
"""
    )
    return path


def _ask(
    port: int, model: str, timeout: float = 60, key: str | None = None
) -> tuple[int, dict[str, str]]:
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    ).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=body, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers)


def _ask_text(port: int, model: str) -> tuple[int, dict[str, str], str]:
    """As ``_ask``, with the answer's body (the error sentence of a 503)."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def _servers(model: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"llama-server -m {model}"], capture_output=True)
    return [int(p) for p in out.stdout.split()]


def _agents() -> list[psutil.Process]:
    """The ``llama-launcher agent`` processes running (the second box's)."""
    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if "agent" in (p.info["cmdline"] or [])
        and "python" in Path((p.info["cmdline"] or [""])[0]).name
    ]


def _groups(fleet: str) -> dict[str, str]:
    """Each group's state in ``status --json``."""
    data = json.loads(run_cli("status", "--json").stdout)
    found = next(f for f in data["fleets"] if f["name"] == fleet)
    return {g["name"]: g["state"] for g in found["groups"]}


def _until(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.25)
    return False


def test_a_host_says_how_to_reach_it(tmp_path: Path) -> None:
    path = _hardware(tmp_path, "me@box.lan:2222", tmp_path / "h")
    second = load_hardware_profile(path).hosts[1].info
    assert (second.ssh, second.launcher, second.link_gbit) == ("me@box.lan:2222", LAUNCHER, 1.0)
    assert parse_link("10gbe") == 10.0 and parse_link("2.5gbit") == 2.5
    assert parse_link("fast") is None
    for key, value, words in [
        ("ssh", "me@@box", "must be user@host"),
        ("link", "fast", "must be 1gbe, 10gbe, 25gbe"),
    ]:
        text = path.read_text().replace(f'{key} = "', f'{key} = "{value}" #', 1)
        path.write_text(text)
        with pytest.raises(LauncherError, match=words):
            load_hardware_profile(path)
        path = _hardware(tmp_path, "me@box.lan:2222", tmp_path / "h")
    for more, words in [
        ('reach = "wifi"\n', 'must be "tunnel"'),
        ('reach = "lan"\n', 'needs address = "host:port"'),
        ('reach = "lan"\naddress = "box.lan"\n', 'needs address = "host:port"'),
    ]:
        with pytest.raises(LauncherError, match=words):
            load_hardware_profile(_hardware(tmp_path, "me@box.lan", tmp_path / "h", more))
    lan = _hardware(tmp_path, "me@box.lan", tmp_path / "h", 'reach = "lan"\naddress = "b:80"\n')
    assert load_hardware_profile(lan).hosts[1].info.reach == "lan"


def test_a_remote_group_needs_its_host(
    tmp_path: Path, model_factory: Callable[..., Path], llama_server: Path
) -> None:
    hardware = _hardware(tmp_path, "me@box.lan", tmp_path / "h")
    fleet = _fleet(tmp_path, hardware, model_factory("llama"), llama_server, free_port(), "f1")
    fleet.write_text(fleet.read_text().replace('host = "second"', 'host = "third"'))
    result = run_cli("up", str(fleet), "--detach")
    assert result.returncode != 0
    assert "runs on host third, which hardware profile" in result.stderr
    assert "Traceback" not in result.stderr


@needs_sshd
def test_up_runs_a_group_on_the_second_box_and_down_leaves_nothing(
    tmp_path: Path,
    box: sshbox.SshBox,
    model_factory: Callable[..., Path],
    llama_server: Path,
) -> None:
    """``up`` starts the remote group over SSH and routes to it through the tunnel; a
    ``kill -9`` of the remote worker is restarted there; ``down`` stops both sides."""
    remote_home = tmp_path / "second-home"
    model = model_factory("llama")
    port, up = _up(tmp_path, box.target, model, llama_server, "pair")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        assert "Group far: on host second" in up.stdout and "reached through SSH" in up.stdout
        assert _until(lambda: _ask(port, "far", 5)[0] == 200, 120), run_cli("logs", "pair").stdout
        status, headers = _ask(port, "far")
        assert status == 200 and headers["X-Llama-Launcher-Group"] == "far"
        assert _ask(port, "near")[0] == 200
        assert _groups("pair") == {"near": "running", "far": "running"}
        # its cards, as the agent samples them, in status (and the Dashboard)
        assert _until(lambda: "card second:3 NVIDIA H100" in run_cli("status").stdout, 30)
        # its worker's log, read over ssh
        remote_log = run_cli("logs", "pair/second:w0")
        assert remote_log.returncode == 0 and "starting:" in remote_log.stdout, remote_log
        nothing = run_cli("logs", "pair/second:w7")
        assert nothing.returncode != 0 and "Host second: No log for pair-second/w7" in (
            nothing.stderr
        )
        # the second box runs its own fleet, in its own home
        remote_state = list((remote_home / "state").rglob("pair-second*.json"))
        assert remote_state, list(remote_home.rglob("*"))
        servers = _servers(model)
        assert len(servers) == 2  # one here, one "there"
        remote_pid = next(
            p
            for p in servers
            if f"--port {port + 1}" not in Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")
        )
        os.kill(remote_pid, signal.SIGKILL)
        assert _until(lambda: len(_servers(model)) == 2 and remote_pid not in _servers(model), 60)
        assert _until(lambda: _ask(port, "far", 5)[0] == 200, 60)
    finally:
        down = run_cli("down", "pair", timeout=120)
    assert down.returncode == 0, down.stderr
    assert _until(lambda: not _servers(model), 30), _servers(model)
    leftover = subprocess.run(["pgrep", "-f", "llama-launcher agent"], capture_output=True)
    assert not leftover.stdout.strip()
    tunnels = subprocess.run(["pgrep", "-f", f"-L 127.0.0.1:.*{box.port}"], capture_output=True)
    assert not tunnels.stdout.strip()


@needs_sshd
def test_a_host_on_the_lan_serves_with_the_fleets_key(
    tmp_path: Path,
    box: sshbox.SshBox,
    model_factory: Callable[..., Path],
    llama_server: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``reach = "lan"``: the other box's router listens on its ``address`` (no tunnel) and
    requires the fleet's API key, which the main router sends; without the fleet's key
    ``up`` says what to set."""
    model = model_factory("llama")
    lan_port = free_port()
    more = f'reach = "lan"\naddress = "127.0.0.1:{lan_port}"\n'
    hardware = _hardware(tmp_path, box.target, tmp_path / "second-home", more)
    port = free_port()
    fleet = _fleet(tmp_path, hardware, model, llama_server, port, "lan", overflow=False)
    refused = run_cli("up", str(fleet), "--detach", timeout=60)
    assert refused.returncode != 0 and "set [router] api_key_env = VAR" in refused.stderr
    text = fleet.read_text().replace("[router]\n", '[router]\napi_key_env = "FLEET_KEY"\n')
    fleet.write_text(text)
    monkeypatch.setenv("FLEET_KEY", "s3cret")
    up = run_cli("up", str(fleet), "--detach", timeout=240)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        assert f"reached at 127.0.0.1:{lan_port} on the LAN" in up.stdout

        served = _until(lambda: _ask(port, "far", 5, "s3cret")[0] == 200, 120)
        assert served, run_cli("logs", "lan/supervisor")
        assert _ask(lan_port, "far", key=None)[0] == 401  # the LAN router wants the key
        assert _ask(lan_port, "far", key="s3cret")[0] == 200
        tunnels = subprocess.run(["pgrep", "-f", f"-L 127.0.0.1:.*{box.port}"], capture_output=True)
        assert not tunnels.stdout.strip()  # nothing to tunnel
    finally:
        down = run_cli("down", "lan", timeout=120)
    assert down.returncode == 0, down.stderr
    assert _until(lambda: not _servers(model), 30), _servers(model)


@needs_sshd
def test_an_unreachable_host_marks_its_group_down_and_the_rest_serves(
    tmp_path: Path,
    box: sshbox.SshBox,
    model_factory: Callable[..., Path],
    llama_server: Path,
) -> None:
    model = model_factory("llama")
    closed = free_port()  # nothing listens there
    target = f"{box.user}@127.0.0.1:{closed}"
    port, up = _up(tmp_path, target, model, llama_server, "half", overflow=False)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert _ask(port, "near")[0] == 200

        assert _until(lambda: _groups("half").get("far") == "down", 60)
        started = time.monotonic()
        status, _, text = _ask_text(port, "far")
        assert status == 503 and time.monotonic() - started < 10
        assert "runs on another box that cannot be reached now" in text
    finally:
        run_cli("down", "half", timeout=120)
    assert _until(lambda: not _servers(model), 30)


@needs_sshd
def test_a_dead_main_supervisor_leaves_nothing_on_the_second_box(
    tmp_path: Path,
    box: sshbox.SshBox,
    model_factory: Callable[..., Path],
    llama_server: Path,
) -> None:
    """``kill -9`` of the main box's supervisor: its ssh sessions see their input end, the
    agent stops the remote group after its grace period, the tunnel's far end exits."""
    model = model_factory("llama")
    _, up = _up(tmp_path, box.target, model, llama_server, "orphan")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "far: running" in up.stdout + up.stderr
    data = json.loads(run_cli("status", "--json").stdout)
    supervisor = next(f for f in data["fleets"] if f["name"] == "orphan")["supervisor_pid"]
    assert len(_servers(model)) == 2
    os.kill(supervisor, signal.SIGKILL)
    started = time.monotonic()

    def gone() -> bool:
        left = subprocess.run(
            ["pgrep", "-f", f"llama-server -m {model}|llama-launcher agent|-L 127.0.0.1:"],
            capture_output=True,
        )
        return not left.stdout.strip()

    assert _until(gone, 40), subprocess.run(["ps", "-ef"], capture_output=True, text=True).stdout
    assert time.monotonic() - started >= 5  # the remote side waited out its grace period


@needs_sshd
def test_net_test_measures_through_ssh_and_writes_the_link(
    tmp_path: Path, box: sshbox.SshBox
) -> None:
    hardware = _hardware(tmp_path, box.target, tmp_path / "h")
    hardware.write_text(hardware.read_text().replace('link = "1gbe"\n', "# my note\n"))
    result = run_cli("net-test", "second", "--hardware", str(hardware), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ms round trip" in result.stdout and "Mbit/s" in result.stdout
    assert "Round trips to second" in result.stderr  # progress
    text = hardware.read_text()
    assert "# my note" in text  # the user's lines stay
    second = load_hardware_profile(hardware).hosts[1].info
    assert second.link_gbit is not None and second.link_gbit > 0.05  # loopback through ssh
    assert second.rtt_ms is not None and second.rtt_ms > 0  # the plan takes it
    again = run_cli("net-test", "second", "--hardware", str(hardware), timeout=120)
    assert again.returncode == 0 and hardware.read_text().count("link =") == 1
    assert hardware.read_text().count("rtt_ms =") == 1
    closed = run_cli("net-test", f"{box.user}@127.0.0.1:{free_port()}", timeout=60)
    assert closed.returncode != 0 and "Connection refused" in closed.stderr
    assert "Traceback" not in closed.stderr


@needs_sshd
def test_a_lost_agent_is_reconnected_and_its_group_serves_again(
    tmp_path: Path,
    launcher_home: Path,
    box: sshbox.SshBox,
    model_factory: Callable[..., Path],
    llama_server: Path,
) -> None:
    """``kill -9`` of the agent on the second box (its workers die with it): the group is
    marked down at once, the host is tried again after 5 s and the group serves again."""
    model = model_factory("llama")
    port, up = _up(tmp_path, box.target, model, llama_server, "again")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        agents = _agents()
        assert len(agents) == 1, [p.info["cmdline"] for p in agents]
        agents[0].kill()
        assert _until(lambda: _groups("again")["far"] == "down", 20)
        assert _ask(port, "near")[0] == 200  # the rest serves on
        status, headers = _ask(port, "far")  # its overflow rule takes it meanwhile
        assert status == 200 and headers["X-Llama-Launcher-Group"] == "near"
        assert _until(lambda: _groups("again")["far"] == "running", 60)
        assert _until(lambda: _ask(port, "far", 5)[0] == 200, 30)
        log = (launcher_home / "state" / "logs" / "again" / "supervisor.log").read_text()
        assert "Host second is back: group(s) far serve again." in log
    finally:
        run_cli("down", "again", timeout=120)
    assert _until(lambda: not _servers(model), 30)


@needs_sshd
def test_no_launcher_on_the_second_box_says_what_to_do(
    tmp_path: Path,
    box: sshbox.SshBox,
    model_factory: Callable[..., Path],
    llama_server: Path,
) -> None:
    model = model_factory("llama")
    port, up = _up(
        tmp_path,
        box.target,
        model,
        llama_server,
        "bare",
        lambda text: text.replace(LAUNCHER, "/nowhere/llama-launcher"),
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        said = up.stdout + up.stderr
        assert "there is no llama-launcher at /nowhere/llama-launcher on it; install it" in said
        assert _ask(port, "near")[0] == 200
    finally:
        run_cli("down", "bare", timeout=120)
    assert _until(lambda: not _servers(model), 30)


def test_a_remote_group_survives_json_and_profiles(tmp_path: Path) -> None:
    from launcher.profiles import launch
    from launcher.spec.fleet import FleetSpec, GroupSpec, RemoteHost, RouterSpec

    spec = FleetSpec(
        "two",
        (GroupSpec("near", "/m/a.gguf"), GroupSpec("far", "/m/b.gguf", host="second")),
        hardware="two-boxes",
        remote_hosts=(RemoteHost("second", "me@box:22", "/opt/ll", "/h", 1.0),),
    )
    assert FleetSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert [g.name for g in spec.remote_groups] == ["far"] and spec.planned is False
    saved = launch.save_launch_profile(spec)
    again = launch.load_launch_profile(saved)
    assert again.group("far").host == "second" and again.group("near").host is None
    no_router = FleetSpec(spec.name, spec.groups, RouterSpec(enabled=False))
    assert any("enable the router" in p for p in no_router.problems())


def test_the_agent_says_what_it_got_wrong() -> None:
    """Garbage on its input: one ``failed`` event, no traceback (its main box says it)."""
    result = subprocess.run(
        [sys.executable, "-m", "launcher", "agent"],
        input='{"spec": 1}\n',
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    event = json.loads(result.stdout)
    assert event["event"] == "failed" and "no fleet spec" in event["message"]
