"""A fleet of several model groups on real CPU llama-servers: routing by model name, 404 with
the names, /v1/models, overflow, an on-demand group that loads on its first request and
unloads after its TTL, an embedding group, and a killed worker of one group that does not
disturb the other."""

from __future__ import annotations

import json
import os
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from launcher.run.fleet_state import pid_alive
from tests.conftest import run_cli
from tests.test_fleet import base_port, status, wait_for


def call(
    url: str, body: dict[str, object] | None = None, timeout: float = 60
) -> tuple[int, dict[str, str], dict[str, object]]:
    """(status, headers, JSON body) of a GET (no body) or POST to ``url``."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def chat(
    router: str, model: str | None, tokens: int = 4
) -> tuple[int, dict[str, str], dict[str, object]]:
    body: dict[str, object] = {
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": tokens,
        "ignore_eos": True,
    }
    if model is not None:
        body["model"] = model
    return call(f"{router}/v1/chat/completions", body)


def predicted(worker_url: str) -> float:
    """Tokens a worker generated, from its own /metrics."""
    with urllib.request.urlopen(f"{worker_url}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("llamacpp:tokens_predicted_total"):
                return float(line.split()[-1])
    raise AssertionError("no tokens_predicted_total in the worker's /metrics")


def router_metric(router: str, name: str, group: str) -> float:
    with urllib.request.urlopen(f"{router}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(f"llama_launcher_{name}{{") and f'group="{group}"' in line:
                return float(line.split()[-1])
    raise AssertionError(f"no {name} for {group} in the router's /metrics")


def groups_of(env: dict[str, str]) -> dict[str, dict[str, object]]:
    fleet = status(env)["fleets"][0]  # type: ignore[index]
    return {g["name"]: g for g in fleet["groups"]}


@pytest.fixture
def fleet_env(llama_server: Path, launcher_home: Path) -> Iterator[dict[str, str]]:
    env = {"LLAMA_SERVER": str(llama_server), "LLAMA_LAUNCHER_HOME": str(launcher_home)}
    yield env
    run_cli("down", env=env, timeout=60)


def write_profile(folder: Path, port: int, models: dict[str, Path]) -> Path:
    """Two generation groups (``chat`` overflows to ``small``), an on-demand group with a
    3 s TTL and an embedding group."""
    path = folder / "box.toml"
    path.write_text(
        f"""format = 2
name = "box"
[router]
port = {port}
default_model = "chat"
[[groups]]
name = "chat"
aliases = ["llama3.1:8b", "Qwen/Qwen2.5-32B"]
model = "{models["chat"]}"
layout = "cpu:1"
users = 1
ctx = 512
[groups.route]
overflow_to = "small"
overflow_queue = 0
[[groups]]
name = "small"
model = "{models["small"]}"
layout = "cpu:1"
users = 2
ctx = 512
[[groups]]
name = "lazy"
model = "{models["lazy"]}"
layout = "cpu:1"
users = 1
ctx = 512
on_demand = true
ttl_s = 3
[[groups]]
name = "embed"
kind = "embedding"
model = "{models["chat"]}"
layout = "cpu:1"
users = 1
ctx = 512
[groups.server]
extra_args = ["--pooling", "mean"]
"""
    )
    return path


def test_a_fleet_of_model_groups_routes_by_name_overflows_and_loads_on_demand(
    model_factory: Callable[..., Path], fleet_env: dict[str, str], tmp_path: Path
) -> None:
    port = base_port()
    profile = write_profile(
        tmp_path,
        port,
        {
            "chat": model_factory("llama"),
            "small": model_factory("qwen3"),
            "lazy": model_factory("gemma3"),
        },
    )
    result = run_cli("up", str(profile), "--detach", env=fleet_env, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    router = f"http://127.0.0.1:{port}"
    groups = groups_of(fleet_env)
    assert {n: g["state"] for n, g in groups.items()} == {
        "chat": "running",
        "small": "running",
        "lazy": "unloaded",  # on demand: not started by up
        "embed": "running",
    }
    fleet = status(fleet_env)["fleets"][0]  # type: ignore[index]
    url = {w["group"]: w["url"] for w in fleet["workers"]}
    assert [w["id"] for w in fleet["workers"]] == [f"box/w{i}" for i in range(4)]
    embed_argv = next(w["argv"] for w in fleet["workers"] if w["group"] == "embed")
    assert "--embeddings" in embed_argv

    # /v1/models: every name with its group and state
    code, _, models = call(f"{router}/v1/models")
    listed = {m["id"]: (m["group"], m["state"]) for m in models["data"]}  # type: ignore[index,union-attr]
    assert listed == {
        "chat": ("chat", "running"),
        "llama3.1:8b": ("chat", "running"),
        "Qwen/Qwen2.5-32B": ("chat", "running"),
        "small": ("small", "running"),
        "lazy": ("lazy", "unloaded"),
        "embed": ("embed", "running"),
    }

    # by name and alias to the right worker (its own /metrics), by default model without one
    before = {g: predicted(url[g]) for g in ("chat", "small")}
    for name, group in (("llama3.1:8b", "chat"), ("small", "small"), (None, "chat")):
        code, headers, body = chat(router, name)
        assert code == 200, body
        assert headers["X-Llama-Launcher-Group"] == group
        assert body["model"] == group  # the group that served it
    after = {g: predicted(url[g]) for g in ("chat", "small")}
    assert after["chat"] - before["chat"] == 8 and after["small"] - before["small"] == 4

    # an unknown name: 404 with the names; an embedding model on the chat route: 400
    code, _, body = chat(router, "gpt-5")
    assert code == 404 and "llama3.1:8b" in body["error"]["message"]  # type: ignore[index]
    code, _, body = chat(router, "embed")
    assert code == 400 and "/v1/embeddings" in body["error"]["message"]  # type: ignore[index]
    code, headers, body = call(f"{router}/v1/embeddings", {"input": "hello"})
    assert code == 200 and headers["X-Llama-Launcher-Group"] == "embed", body
    assert len(body["data"][0]["embedding"]) == 256  # type: ignore[index]

    # overflow: chat has one slot and overflows at once; three at a time -> two go to small
    results: list[dict[str, str]] = []

    def one() -> None:
        _, headers, _ = chat(router, "chat", tokens=200)
        results.append(headers)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    served = sorted(h["X-Llama-Launcher-Group"] for h in results)
    assert served.count("small") >= 1 and served.count("chat") >= 1, served
    assert all(
        h.get("X-Llama-Launcher-Routed") == "overflow"
        for h in results
        if h["X-Llama-Launcher-Group"] == "small"
    )
    assert router_metric(router, "overflowed_total", "chat") == served.count("small")

    # the on-demand group loads on its first request, and unloads after its TTL
    code, headers, body = chat(router, "lazy")
    assert code == 200 and headers["X-Llama-Launcher-Group"] == "lazy", body
    assert groups_of(fleet_env)["lazy"]["state"] == "running"
    wait_for(lambda: groups_of(fleet_env)["lazy"]["state"] == "unloaded", 20, "lazy to unload")
    lazy_worker = next(
        w
        for w in status(fleet_env)["fleets"][0]["workers"]  # type: ignore[index]
        if w["group"] == "lazy"
    )
    assert lazy_worker["state"] == "stopped" and lazy_worker["pid"] is None

    # group load|unload by hand
    loaded = run_cli("group", "load", "box", "lazy", env=fleet_env, timeout=120)
    assert loaded.returncode == 0 and "is running" in loaded.stdout, loaded.stderr
    unloaded = run_cli("group", "unload", "box", "lazy", env=fleet_env, timeout=60)
    assert unloaded.returncode == 0 and "is unloaded" in unloaded.stdout, unloaded.stderr
    wrong = run_cli("group", "load", "box", "nope", env=fleet_env)
    assert wrong.returncode != 0 and "its groups: chat, small, lazy, embed" in wrong.stderr
    assert "Traceback" not in wrong.stderr

    # kill -9 of the chat worker: small keeps answering while chat restarts
    chat_worker = next(
        w
        for w in status(fleet_env)["fleets"][0]["workers"]  # type: ignore[index]
        if w["group"] == "chat"
    )
    os.kill(int(chat_worker["pid"]), signal.SIGKILL)
    for _ in range(5):
        code, headers, _ = chat(router, "small")
        assert code == 200 and headers["X-Llama-Launcher-Group"] == "small"
    code, _, body = chat(router, "chat")
    # while it restarts: a 503 that says so at once (overflow needs a full group, not a dead one)
    assert code in (200, 503), body

    def chat_back() -> bool:
        w = next(
            w
            for w in status(fleet_env)["fleets"][0]["workers"]  # type: ignore[index]
            if w["group"] == "chat"
        )
        return w["state"] == "healthy" and w["pid"] != chat_worker["pid"]

    wait_for(chat_back, 30, "the chat worker to come back")
    wait_for(lambda: chat(router, "chat")[0] == 200, 10, "chat to answer again")
    assert pid_alive(int(status(fleet_env)["fleets"][0]["supervisor_pid"]))  # type: ignore[index]


def test_up_with_several_models_names_the_groups_and_routes_each(
    model_factory: Callable[..., Path], fleet_env: dict[str, str]
) -> None:
    port = base_port()
    a, b = model_factory("llama"), model_factory("qwen3")
    result = run_cli(
        "up",
        str(a),
        str(b),
        "--users",
        "1,2",
        "--ctx",
        "512",
        "--port",
        str(port),
        "--detach",
        env=fleet_env,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    fleet = status(fleet_env)["fleets"][0]  # type: ignore[index]
    assert fleet["name"] == "llama-tiny-1"  # the first group's
    groups = {g["name"]: g for g in fleet["groups"]}
    assert list(groups) == ["llama-tiny-1", "qwen3-tiny-1"]
    slots = {w["group"]: w["slots_total"] for w in fleet["workers"]}
    assert slots == {"llama-tiny-1": 1, "qwen3-tiny-1": 2}
    ports = sorted(w["port"] for w in fleet["workers"])
    assert ports == [port + 1, port + 2]
    router = f"http://127.0.0.1:{port}"
    code, _, body = chat(router, None)
    assert code == 400 and "qwen3-tiny-1" in body["error"]["message"]  # type: ignore[index]
    for name in groups:
        code, headers, _ = chat(router, name)
        assert code == 200 and headers["X-Llama-Launcher-Group"] == name


def test_a_profile_with_a_rule_to_no_group_is_refused_in_one_sentence(
    model_factory: Callable[..., Path], fleet_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        f'format = 2\n[[groups]]\nname = "a"\nmodel = "{model_factory("llama")}"\n'
        '[groups.route]\noverflow_to = "b"\n'
    )
    result = run_cli("up", str(path), env=fleet_env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "routes to 'b', which is not another group of this fleet" in result.stderr


def test_bench_of_a_profile_of_several_groups_measures_one_group_or_each(
    model_factory: Callable[..., Path], fleet_env: dict[str, str], tmp_path: Path
) -> None:
    from launcher.app import bench

    path = write_profile(
        tmp_path,
        base_port(),
        {
            "chat": model_factory("llama"),
            "small": model_factory("qwen3"),
            "lazy": model_factory("gemma3"),
        },
    )
    assert bench.groups_to_bench(str(path), None) == ("chat", "small", "lazy", "embed")
    assert bench.groups_to_bench(str(path), "small") == ("small",)
    wrong = run_cli("bench", str(path), "--group", "nope", env=fleet_env)
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert "its groups: chat, small, lazy, embed" in wrong.stderr
    result = run_cli(
        "bench", str(path), "--group", "small", "--users", "1", "--tokens", "8",
        "--prompt-tokens", "16", "--requests-per-user", "1", "--json", env=fleet_env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)["runs"]
    assert [r["layout"] for r in runs] == ["cpu:1"] and runs[0]["errors"] == 0
    assert "group small" in result.stderr
