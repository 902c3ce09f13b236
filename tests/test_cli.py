"""The command line as a user runs it: real processes, one-sentence errors, exit codes."""

from __future__ import annotations

from pathlib import Path

from launcher.model import gguf_file
from tests.conftest import run_cli


def assert_one_sentence(stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("llama-launcher: ")


def test_make_model_writes_a_split_model(llama_server: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    result = run_cli(
        "--llama-server",
        str(llama_server),
        "make-model",
        str(out),
        "--arch",
        "qwen3",
        "--shape",
        "tiny",
        "--split",
        "2",
    )
    assert result.returncode == 0, result.stderr
    first = tmp_path / "m-00001-of-00002.gguf"
    assert str(first) in result.stdout
    assert gguf_file.read_header(first).metadata["general.architecture"] == "qwen3"


def test_make_model_refuses_an_existing_file(llama_server: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    out.write_text("mine")
    result = run_cli(
        "--llama-server",
        str(llama_server),
        "make-model",
        str(out),
        "--arch",
        "llama",
        "--shape",
        "tiny",
    )
    assert result.returncode == 2
    assert_one_sentence(result.stderr)
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert out.read_text() == "mine"
    forced = run_cli(
        "--llama-server",
        str(llama_server),
        "make-model",
        str(out),
        "--arch",
        "llama",
        "--shape",
        "tiny",
        "--sparse",
        "--force",
    )
    assert forced.returncode == 0, forced.stderr
    assert out.read_bytes()[:4] == b"GGUF"


def test_make_model_unknown_arch_or_shape(tmp_path: Path) -> None:
    result = run_cli("make-model", str(tmp_path / "x.gguf"), "--arch", "falcon", "--shape", "7b")
    assert result.returncode == 2
    assert_one_sentence(result.stderr)
    assert "choose one of: llama, qwen3, qwen3moe, gemma3" in result.stderr
    result = run_cli("make-model", str(tmp_path / "x.gguf"), "--arch", "llama", "--shape", "13b")
    assert_one_sentence(result.stderr)
    assert "choose one of: tiny, 1b, 3b, 8b, 70b" in result.stderr


def test_make_model_without_any_llama_cpp_says_to_install(tmp_path: Path) -> None:
    result = run_cli(
        "make-model",
        str(tmp_path / "x.gguf"),
        "--arch",
        "llama",
        "--shape",
        "tiny",
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert_one_sentence(result.stderr)
    assert "llama-launcher install-server" in result.stderr


def test_overview_without_gpu_lists_host_and_server(llama_server: Path) -> None:
    result = run_cli(env={"LLAMA_SERVER": str(llama_server)})
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("Host ") for line in result.stdout.splitlines())
    assert "No NVIDIA GPU" in result.stdout or "GPU 0:" in result.stdout
    assert f"llama-server: {llama_server.resolve()} (from $LLAMA_SERVER)" in result.stdout


def test_python_dash_m_and_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("llama-launcher ")


def test_every_option_says_what_it_does() -> None:
    import argparse

    from launcher.cli.parser import build_parser

    silent = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    walk(child, f"{name} {sub}")
            elif action.help is None:
                silent.append(f"{name} {action.option_strings or action.dest}")

    walk(build_parser(), "llama-launcher")
    assert silent == []
