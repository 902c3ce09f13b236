"""The header reader agrees with the gguf package and fails clearly on broken files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from gguf import GGUFReader

from launcher.errors import LauncherError
from launcher.model import gguf_file
from launcher.model.gguf_file import ArrayRef


@pytest.mark.parametrize("arch", ["llama", "qwen3moe", "gemma3"])
def test_header_matches_gguf_reader(arch: str, model_factory: Callable[..., Path]) -> None:
    path = model_factory(arch)
    ours = gguf_file.read_header(path)
    theirs = GGUFReader(path)
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, ref in zip(ours.tensors, theirs.tensors, strict=True):
        assert list(mine.shape) == [int(x) for x in ref.shape]
        assert mine.type_id == int(ref.tensor_type)
        assert ours.data_offset + mine.offset == int(ref.data_offset)
        assert mine.nbytes == int(ref.n_bytes)
    for key, field in theirs.fields.items():
        if key.startswith("GGUF."):
            continue
        value = ours.metadata[key]
        if isinstance(value, ArrayRef):
            assert value.count == len(field.data)
        elif isinstance(value, str):
            assert value == bytes(field.parts[-1]).decode()
        else:
            assert value == pytest.approx(field.parts[-1][0])


def test_array_is_decoded_on_request(model_factory: Callable[..., Path]) -> None:
    header = gguf_file.read_header(model_factory("llama"))
    tokens = header.read_array("tokenizer.ggml.tokens")
    assert len(tokens) == header.metadata["tokenizer.ggml.tokens"].count  # type: ignore[union-attr]
    assert all(isinstance(t, str) for t in tokens[:100])


def test_truncated_file_is_a_clear_error(
    model_factory: Callable[..., Path], tmp_path: Path
) -> None:
    data = model_factory("llama").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(LauncherError, match="truncated"):
        gguf_file.read_header(cut)
    cut.write_bytes(data[:1000])
    with pytest.raises(LauncherError, match="truncated"):
        gguf_file.read_header(cut)


def test_not_a_gguf_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(LauncherError, match="not a GGUF file"):
        gguf_file.read_header(bad)
    with pytest.raises(LauncherError, match="does not exist"):
        gguf_file.read_header(tmp_path / "missing.gguf")


def test_split_paths_are_listed_in_order(tmp_path: Path) -> None:
    first = tmp_path / "m-00001-of-00003.gguf"
    assert [p.name for p in gguf_file.iter_split_paths(first)] == [
        "m-00001-of-00003.gguf",
        "m-00002-of-00003.gguf",
        "m-00003-of-00003.gguf",
    ]
    assert list(gguf_file.iter_split_paths(tmp_path / "single.gguf")) == [tmp_path / "single.gguf"]
