"""Synthetic models: a GGUF with a real model's shape, made from llama.cpp's vocabularies."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from launcher.errors import LauncherError
from launcher.model import scan, synthetic
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


def found_models() -> list[scan.FoundModel]:
    """The GGUF models on this box, in the usual places (docs: ``model.scan``)."""
    return scan.scan()


def no_model_given(command: str, limit: int = 8) -> LauncherError:
    """The sentence for a command that needs a model and got none: the models found on this
    box, else how to make a tiny one."""
    found = found_models()
    if not found:
        return LauncherError(
            f"Give a model: 'llama-launcher {command} MODEL.gguf'. None was found in ~/models, "
            "llama.cpp's, LM Studio's, Ollama's or the Hugging Face cache; make a tiny one with "
            "'llama-launcher make-model ~/models/tiny.gguf --arch llama --shape tiny'."
        )
    shown = "; ".join(
        f"{m.path} ({m.size_bytes / 2**30:.2f} GiB, {m.source})" for m in found[:limit]
    )
    more = f"; and {len(found) - limit} more" if len(found) > limit else ""
    return LauncherError(
        f"Give a model: 'llama-launcher {command} MODEL.gguf'. Found on this box: {shown}{more}."
    )
