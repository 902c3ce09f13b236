"""The router in front of two real CPU llama-servers, and in front of a one-worker fleet."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from launcher.llamacpp.wire import SlotState, parse_slots
from launcher.router.balancer import Balancer, Member, SpeedMeter
from tests.conftest import free_port, run_cli, start_llama_server, stop_process


def start_router(
    urls: list[str], *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher", "route", *urls, "--port", str(port), *extra],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"router exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                if resp.status == 200:
                    return proc, url
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    raise AssertionError("router did not come up")


def post(
    url: str, body: object, key: str | None = None, timeout: float = 60
) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def metrics(url: str, key: str | None = None) -> dict[str, float]:
    req = urllib.request.Request(
        f"{url}/metrics", headers={"Authorization": f"Bearer {key}"} if key else {}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.fixture
def two_servers(
    llama_server: Path, model_factory: Callable[..., Path], tmp_path: Path
) -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    servers = [
        start_llama_server(llama_server, model_factory("llama"), tmp_path / f"s{i}.log")
        for i in range(2)
    ]
    yield servers
    for proc, _ in servers:
        stop_process(proc)


def completion(n: int = 8) -> dict[str, object]:
    return {"prompt": "Hello there", "n_predict": n, "ignore_eos": True}


def test_requests_spread_and_stream_in_chunks(two_servers: list) -> None:  # type: ignore[type-arg]
    router, url = start_router([u for _, u in two_servers])
    try:
        threads = [
            threading.Thread(target=post, args=(f"{url}/completion", completion(24)))
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        m = metrics(url)
        assert m['llama_launcher_requests_total{worker="m0",group="default"}'] >= 1
        assert m['llama_launcher_requests_total{worker="m1",group="default"}'] >= 1
        assert m['llama_launcher_tokens_total{worker="all"}'] == 8 * 24
        # a stream arrives in several pieces, as the worker sends them
        req = urllib.request.Request(
            f"{url}/completion",
            data=json.dumps({**completion(20), "stream": True}).encode(),
            headers={"Content-Type": "application/json"},
        )
        events, reads = 0, 0
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert "text/event-stream" in resp.headers["Content-Type"]
            while True:
                chunk = resp.read1(65536)
                if not chunk:
                    break
                reads += 1
                events += chunk.count(b"data: ")
        assert events >= 20 and reads > 3
        status, _, body = post(
            f"{url}/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "ignore_eos": True},
        )
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 4
        with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as resp:
            assert json.load(resp)["data"]
    finally:
        router.terminate()
        router.wait(10)


def test_a_killed_worker_leaves_rotation(two_servers: list) -> None:  # type: ignore[type-arg]
    router, url = start_router([u for _, u in two_servers])
    results: list[int] = []
    try:

        def client() -> None:
            for _ in range(6):
                results.append(post(f"{url}/completion", completion(16))[0])

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        two_servers[0][0].send_signal(signal.SIGKILL)
        for t in threads:
            t.join()
        # requests that were running on the killed worker may fail; later ones must not
        time.sleep(1.0)
        later = [post(f"{url}/completion", completion(8))[0] for _ in range(6)]
        assert later == [200] * 6
        m = metrics(url)
        assert m['llama_launcher_worker_healthy{worker="m0",group="default"}'] == 0
        assert m['llama_launcher_worker_healthy{worker="m1",group="default"}'] == 1
    finally:
        router.terminate()
        router.wait(10)


def test_api_key_is_enforced_but_not_on_health(two_servers: list) -> None:  # type: ignore[type-arg]
    router, url = start_router(
        [two_servers[0][1]], "--api-key-env", "ROUTER_KEY", env={"ROUTER_KEY": "s3cret"}
    )
    try:
        assert post(f"{url}/completion", completion(2))[0] == 401
        assert post(f"{url}/completion", completion(2), key="wrong")[0] == 401
        assert post(f"{url}/completion", completion(2), key="s3cret")[0] == 200
        with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
            assert resp.status == 200
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{url}/metrics", timeout=5)
        assert info.value.code == 401
    finally:
        router.terminate()
        router.wait(10)
    lan = run_cli("route", two_servers[0][1], "--host", "0.0.0.0", "--port", str(free_port()))
    assert lan.returncode == 2
    assert "reachable from the network" in lan.stderr and "--api-key-env" in lan.stderr


def test_bad_json_gets_the_workers_answer(two_servers: list) -> None:  # type: ignore[type-arg]
    direct = post(f"{two_servers[0][1]}/completion", b"{bad json")
    router, url = start_router([two_servers[0][1]])
    try:
        via = post(f"{url}/completion", b"{bad json")
        assert via[0] == direct[0] and via[0] >= 400
        assert json.loads(via[2]) == json.loads(direct[2])
    finally:
        router.terminate()
        router.wait(10)


def test_queue_bound_gives_503(
    llama_server: Path, model_factory: Callable[..., Path], tmp_path: Path
) -> None:
    proc, upstream = start_llama_server(
        llama_server, model_factory("llama"), tmp_path / "s.log", slots=1
    )
    router, url = start_router([upstream], "--max-queue", "1", "--queue-timeout", "60")
    answers: list[tuple[int, dict[str, str]]] = []
    try:

        def long_request() -> None:
            # 900 tokens: about 1.4 s each on 2 cores, so the third request comes while the
            # first still runs and the second waits
            status, headers, _ = post(f"{url}/completion", completion(900), timeout=120)
            answers.append((status, headers))

        threads = [threading.Thread(target=long_request) for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.3)  # one runs, one waits in the queue
        status, headers, body = post(f"{url}/completion", completion(4))
        assert status == 503 and headers.get("Retry-After") == "1"
        assert b"queue is full" in body
        for t in threads:
            t.join()
        assert [a[0] for a in answers] == [200, 200]
        assert metrics(url)["llama_launcher_rejected_total"] == 1
    finally:
        router.terminate()
        router.wait(10)
        stop_process(proc)


def test_a_single_worker_fleet_answers_on_the_router_port(
    model_factory: Callable[..., Path], llama_server: Path, launcher_home: Path
) -> None:
    env = {"LLAMA_SERVER": str(llama_server), "LLAMA_LAUNCHER_HOME": str(launcher_home)}
    port = free_port()
    try:
        up = run_cli(
            "up",
            str(model_factory("llama")),
            "--layout",
            "cpu:1",
            "--users",
            "2",
            "--ctx",
            "512",
            "--port",
            str(port),
            "--detach",
            env=env,
            timeout=120,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        fleet = json.loads(run_cli("status", "--json", env=env).stdout)["fleets"][0]
        assert fleet["router"]["url"] == f"http://127.0.0.1:{port}"
        assert fleet["workers"][0]["port"] == port + 1
        status, _, body = post(
            f"http://127.0.0.1:{port}/v1/completions",
            {"prompt": "Hi", "max_tokens": 5, "ignore_eos": True},
        )
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 5
    finally:
        run_cli("down", env=env, timeout=60)


def test_a_client_that_leaves_cancels_its_upstream_request(two_servers: list) -> None:  # type: ignore[type-arg]
    upstream = two_servers[0][1]
    router, url = start_router([upstream])
    try:
        req = urllib.request.Request(
            f"{url}/completion",
            data=json.dumps({**completion(100000), "stream": True}).encode(),
            headers={"Content-Type": "application/json"},
        )
        resp = urllib.request.urlopen(req, timeout=60)
        assert resp.read1(65536).startswith(b"data: ")
        busy = metrics(upstream)["llamacpp:requests_processing"]
        assert busy == 1
        resp.close()  # the client goes away mid-stream

        def idle() -> bool:
            return metrics(upstream)["llamacpp:requests_processing"] == 0

        deadline = time.monotonic() + 10
        while not idle() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert idle(), "the worker kept generating for a client that had gone"
        predicted = metrics(upstream)["llamacpp:tokens_predicted_total"]
        assert predicted < 100000
    finally:
        router.terminate()
        router.wait(10)


def test_fleet_router_with_a_remote_member_and_gpu_gauges(
    two_servers: list,
    model_factory: Callable[..., Path],
    llama_server: Path,  # type: ignore[type-arg]
    launcher_home: Path,
    tmp_path: Path,
) -> None:
    from tests import gpu_boxes

    backend = gpu_boxes.save(gpu_boxes.mixed_desktop_backend(), tmp_path / "box.json")
    env = {
        "LLAMA_SERVER": str(llama_server),
        "LLAMA_LAUNCHER_HOME": str(launcher_home),
        "LLAMA_LAUNCHER_GPU_BACKEND": backend,
    }
    port = free_port()
    profile = tmp_path / "mixed.toml"
    # per-card on the fixed 2-card box: the CPU build ignores the cards, the plan does not
    profile.write_text(
        f'format = 1\nname = "mixed"\nmodel = "{model_factory("llama")}"\n'
        '[workload]\nusers = 2\nctx = 512\n[layout]\nkind = "per-card"\n'
        f'[router]\nport = {port}\n[[router.members]]\nurl = "{two_servers[0][1]}"\n'
        "weight = 0.5\n"
    )
    try:
        up = run_cli("up", str(profile), "--detach", env=env, timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        fleet = json.loads(run_cli("status", "--json", env=env).stdout)["fleets"][0]
        assert fleet["router"]["members"] == [two_servers[0][1]]
        for _ in range(6):
            assert post(f"http://127.0.0.1:{port}/completion", completion(4))[0] == 200
        time.sleep(1.5)  # one GPU sampler tick
        m = metrics(f"http://127.0.0.1:{port}")
        names = [k for k in m if k.startswith("llama_launcher_requests_total")]
        assert len(names) == 4  # two workers, the remote member, and "all"
        assert m['llama_launcher_requests_total{worker="all"}'] == 6
        assert m['llama_launcher_gpu_memory_used_bytes{gpu="0"}'] == 2 * 2**30
        assert m['llama_launcher_gpu_memory_bandwidth_percent{gpu="0",source="memory_busy"}'] == 70
        assert m['llama_launcher_gpu_busy_percent{gpu="0"}'] == 90
    finally:
        run_cli("down", env=env, timeout=60)


def test_speed_counts_only_slots_that_kept_decoding() -> None:
    # a bench on 4x H100 saw a warm-up request and prompt reading make a worker look slow,
    # so the router stacked users on another: only decoding slots may set the speed
    def slot(i: int, task: int, decoded: int, busy: bool = True) -> SlotState:
        nxt = [{"n_decoded": decoded}]
        (state,) = parse_slots(
            [{"id": i, "id_task": task, "is_processing": busy, "next_token": nxt}]
        )
        return state

    meter = SpeedMeter()
    assert meter.update(0.0, [slot(0, 1, 0), slot(1, 2, 0)]) is None  # both reading prompts
    assert meter.update(1.0, [slot(0, 1, 40), slot(1, 2, 0)]) is None  # 0 -> 40: started late
    assert meter.update(2.0, [slot(0, 1, 80), slot(1, 2, 30)]) == 40.0  # slot 1 not yet
    assert meter.update(3.0, [slot(0, 3, 5), slot(1, 2, 70)]) == 40.0  # slot 0: a new request
    assert meter.update(4.0, [slot(0, 3, 0, busy=False), slot(1, 2, 110)]) == 40.0
    assert SpeedMeter().update(5.0, [slot(0, 3, 0, busy=False)]) is None


def slots_reply(decoded: list[int]) -> tuple[SlotState, ...]:
    return parse_slots(
        [
            {"id": i, "id_task": i, "is_processing": True, "next_token": [{"n_decoded": n}]}
            for i, n in enumerate(decoded)
        ]
    )


def test_speed_is_the_best_recent_reading() -> None:
    # a prompt in the same batch stalls the decoding slots for a whole reading: that reading is
    # low, and must not make the card look slow; old readings leave the window
    meter = SpeedMeter(window_s=10.0)
    assert meter.update(0.0, slots_reply([10, 10])) is None
    assert meter.update(1.0, slots_reply([110, 110])) == 100.0
    assert meter.update(2.0, slots_reply([111, 111])) == 100.0  # stalled by a prompt
    assert meter.update(3.0, slots_reply([171, 171])) == 100.0
    assert meter.update(13.0, slots_reply([771, 771])) == 60.0  # t=1 left the window


def test_speed_compares_readings_at_the_same_number_of_decoding_slots() -> None:
    # per-slot speed falls as more slots decode together; a reading from a lighter phase
    # (1 slot at 229 tok/s) must not stand for the member once it decodes 8 (70 tok/s)
    meter = SpeedMeter(window_s=30.0)
    assert meter.update(0.0, slots_reply([10])) is None
    assert meter.update(1.0, slots_reply([239])) == 229.0
    assert meter.update(2.0, slots_reply([468])) == 229.0
    assert meter.update(3.0, slots_reply([5] * 8)) == 229.0  # 8 new requests: no reading yet
    assert meter.update(4.0, slots_reply([75] * 8)) == 70.0
    assert meter.update(5.0, slots_reply([135] * 8)) == 70.0  # stalled by a prompt: 60
    assert meter.update(6.0, slots_reply([206] * 8)) == 71.0


def test_identical_members_share_users_evenly_after_a_lighter_phase() -> None:
    # 4 identical cards: members 0 and 1 also hold readings from when one request decoded
    # alone (an earlier light load, or the end of a burst: here the latest reading), 2 and 3
    # not; compared at 8 decoding slots they are equal, and 32 users split 8/8/8/8
    members = [Member(f"w{i}", f"http://127.0.0.1:{9000 + i}", slots=16) for i in range(4)]
    for i, m in enumerate(members):
        meter = SpeedMeter()
        meter.update(10.0, slots_reply([300] * 8))
        assert meter.update(11.0, slots_reply([370 + i % 2] * 8)) == 70.0 + i % 2
        if i < 2:
            meter.update(12.0, slots_reply([500]))
            assert meter.update(13.0, slots_reply([729])) == 229.0
        m.speeds, m.healthy = meter.by_slots(), True
    balancer = Balancer(members)
    for _ in range(32):
        m = balancer.pick()
        assert m is not None
        m.in_flight += 1
    assert [m.in_flight for m in members] == [8, 8, 8, 8]


def test_a_slower_member_gets_fewer_users() -> None:
    # compared at the same number of decoding slots, a card half as fast gets about half
    fast = Member("fast", "http://127.0.0.1:9000", slots=16, healthy=True, speeds={4: 120.0})
    slow = Member("slow", "http://127.0.0.1:9001", slots=16, healthy=True)
    slow.speeds = {1: 100.0, 4: 60.0}  # alone it reads faster than the fast card loaded
    balancer = Balancer([fast, slow])
    for _ in range(12):
        m = balancer.pick()
        assert m is not None
        m.in_flight += 1
    assert (fast.in_flight, slow.in_flight) == (8, 4)


def test_identical_members_share_users_evenly_through_stalls() -> None:
    # 4 identical cards, 8 users arriving while some members' readings were stalled by a
    # prompt: each card gets 2 (an average of readings gave the stalled ones almost nothing)
    members = [Member(f"w{i}", f"http://127.0.0.1:{9000 + i}", slots=16) for i in range(4)]
    meters = [SpeedMeter() for _ in members]
    decoded = [10, 10, 10, 10]
    for t, stalled in ((0.0, set()), (0.5, set()), (1.0, {1, 2}), (1.5, {2, 3})):
        for i, (m, meter) in enumerate(zip(members, meters, strict=True)):
            decoded[i] += 0 if t == 0 else 2 if i in stalled else 120  # 240 tok/s, or stalled
            meter.update(t, slots_reply([decoded[i]]))
            m.speeds = meter.by_slots()
            m.healthy = True
    balancer = Balancer(members)
    for _ in range(8):
        m = balancer.pick()
        assert m is not None
        m.in_flight += 1
    assert [m.in_flight for m in members] == [2, 2, 2, 2]


def test_router_packs_requests_into_the_lowest_slots(
    llama_server: Path, model_factory: Callable[..., Path], tmp_path: Path
) -> None:
    # llama.cpp decodes busy slots 0,5,10,15 in four passes and 0,1,2,3 in one (CPU, qwen3
    # 0.6b: 32.5 against 61.9 tok/s); left to itself llama-server takes the least recently
    # used slot, so the router hands out the lowest free one
    proc, upstream = start_llama_server(
        llama_server, model_factory("llama"), tmp_path / "s.log", slots=8
    )
    routers = []
    try:

        def slots_used(base: str, n: int) -> list[int]:
            out = []
            for i in range(n):
                body = {"prompt": f"{'ABCDEFGH'[i]} is a letter", "n_predict": 2}
                status, _, data = post(f"{base}/completion", body)
                assert status == 200, data
                out.append(json.loads(data)["id_slot"])
            return out

        alone = slots_used(upstream, 4)  # the worker's own choice (by prompt likeness, LRU)
        assert alone != [0, 0, 0, 0]
        router, url = start_router([upstream])
        routers.append(router)
        assert slots_used(url, 4) == [0, 0, 0, 0]
        got: list[int] = []
        threads = [
            threading.Thread(
                target=lambda i=i: got.append(
                    json.loads(post(f"{url}/completion", completion(48 + 8 * i))[2])["id_slot"]
                )
            )
            for i in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(got) == [0, 1, 2]
        named = post(f"{url}/completion", {**completion(2), "id_slot": 5})
        assert json.loads(named[2])["id_slot"] == 5  # a client's own choice is kept
        affinity, aff_url = start_router([upstream], "--affinity")
        routers.append(affinity)
        assert slots_used(aff_url, 4) != [0, 0, 0, 0]  # affinity: llama-server picks
    finally:
        for r in routers:
            stop_process(r)
        stop_process(proc)


def test_slot_packing_takes_the_lowest_free_slot_and_skips_foreign_ones() -> None:
    m = Member("w0", "http://127.0.0.1:1", slots=4)
    assert [m.take_slot(), m.take_slot()] == [0, 1]
    m.slots_taken.discard(0)
    assert m.take_slot() == 0  # the freed one again, not slot 2
    m.slots_foreign = {2}  # busy with a request that bypassed the router
    assert m.take_slot() == 3 and m.take_slot() is None
    # a conversation coming back goes to the free slot that served its start, if any
    chat = Member("w1", "http://127.0.0.1:2", slots=4)
    assert [chat.take_slot("a"), chat.take_slot("b"), chat.take_slot("c")] == [0, 1, 2]
    chat.slots_taken -= {0, 1}
    assert chat.take_slot("b") == 1 and chat.take_slot("new") == 0
    assert chat.take_slot("b") == 3  # its slot is busy: the lowest free one
