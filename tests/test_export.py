"""``profile export``: llama-swap's config.yaml and llama-server's router-mode presets carry the
argv of our plan; llama-server's router mode answers each model of the exported presets."""

from __future__ import annotations

import configparser
import json
import shlex
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.conftest import free_port, run_cli, stop_process
from tests.test_fleet import base_port, wait_for


def profile(tmp_path: Path, model_factory: Callable[..., Path]) -> Path:
    path = tmp_path / "pair.toml"
    path.write_text(
        f"""format = 2
name = "pair"
[[groups]]
name = "chat"
aliases = ["gpt-4o"]
model = "{model_factory("llama")}"
layout = "cpu:1"
users = 2
ctx = 512
[[groups]]
name = "lazy"
model = "{model_factory("qwen3")}"
layout = "cpu:1"
users = 1
ctx = 512
on_demand = true
ttl_s = 120
"""
    )
    return path


def planned_argv(env: dict[str, str], path: Path) -> dict[str, list[str]]:
    """Each group's worker argv as ``up`` would start it (``plan`` of the profile's groups)."""
    port = str(base_port())
    result = run_cli("up", str(path), "--port", port, "--detach", env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    status = json.loads(run_cli("status", "--json", env=env).stdout)
    run_cli("down", "pair", env=env, timeout=60)
    # the on-demand group is not started, but status gives the argv it would start with
    return {w["group"]: w["argv"] for w in status["fleets"][0]["workers"]}


def test_llama_swap_export_carries_the_planned_commands(
    model_factory: Callable[..., Path], llama_server: Path, launcher_home: Path, tmp_path: Path
) -> None:
    env = {"LLAMA_SERVER": str(llama_server)}
    path = profile(tmp_path, model_factory)
    result = run_cli("profile", "export", str(path), "--format", "llama-swap", env=env)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    argv = planned_argv(env, path)
    assert set(config["models"]) == {"chat", "lazy"}
    for name, model in config["models"].items():
        cmd = shlex.split(model["cmd"])
        port = argv[name][argv[name].index("--port") + 1]
        assert cmd == [("${PORT}" if a == port else a) for a in argv[name]]
        assert model["env"] == ["CUDA_VISIBLE_DEVICES="]
        assert model["checkEndpoint"] == "/health"
    assert config["models"]["chat"]["aliases"] == ["gpt-4o"]
    assert config["models"]["lazy"]["ttl"] == 120 and "ttl" not in config["models"]["chat"]
    assert config["groups"]["pair"]["members"] == ["chat", "lazy"]
    assert config["groups"]["pair"]["swap"] is False
    assert config["hooks"]["on_startup"]["preload"] == ["chat"]

    out = tmp_path / "config.yaml"
    wrote = run_cli("profile", "export", str(path), "--format", "llama-swap", "-o", str(out),
                    env=env)  # fmt: skip
    assert wrote.returncode == 0 and out.read_text() == result.stdout
    again = run_cli("profile", "export", str(path), "--format", "llama-swap", "-o", str(out),
                    env=env)  # fmt: skip
    assert again.returncode != 0 and "already exists; pass --force" in again.stderr


def test_llama_server_presets_start_in_router_mode_and_answer_each_model(
    model_factory: Callable[..., Path], llama_server: Path, launcher_home: Path, tmp_path: Path
) -> None:
    env = {"LLAMA_SERVER": str(llama_server)}
    path = profile(tmp_path, model_factory)
    result = run_cli("profile", "export", str(path), "--format", "llama-server", env=env)
    assert result.returncode == 0, result.stderr
    presets = tmp_path / "presets.ini"
    presets.write_text(result.stdout)
    ini = configparser.ConfigParser()
    ini.read(presets)
    assert ini.sections() == ["*", "chat", "lazy"]
    argv = planned_argv(env, path)
    for group in ("chat", "lazy"):
        section = dict(ini[group])
        a = argv[group]
        assert section["m"] == a[a.index("-m") + 1] and section["c"] == a[a.index("-c") + 1]
        assert section["np"] == a[a.index("-np") + 1] and section["t"] == a[a.index("-t") + 1]
        assert "port" not in section and "host" not in section  # the router mode sets those
    assert ini["chat"]["alias"] == "gpt-4o" and ini["chat"]["load-on-startup"] == "true"
    assert "load-on-startup" not in ini["lazy"]

    # --models-preset, the option llama-server's --help names for a presets file
    help_text = subprocess.run(
        [str(llama_server), "--help"], capture_output=True, text=True, check=False
    ).stdout
    assert "--models-preset" in help_text
    port = free_port()
    proc = subprocess.Popen(
        [str(llama_server), "--models-preset", str(presets), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_for(up, 60, "llama-server's router mode to listen")
        for name, group in (("chat", "chat"), ("gpt-4o", "chat"), ("lazy", "lazy")):
            body = json.dumps(
                {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
            ).encode()
            request = urllib.request.Request(
                f"{url}/v1/chat/completions", body, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=120) as resp:
                answer = json.loads(resp.read())
            assert answer["model"] == group and answer["choices"][0]["message"]["content"]
    finally:
        stop_process(proc)


def test_export_of_an_unknown_profile_is_one_sentence(launcher_home: Path) -> None:
    result = run_cli("profile", "export", "nope", "--format", "llama-swap")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
