"""The real llama-server loads and generates from synthetic models (CPU build, 127.0.0.1)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import start_llama_server, stop_process


def generate(llama_server: Path, model: Path, log: Path, n_predict: int = 16) -> dict[str, object]:
    proc, url = start_llama_server(llama_server, model, log, slots=1, ctx=512)
    try:
        body = json.dumps({"prompt": "Hello", "n_predict": n_predict, "ignore_eos": True})
        req = urllib.request.Request(
            f"{url}/completion", data=body.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            result: dict[str, object] = json.load(resp)
        return result
    finally:
        stop_process(proc)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "qwen3moe", "gemma3"])
def test_tiny_model_generates_16_tokens(
    arch: str, llama_server: Path, model_factory: Callable[..., Path], tmp_path: Path
) -> None:
    model = model_factory(arch)
    result = generate(llama_server, model, tmp_path / "server.log")
    assert result["tokens_predicted"] == 16, (tmp_path / "server.log").read_text()[-2000:]


def test_split_model_generates_16_tokens(
    llama_server: Path, model_factory: Callable[..., Path], tmp_path: Path
) -> None:
    first = model_factory("llama", parts=2)
    assert first.name.endswith("-00001-of-00002.gguf")
    assert first.with_name(first.name.replace("00001-of", "00002-of")).is_file()
    result = generate(llama_server, first, tmp_path / "server.log")
    assert result["tokens_predicted"] == 16


def test_sparse_model_generates_16_tokens(
    llama_server: Path, model_factory: Callable[..., Path], tmp_path: Path
) -> None:
    result = generate(llama_server, model_factory("llama", sparse=True), tmp_path / "server.log")
    assert result["tokens_predicted"] == 16
