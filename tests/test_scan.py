"""Models on the box: the usual places, split models as one, the offer when none is given."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from launcher.model.scan import FoundModel, scan, usual_places
from tests.conftest import run_cli


def _file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    return path


def test_split_models_are_one_model_and_caches_are_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    models = home / "models"
    _file(models / "tiny.gguf", 10)
    for i in (1, 2):
        _file(models / f"big-0000{i}-of-00002.gguf", 100)
    _file(models / "broken-00001-of-00003.gguf", 5)  # its other parts are missing
    # the Hugging Face hub: snapshots hold symlinks into blobs
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    repo = home / "hf" / "hub" / "models--org--repo"
    blob = _file(repo / "blobs" / "abc123", 42)
    link = repo / "snapshots" / "rev1" / "q4.gguf"
    link.parent.mkdir(parents=True)
    os.symlink(os.path.relpath(blob, link.parent), link)
    # Ollama: a manifest names its blob
    ollama = home / ".ollama" / "models"
    _file(ollama / "blobs" / "sha256-feed", 7)
    manifest = ollama / "manifests" / "registry.ollama.ai" / "library" / "llama3" / "8b"
    manifest.parent.mkdir(parents=True)
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:feed"}
    manifest.write_text(json.dumps({"layers": [layer]}))
    found = scan(usual_places(home))
    assert [(m.name, m.size_bytes, m.source, m.parts) for m in found] == [
        ("q4.gguf", 42, "huggingface", 1),
        ("big (2 parts)", 200, "models", 2),
        ("tiny.gguf", 10, "models", 1),
        ("llama3:8b", 7, "ollama", 1),
    ]
    assert found[1].path.name == "big-00001-of-00002.gguf"
    assert isinstance(found[0], FoundModel)


def test_a_command_without_a_model_offers_the_ones_here(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "LLAMA_LAUNCHER_HOME": str(tmp_path / "ll")}
    empty = run_cli("plan", env=env)
    assert empty.returncode == 2 and "Traceback" not in empty.stderr
    assert "make-model ~/models/tiny.gguf" in empty.stderr
    _file(tmp_path / "models" / "tiny.gguf", 10)
    for command in ("plan", "up", "bench"):
        offered = run_cli(command, env=env)
        assert offered.returncode == 2, offered.stderr
        assert f"'llama-launcher {command} MODEL.gguf'" in offered.stderr
        assert f"{tmp_path}/models/tiny.gguf (0.00 GiB, models)" in offered.stderr
