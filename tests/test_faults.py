"""Faults that must not take a fleet down, each named after the fault it was found as (issue 19's
campaign): bounded connections, a full disk, a cut stream, big bodies, a reused PID, two
fleets on one port, the immediate 503, and one sentence instead of a traceback. Loopback only,
bounded in time and connections; tiny models on real CPU llama-servers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from launcher.app import fleet
from launcher.errors import LauncherError
from launcher.run import fleet_state
from tests.conftest import free_port, run_cli
from tests.test_fleet import base_port, status, wait_for


@pytest.fixture
def fleet_env(llama_server: Path, launcher_home: Path) -> Iterator[dict[str, str]]:
    env = {"LLAMA_SERVER": str(llama_server), "LLAMA_LAUNCHER_HOME": str(launcher_home)}
    yield env
    run_cli("down", env=env, timeout=60)


def post(url: str, body: bytes, timeout: float = 60) -> tuple[int, bytes]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def answers(url: str, codes: tuple[int, ...]) -> bool:
    """Whether ``url`` answers a POST of ``{}`` with one of ``codes`` (False while down)."""
    try:
        return post(url, b"{}", 5)[0] in codes
    except OSError:
        return False


def tiny_profile(
    tmp_path: Path, model: Path, port: int, router: str = "", users: int = 2, ctx: int = 512
) -> Path:
    path = tmp_path / "f.toml"
    path.write_text(
        f'format = 2\nname = "f"\n[router]\nport = {port}\n{router}\n[[groups]]\n'
        f'name = "tiny"\nmodel = "{model}"\nlayout = "cpu:1"\nusers = {users}\nctx = {ctx}\n'
    )
    return path


def test_fault_1_idle_and_half_sent_connections_are_bounded_and_closed(
    model_factory: Callable[..., Path], fleet_env: dict[str, str], tmp_path: Path
) -> None:
    port = base_port()
    profile = tiny_profile(
        tmp_path, model_factory("llama"), port, "max_connections = 20\nidle_timeout_s = 2"
    )
    result = run_cli("up", str(profile), "--detach", env=fleet_env, timeout=120)
    assert result.returncode == 0, result.stderr
    held = []
    for i in range(40):  # twice the bound: half idle, half with headers never finished
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 2:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Len")
        held.append(s)
    # past the bound a connection is answered 503 at once, and the fleet is unharmed
    answered = []
    for s in held[20:]:
        try:
            answered.append(s.recv(200))
        except OSError:
            answered.append(b"")
    assert all(a.startswith(b"HTTP/1.1 503") for a in answered), answered[:3]
    fleet = status(fleet_env)["fleets"][0]  # type: ignore[index]
    assert fleet_state.pid_alive(int(fleet["supervisor_pid"]))
    # the idle and half-sent ones are closed by the router after idle_timeout_s
    time.sleep(3)
    closed = 0
    for s in held[:20]:
        try:
            s.settimeout(2)
            closed += s.recv(100) == b""
        except OSError:
            closed += 1
        s.close()
    assert closed == 20
    code, body = post(f"http://127.0.0.1:{port}/v1/completions", b'{"prompt":"Hi","max_tokens":2}')
    assert code == 200, body


READ_STATE = (
    "import json, sys; print(json.load(open(sys.argv[1]))['fleets'][0]['workers'][0]['state'])"
)


def test_fault_1_a_body_that_does_not_arrive_gets_408(
    model_factory: Callable[..., Path], fleet_env: dict[str, str], tmp_path: Path
) -> None:
    port = base_port()
    profile = tiny_profile(tmp_path, model_factory("llama"), port, "body_timeout_s = 1")
    assert run_cli("up", str(profile), "--detach", env=fleet_env, timeout=120).returncode == 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"prompt":'
        )
        answer = s.recv(400)
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer


def test_fault_2_a_full_disk_does_not_stop_the_fleet(
    model_factory: Callable[..., Path], llama_server: Path, tmp_path: Path
) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"mount namespaces are refused here: {probe.stderr.decode().strip()}")
    home = tmp_path / "home"
    (home / "state").mkdir(parents=True)
    port = base_port()
    model = model_factory("llama")
    script = f"""
set -e
mount -t tmpfs -o size=2M tmpfs {home}/state
export LLAMA_LAUNCHER_HOME={home} LLAMA_SERVER={llama_server}
L="{sys.executable} -m launcher"
$L up {model} --layout cpu:1 --users 1 --ctx 512 --port {port} --detach > /dev/null
dd if=/dev/zero of={home}/state/fill bs=64k 2>/dev/null || true      # the disk is full now
sleep 3
curl -s -o /dev/null -w '%{{http_code}}\\n' 127.0.0.1:{port}/v1/completions \\
    -H 'Content-Type: application/json' -d '{{"prompt":"Hi","max_tokens":4}}'
rm {home}/state/fill                                                 # space again
sleep 2
$L status --json > {tmp_path}/status.json
{sys.executable} -c "{READ_STATE}" {tmp_path}/status.json
grep -c "Cannot write the state" {home}/state/logs/*/supervisor.log || true
$L down > /dev/null
"""
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    lines = result.stdout.split()
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[0] == "200"  # served while the disk was full
    assert lines[1] == "healthy"  # and the state is written again once there is space
    assert lines[2] == "1"  # the failure said once, not every second


def _cutting_stub(port: int) -> None:
    """An upstream that answers /health and /slots, then cuts every answer in the middle."""
    from aiohttp import web

    async def completion(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b'data: {"content":"a","stop":false}\n\n')
            await resp.write(b'data: {"content":"b","stop":false}\n\n')
        else:
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = 1000
            await resp.prepare(request)
            await resp.write(b'{"content": "par')
        assert request.transport is not None
        request.transport.abort()  # the worker dies mid-answer
        return resp

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def slots(request: web.Request) -> web.Response:
        return web.json_response([{"id": 0, "is_processing": False}])

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/slots", slots)
    app.router.add_post("/completion", completion)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def test_fault_3_a_cut_answer_is_an_error_not_a_clean_end(launcher_home: Path) -> None:
    import multiprocessing

    upstream, port = free_port(), free_port()
    stub = multiprocessing.Process(target=_cutting_stub, args=(upstream,), daemon=True)
    stub.start()
    router = subprocess.Popen(
        [sys.executable, "-m", "launcher", "route", "--port", str(port),
         f"http://127.0.0.1:{upstream}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{url}/completion", (502, 503)), 20, "the router")

        # a cut takes the member out of rotation until its next healthy poll (0.5 s)
        def sent(body: bytes) -> tuple[int, bytes]:
            for _ in range(40):
                code, answer = post(f"{url}/completion", body)
                if code != 503:
                    return code, answer
                time.sleep(0.25)
            return code, answer

        def truncated() -> int:
            with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            (line,) = [x for x in text.splitlines() if x.startswith("llama_launcher_truncated_")]
            return int(line.split()[-1])

        before = truncated()
        # streamed: the last event says the answer is truncated
        code, body = sent(b'{"prompt":"x","stream":true}')
        assert code == 200
        events = [line for line in body.decode().splitlines() if line.startswith("data: ")]
        assert events[:2] == [
            'data: {"content":"a","stop":false}',
            'data: {"content":"b","stop":false}',
        ]
        last = json.loads(events[-1][6:])
        assert last["error"]["code"] == 502 and "truncated" in last["error"]["message"]
        # not streamed: 502 that says so, never a 200 with half a body
        code, body = sent(b'{"prompt":"x"}')
        assert code == 502 and b"failed in the middle of the answer" in body
        assert truncated() - before == 2  # both counted
    finally:
        router.terminate()
        router.wait(10)
        stub.terminate()
        stub.join(10)


def test_fault_4_a_body_over_the_limit_is_refused_with_413(
    model_factory: Callable[..., Path], fleet_env: dict[str, str], tmp_path: Path
) -> None:
    port = base_port()
    profile = tiny_profile(tmp_path, model_factory("llama"), port, "max_body_mb = 1")
    assert run_cli("up", str(profile), "--detach", env=fleet_env, timeout=120).returncode == 0
    big = json.dumps({"prompt": "x" * (2 << 20), "max_tokens": 1}).encode()
    code, body = post(f"http://127.0.0.1:{port}/v1/completions", big)
    assert code == 413 and b"over 1 MiB" in body and b"max_body_mb" in body
    deep = b'{"prompt": "Hi", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    code, _ = post(f"http://127.0.0.1:{port}/v1/completions", deep)
    assert code in (200, 400, 500)  # the worker's own answer; the router is unharmed
    code, _ = post(f"http://127.0.0.1:{port}/v1/completions", b'{"prompt":"Hi","max_tokens":2}')
    assert code == 200
    log = (Path(fleet_env["LLAMA_LAUNCHER_HOME"]) / "state/logs/f/supervisor.log").read_text()
    assert "Traceback" not in log


def test_fault_5_a_reused_pid_is_not_taken_for_the_fleet(fleet_env: dict[str, str]) -> None:
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        state = fleet_state.FleetState(
            "ghost",
            stranger.pid,
            None,
            [fleet_state.WorkerState("ghost/w0", stranger.pid, 1, "http://127.0.0.1:1", [],
                                     "healthy", started=1.0)],
            supervisor_started=1.0,  # the supervisor that wrote it started long ago
        )  # fmt: skip
        fleet_state.write_state(state)
        listed = status(fleet_env)["fleets"][0]  # type: ignore[index]
        assert listed["workers"][0]["state"] == "stopped"
        down = run_cli("down", "ghost", env=fleet_env)
        assert down.returncode == 0 and "was not running" in down.stderr + down.stdout
        with pytest.raises(LauncherError, match="No running worker ghost/w0"):
            fleet.restart_worker("ghost/w0")
        assert stranger.poll() is None  # never signalled
    finally:
        stranger.kill()
        stranger.wait()


def test_fault_6_a_second_fleet_on_the_same_port_fails_at_once(
    model_factory: Callable[..., Path], fleet_env: dict[str, str]
) -> None:
    port = base_port()
    first, second = model_factory("llama"), model_factory("qwen3")

    def start(model: Path) -> subprocess.Popen[str]:
        argv = ["up", str(model), "--layout", "cpu:1", "--users", "1", "--ctx", "512"]
        return subprocess.Popen(
            [sys.executable, "-m", "launcher", *argv, "--port", str(port), "--detach"],
            env={**os.environ, **fleet_env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    starts = [start(first), start(second)]
    outputs = [p.communicate(timeout=120)[0] for p in starts]
    codes = sorted(p.returncode for p in starts)
    assert codes == [0, 1], outputs  # exactly one says "up"
    failed = outputs[[p.returncode for p in starts].index(1)]
    assert f"The router's port {port} on 127.0.0.1 is in use" in failed
    assert "Traceback" not in failed


def test_fault_9_a_group_with_no_healthy_worker_answers_503_at_once(
    launcher_home: Path,
) -> None:
    port = free_port()
    router = subprocess.Popen(
        [sys.executable, "-m", "launcher", "route", "--port", str(port), "--queue-timeout", "30",
         f"chat=http://127.0.0.1:{free_port()}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/v1/completions"
        wait_for(lambda: answers(url, (503,)), 20, "the router")
        started = time.monotonic()
        code, body = post(url, b'{"model":"chat","prompt":"x"}')
        assert code == 503 and b"no worker of model chat is healthy" in body
        assert time.monotonic() - started < 10  # not the 30 s queue timeout
    finally:
        router.terminate()
        router.wait(10)


@pytest.mark.parametrize(
    "case",
    ["non-utf8-profile", "name-251", "port-65535", "port-minus-5", "nul-in-extra-args"],
)
def test_fault_10_mistakes_get_one_sentence(
    case: str, model_factory: Callable[..., Path], fleet_env: dict[str, str], tmp_path: Path
) -> None:
    model = model_factory("llama")
    profile = tmp_path / "p.toml"
    if case == "non-utf8-profile":
        profile.write_bytes(b'format = 2\nname = "x\xff"\n')
        args = ["up", str(profile)]
    elif case == "name-251":
        args = ["profile", "save", "a" * 251, "--model", str(model)]
    elif case == "port-65535":
        args = ["up", str(model), "--layout", "cpu:1", "--port", "65535"]
    elif case == "port-minus-5":
        args = ["up", str(model), "--port", "-5"]
    else:
        profile.write_text(
            f'format = 2\n[[groups]]\nmodel = "{model}"\n[groups.server]\n'
            'extra_args = ["--temp", "0.7\\u0000"]\n'
        )
        args = ["up", str(profile)]
    result = run_cli(*args, env=fleet_env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Error:" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(("llama-launcher", "usage"))


def test_fault_10_a_read_only_home_gets_one_sentence(
    model_factory: Callable[..., Path], llama_server: Path, tmp_path: Path
) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    home = tmp_path / "home"
    home.mkdir()
    script = f"""
mount --bind {home} {home} && mount -o remount,ro,bind {home} || exit 77
export LLAMA_LAUNCHER_HOME={home} LLAMA_SERVER={llama_server}
{sys.executable} -m launcher up {model_factory("llama")} --layout cpu:1 --port {free_port()} \
    --detach
"""
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode == 77 or "unshare failed" in result.stderr:
        pytest.skip(f"read-only mounts are refused here: {result.stderr.strip()}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "Cannot write the fleet's files under" in result.stderr
    assert "Read-only file system" in result.stderr


def test_fault_10_concurrent_profile_saves_all_land(
    model_factory: Callable[..., Path], fleet_env: dict[str, str], launcher_home: Path
) -> None:
    model = str(model_factory("llama"))
    results: list[int] = []

    def save(i: int) -> None:
        r = run_cli("profile", "save", f"p{i}", "--model", model, "--hardware",
                    "six-2060s-risers", env=fleet_env)  # fmt: skip
        results.append(r.returncode)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [0] * 20
    assert len(list((launcher_home / "config" / "launch").glob("p*.toml"))) == 20
    again = run_cli("profile", "save", "p0", "--model", model, env=fleet_env)
    assert again.returncode != 0 and "already exists" in again.stderr


def test_fault_7_down_drains_for_the_set_time_then_ends_streams_with_an_error(
    model_factory: Callable[..., Path], fleet_env: dict[str, str], tmp_path: Path
) -> None:
    port = base_port()
    # one user with a long context: an answer that runs far longer than the drain
    profile = tiny_profile(tmp_path, model_factory("llama"), port, "drain_s = 2", 1, 32768)
    assert run_cli("up", str(profile), "--detach", env=fleet_env, timeout=120).returncode == 0
    events: list[str] = []

    def stream() -> None:  # an answer far longer than the drain
        body = json.dumps(
            {"prompt": "Hi", "n_predict": 100_000, "ignore_eos": True, "stream": True}
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/completion", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            events.extend(line.decode().strip() for line in resp if line.startswith(b"data: "))

    reader = threading.Thread(target=stream)
    reader.start()
    wait_for(lambda: len(events) > 3 or not reader.is_alive(), 20, "the stream to start")
    started = time.monotonic()
    down = run_cli("down", "f", env=fleet_env, timeout=60)
    took = time.monotonic() - started
    reader.join(30)
    assert down.returncode == 0 and "up to 2 s to finish" in down.stderr + down.stdout
    assert took < 2 + 2 + 10 + 5  # drain, close, the workers' grace, and a margin
    last = json.loads(events[-1][6:])
    assert "the fleet is stopping" in last["error"]["message"], events[-3:]


def test_a_killed_router_comes_back_and_the_workers_keep_running(
    model_factory: Callable[..., Path], fleet_env: dict[str, str], tmp_path: Path
) -> None:
    port = base_port()
    profile = tiny_profile(tmp_path, model_factory("llama"), port)
    assert run_cli("up", str(profile), "--detach", env=fleet_env, timeout=120).returncode == 0
    fleet = status(fleet_env)["fleets"][0]  # type: ignore[index]
    router_pid = int(fleet["router"]["pid"])
    workers = [int(w["pid"]) for w in fleet["workers"]]
    os.kill(router_pid, 9)
    killed = time.monotonic()
    url = f"http://127.0.0.1:{port}/v1/completions"
    wait_for(lambda: answers(url, (200, 400)), 10, "the router to answer again")
    back = time.monotonic() - killed

    def restarted() -> bool:  # the state file is written once a second
        router = status(fleet_env)["fleets"][0]["router"]  # type: ignore[index]
        return bool(router["pid"] != router_pid and router["restarts"] == 1)

    wait_for(restarted, 5, "status to show the new router")
    fleet = status(fleet_env)["fleets"][0]  # type: ignore[index]
    assert [int(w["pid"]) for w in fleet["workers"]] == workers  # untouched
    assert all(fleet_state.pid_alive(p) for p in workers)
    code, _ = post(url, b'{"prompt":"Hi","max_tokens":2}')
    assert code == 200
    log = (Path(fleet_env["LLAMA_LAUNCHER_HOME"]) / "state/logs/f/supervisor.log").read_text()
    assert "The router exited with code -9; started again in" in log
    print(f"router back in {back:.2f} s")  # the figure docs/faults.md cites comes from here


def test_the_supervisors_own_log_rotates(tmp_path: Path, launcher_home: Path) -> None:
    log = tmp_path / "supervisor.log"
    log.write_bytes(b"x" * 2000)
    snippet = f"""
import sys
from pathlib import Path
from launcher.llamacpp.args import ServerArgs
from launcher.run import supervisor
from launcher.spec.fleet import FleetSpec, GroupSpec, WorkerSpec
supervisor.LOG_MAX_BYTES = 1000
worker = WorkerSpec(ServerArgs("llama-server", "m.gguf", 18999, 1, 256), {{}}, ())
spec = FleetSpec("r", (GroupSpec("g", "m.gguf", workers=(worker,)),))
sup = supervisor.Supervisor(spec, own_log=Path("{log}"), handle_signals=False)
sup._rotate_own_log()
print("after the rotation")
"""
    with log.open("ab") as out:
        result = subprocess.run(
            [sys.executable, "-c", snippet], stdout=out, stderr=out, timeout=60, check=False
        )
    assert result.returncode == 0
    assert log.with_suffix(".log.1").stat().st_size == 2000  # the old one, kept
    assert log.read_text() == "after the rotation\n"  # the new one


def test_fault_9_a_group_that_cannot_be_ready_in_time_answers_503_at_once(
    model_factory: Callable[..., Path], fleet_env: dict[str, str], tmp_path: Path
) -> None:
    port = base_port()
    path = tmp_path / "od.toml"
    path.write_text(
        f'format = 2\nname = "od"\n[router]\nport = {port}\nqueue_timeout_s = 0.2\n'
        f'[[groups]]\nname = "chat"\nmodel = "{model_factory("llama")}"\nlayout = "cpu:1"\n'
        f'users = 1\nctx = 512\n[[groups]]\nname = "lazy"\nmodel = "{model_factory("qwen3")}"\n'
        'layout = "cpu:1"\nusers = 1\nctx = 512\non_demand = true\n'
    )
    assert run_cli("up", str(path), "--detach", env=fleet_env, timeout=120).returncode == 0
    url = f"http://127.0.0.1:{port}/v1/completions"
    body = b'{"model":"lazy","prompt":"Hi","max_tokens":2}'
    # its first load: how long it takes is not known yet, so the request waits (0.2 s here)
    code, answer = post(url, body)
    assert code == 503 and b"still loading" in answer
    wait_for(lambda: post(url, body)[0] == 200, 30, "lazy to load")
    unloaded = run_cli("group", "unload", "od", "lazy", env=fleet_env, timeout=60)
    assert unloaded.returncode == 0
    # now its load time is known and longer than requests wait: 503 at once, saying when
    code, answer = post(url, body)
    assert code == 503 and b"it should be ready in about" in answer, answer
    wait_for(lambda: post(url, body)[0] == 200, 30, "lazy to load again")
