"""Synthetic models: a GGUF with a real model's shape, made from llama.cpp's vocabularies."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from launcher.errors import LauncherError
from launcher.model import synthetic
from launcher.model.spec import ModelSpec, read_model_spec
from launcher.run.server_binary import find_server, find_vocab

Progress = Callable[[int, int], None]


def make_model(
    out: Path,
    arch: str,
    size: str,
    *,
    vocab: Path | None = None,
    ctx: int | None = None,
    parts: int = 1,
    sparse: bool = False,
    force: bool = False,
    llama_server: str | None = None,
    progress: Progress | None = None,
) -> list[Path]:
    """Write a synthetic ``arch`` model of ``size`` to ``out`` (``parts`` files); the files.

    The vocabulary comes from the installed llama.cpp unless ``vocab`` is given; nothing is
    replaced without ``force``."""
    shape = synthetic.shape_for(arch, size)
    synthetic.check_targets(out, parts, force)
    if vocab is None:
        try:
            server = find_server(llama_server)
        except LauncherError:
            server = None
        vocab = find_vocab(synthetic.vocab_file_name(shape), server)
    return synthetic.write_model(
        out, shape, vocab, context=ctx, parts=parts, sparse=sparse, force=force, progress=progress
    )


def describe(arch: str, size: str) -> str:
    shape = synthetic.shape_for(arch, size)
    return f"{shape.arch} {shape.size}"


def read_model(path: Path) -> ModelSpec:
    """A model's header: shape, layers and their bytes (never the weights)."""
    return read_model_spec(path)
