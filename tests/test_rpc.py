"""Pooling across boxes with llama.cpp RPC (layout ``pooled-rpc``, docs/remote.md): a real
rpc-server and llama-server on loopback, the planner's network terms, and a two-host fleet
whose worker here borrows the second box's devices through the SSH tunnel."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher.errors import LauncherError
from launcher.gpu.inventory import Inventory
from launcher.llamacpp.probe import ServerTarget
from launcher.model.spec import read_model_spec
from launcher.plan import network
from launcher.plan.advisor import plan
from launcher.plan.workload import Workload
from launcher.profiles.hardware import load_hardware_profile
from launcher.run.rpc import RpcServer, rpc_server_beside
from launcher.spec.fleet import FleetSpec, GroupSpec

from . import sshbox
from .conftest import free_port, run_cli
from .test_remote import _agents, _ask, _groups, _hardware, _servers, _until, needs_sshd

PROMPT = "The quick brown fox"


def _tokens(port: int, n: int = 32) -> list[int]:
    body = json.dumps(
        {"prompt": PROMPT, "n_predict": n, "temperature": 0, "return_tokens": True}
    ).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/completion",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        tokens = json.loads(resp.read())["tokens"]
    return [int(t) for t in tokens]


def _serve(
    llama_server: Path, model: Path, extra: list[str]
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    # -nr: the rpc-server's CPU device keeps the weights as they are in the file, the local
    # CPU would repack them (other kernels, other rounding of a random model's near ties)
    argv = [str(llama_server), "-m", str(model), "--port", str(port), "-c", "512", "-nr", *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("llama-server did not become healthy")


def test_pooled_over_rpc_gives_the_same_greedy_tokens(
    llama_server: Path, model_factory: Callable[..., Path]
) -> None:
    """A tiny model with layer 0 here and layer 1 and the output on an RPC device (a real
    rpc-server on loopback) generates what it generates without RPC."""
    model = model_factory("llama")
    rpc = RpcServer(rpc_server_beside(str(llama_server)), free_port())

    async def start() -> None:
        await rpc.start()

    loop = asyncio.new_event_loop()
    loop.run_until_complete(start())
    try:
        alone, port = _serve(llama_server, model, [])
        try:
            expected = _tokens(port)
        finally:
            alone.kill()
            alone.wait()
        # -ngl 2 of the tiny model's 2 layers + output: the output and layer 1 on the device
        pooled, port = _serve(llama_server, model, ["--rpc", f"127.0.0.1:{rpc.port}", "-ngl", "2"])
        try:
            got = _tokens(port)
        finally:
            pooled.kill()
            pooled.wait()
        assert len(expected) == 32
        assert got == expected
        # the layers really were on the device: llama-server connected to the rpc-server (its
        # lines are read while the loop runs)
        loop.run_until_complete(asyncio.sleep(0.5))
        assert sum("Accepted client connection" in line for line in rpc.tail) >= 1, rpc.tail
    finally:
        loop.run_until_complete(rpc.stop())
        loop.close()
    assert rpc.proc is not None and rpc.proc.returncode is not None


def test_a_build_without_rpc_server_says_what_to_run(tmp_path: Path) -> None:
    fake = tmp_path / "llama-server"
    fake.write_text("")
    with pytest.raises(LauncherError, match="run 'llama-launcher install-server'"):
        rpc_server_beside(str(fake))


def test_the_network_terms_follow_the_link() -> None:
    one, ten = network.Link(1.0), network.Link(10.0, rtt_ms=0.05)
    # bytes of one step: the hidden state there and back, positions, the f16 mask by cells
    assert network.rpc_step_bytes(8192, 1, 300) == 2 * 8192 * 4 + 4 + 2 * 512
    assert network.rpc_step_bytes(8192, 8, 8 * 600) == 2 * 8192 * 4 * 8 + 32 + 2 * 4864 * 8
    assert network.rpc_step_s(one, 8192, 8, 4800) > network.rpc_step_s(ten, 8192, 8, 4800)
    assert network.rpc_step_s(one, 8192, 8, 4800) > network.rpc_step_s(one, 8192, 1, 600)
    # routing costs a slower, farther link more; a longer prompt more
    assert network.route_overhead_s(one, 512) > network.route_overhead_s(ten, 512)
    assert network.route_overhead_s(one, 4096) > network.route_overhead_s(one, 512)
    assert one.rtt_ms is None and one.rtt_s > ten.rtt_s


def _lan(tmp_path: Path, link: str = 'link = "1gbe"') -> Inventory:
    path = tmp_path / "lan.toml"
    path.write_text(
        f"""format = 1
name = "lan"
[[hosts]]
name = "main"
ram_gb = 128
cpu_cores = 24
[[hosts.cards]]
card = "rtx-pro-6000-96gb"
[[hosts]]
name = "lan-box"
ssh = "me@lan-box"
{link}
ram_gb = 32
cpu_cores = 8
[[hosts.cards]]
card = "rtx-5060-ti-16gb"
"""
    )
    return load_hardware_profile(path)


def test_the_plan_ranks_route_pool_and_main_box(
    tmp_path: Path, model_factory: Callable[..., Path]
) -> None:
    """A model both boxes hold: routing a copy to the second box adds its tokens/s, pooling
    over RPC costs each step the link; the figures and the ranking say so."""
    spec = read_model_spec(model_factory("llama", "1b"))
    inventory = _lan(tmp_path)
    result = plan(spec, inventory, Workload(users=4, ctx=2048), ServerTarget())
    assert result.across is not None
    kinds = [o.kind for o in result.across.options]
    assert kinds[0] == "route", result.across
    by_kind = {o.kind: o for o in result.across.options}
    main, route, pool = by_kind["main"], by_kind["route"], by_kind["pool"]
    assert route.aggregate_tok_s > main.aggregate_tok_s
    assert pool.single_user_tok_s < main.single_user_tok_s
    assert "a request sent there takes +" in route.detail
    assert result.across.link.gbit == 1.0 and result.across.link_given
    # a faster link costs the pool less
    fast = plan(spec, _lan(tmp_path, 'link = "25gbe"'), Workload(users=4, ctx=2048))
    assert fast.across is not None
    fast_pool = next(o for o in fast.across.options if o.kind == "pool")
    assert fast_pool.single_user_tok_s > pool.single_user_tok_s
    unknown = plan(spec, _lan(tmp_path, ""), Workload(users=4, ctx=2048))
    assert unknown.across is not None and not unknown.across.link_given


def test_a_pooled_rpc_layout_puts_the_remote_devices_first(
    tmp_path: Path, model_factory: Callable[..., Path]
) -> None:
    spec = read_model_spec(model_factory("llama", "1b"))
    result = plan(
        spec,
        _lan(tmp_path),
        Workload(users=2, ctx=1024, tensor_split=(4, 13)),
        ServerTarget(),
        "pooled-rpc",
        rpc_host="lan-box",
    )
    best = result.layouts[0].layout
    assert best.kind == "pooled-rpc" and best.feasible
    argv = best.processes[0].argv
    assert argv[argv.index("--rpc") + 1] == "127.0.0.1:8170"  # router port + 90, a tunnel
    assert argv[argv.index("-ts") + 1] == "4,13"
    assert [c.label for c in best.cards] == ["lan-box:0", "0"]
    assert [len(c.layers) for c in best.cards] == [4, 13]
    assert best.processes[0].env["CUDA_VISIBLE_DEVICES"] == "0"
    assert any("layers on host lan-box over RPC" in n for n in best.notes)
    with pytest.raises(LauncherError, match="not a second host"):
        plan(spec, _lan(tmp_path), Workload(), ServerTarget(), "pooled-rpc", rpc_host="nope")
    alone = run_cli("plan", str(model_factory("llama")), "--layout", "pooled-rpc")
    assert alone.returncode != 0 and "Traceback" not in alone.stderr
    assert "pooled-rpc needs another box's cards: plan with --hardware PROFILE" in alone.stderr


def test_pooled_rpc_and_rpc_host_go_together(tmp_path: Path) -> None:
    group = GroupSpec(name="big", model="m.gguf", layout="pooled-rpc")
    problems = FleetSpec("f", (group,)).problems()
    assert any("pooled-rpc and rpc_host = NAME go together" in p for p in problems)
    ok = FleetSpec("f", (GroupSpec(name="big", model="m.gguf", layout="pooled-rpc", rpc_host="b"),))
    assert ok.problems() == []
    assert FleetSpec.from_json(ok.to_json()) == ok


def _rpc_servers() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "rpc-server -H 127.0.0.1"], capture_output=True)
    return [int(p) for p in out.stdout.split()]


def _pooled_fleet(
    tmp_path: Path, box: sshbox.SshBox, model: Path, llama_server: Path, name: str
) -> tuple[int, Path]:
    """A launch profile of one pooled-rpc group "big" over the test sshd's box (one card);
    its router port and path."""
    second_card = '[[hosts.cards]]\ncard = "rtx-5060-ti-16gb"\n'
    hardware = _hardware(tmp_path, box.target, tmp_path / "second-home", second_card)
    port = free_port()
    fleet = tmp_path / f"{name}.toml"
    fleet.write_text(
        f"""format = 2
name = "{name}"
hardware = "{hardware}"
[router]
port = {port}
[[groups]]
name = "big"
model = "{model}"
layout = "pooled-rpc"
rpc_host = "second"
users = 1
ctx = 512
[groups.server]
llama_server = "{llama_server}"
"""
    )
    return port, fleet


@needs_sshd
def test_up_pools_the_second_box_over_rpc_through_the_tunnel(
    tmp_path: Path,
    box: sshbox.SshBox,
    model_factory: Callable[..., Path],
    llama_server: Path,
) -> None:
    """``up`` of a pooled-rpc group: the agent starts rpc-server on the second box's
    127.0.0.1, the tunnel brings it here, the worker here takes ``--rpc`` at the tunnel and
    answers; ``down`` leaves no rpc-server."""
    model = model_factory("llama")
    port, fleet = _pooled_fleet(tmp_path, box, model, llama_server, "pooled")
    up = run_cli("up", str(fleet), "--detach", timeout=240)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        assert "layers on host second over RPC" in up.stdout, up.stdout
        assert _until(lambda: _groups("pooled").get("big") == "running", 120), run_cli(
            "logs", "pooled"
        ).stdout
        assert len(_rpc_servers()) == 1
        status = json.loads(run_cli("status", "--json").stdout)
        fleet_state = next(f for f in status["fleets"] if f["name"] == "pooled")
        argv = " ".join(fleet_state["workers"][0]["argv"])
        assert "--rpc 127.0.0.1:" in argv
        status, headers = _ask(port, "big")
        assert status == 200 and headers["X-Llama-Launcher-Group"] == "big"
    finally:
        down = run_cli("down", "pooled", timeout=120)
    assert down.returncode == 0, down.stderr
    assert _until(lambda: not _rpc_servers(), 30), _rpc_servers()
    assert _until(lambda: not _servers(model), 30), _servers(model)
    agents = subprocess.run(["pgrep", "-f", "llama-launcher agent"], capture_output=True)
    assert not agents.stdout.strip()


@needs_sshd
def test_a_pooled_group_whose_host_is_lost_serves_again_when_it_is_back(
    tmp_path: Path,
    box: sshbox.SshBox,
    model_factory: Callable[..., Path],
    llama_server: Path,
) -> None:
    """``kill -9`` of the agent lending the cards: its rpc-server dies with it, the group is
    down (its worker here is not restarted meanwhile), and when the host is tried again the
    worker starts afresh on the new rpc-server and answers."""
    model = model_factory("llama")
    port, fleet = _pooled_fleet(tmp_path, box, model, llama_server, "lent")
    up = run_cli("up", str(fleet), "--detach", timeout=240)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        assert _until(lambda: _groups("lent").get("big") == "running", 120)
        first = _rpc_servers()
        agents = _agents()
        assert len(agents) == 1
        agents[0].kill()
        assert _until(lambda: _groups("lent").get("big") == "down", 20)
        assert _until(lambda: not set(first) & set(_rpc_servers()), 10)  # it died too
        assert _until(lambda: _groups("lent").get("big") == "running", 90)
        assert _until(lambda: _ask(port, "big", 5)[0] == 200, 60)
        assert len(_rpc_servers()) == 1
    finally:
        run_cli("down", "lent", timeout=120)
    assert _until(lambda: not _rpc_servers() and not _servers(model), 30)


def test_the_network_constants_are_what_their_points_give() -> None:
    """fits.toml's [network] is the fit of its points (launcher.benchmarks.network)."""
    points = network.points()
    rpc = [p for p in points if p.what == "rpc"]
    route = [p for p in points if p.what == "route"]
    assert len(rpc) >= 6 and len(route) >= 6
    k, fixed, efficiency = network.fit_rpc(rpc)
    route_k, route_fixed = network.fit_route(route, efficiency)
    c = network.constants()
    assert (k, fixed, efficiency) == pytest.approx(
        (c.rpc_round_trips, c.rpc_fixed_s, c.efficiency), rel=0.01
    )
    assert (route_k, route_fixed) == pytest.approx((c.route_round_trips, c.route_fixed_s), rel=0.01)
    # each RPC point within 30% of the fitted model
    for p in rpc:
        link = network.Link(p.gbit, p.rtt_ms)
        predicted = (c.rpc_round_trips * link.rtt_s + c.rpc_fixed_s + p.bytes / link.bytes_s) * 1000
        assert predicted == pytest.approx(p.measured_ms, rel=0.3), p
