"""Synthetic models: real shapes, valid tensor tables, split and sparse forms."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from launcher.errors import LauncherError
from launcher.model import gguf_file, synthetic


def test_every_shape_has_a_consistent_tensor_table() -> None:
    for arch, sizes in synthetic.SHAPES.items():
        for size, shape in sizes.items():
            table = synthetic.tensor_table(shape, 32000)
            names = [t.name for t in table]
            assert len(names) == len(set(names)), f"{arch} {size}"
            assert f"blk.{shape.n_layer - 1}.attn_q.weight" in names
            assert ("output.weight" in names) != shape.tied_embeddings
            for t in table:
                assert t.nbytes > 0  # every row fits its quant block


def test_llama_8b_has_the_size_of_a_q4_k_m_file() -> None:
    # Meta-Llama-3-8B-Instruct Q4_K_M is 4.92 GB (4,920,734,016 bytes).
    table = synthetic.tensor_table(synthetic.shape_for("llama", "8b"), 128256)
    total = sum(t.nbytes for t in table)
    assert 4.7e9 < total < 5.1e9
    layer0 = {t.name: t.type_name for t in table if t.name.startswith("blk.0.")}
    assert layer0["blk.0.attn_q.weight"] == "Q4_K"
    assert layer0["blk.0.attn_v.weight"] == "Q6_K"  # Q4_K_M's "more bits" layers
    assert layer0["blk.0.attn_norm.weight"] == "F32"


def test_gemma3_270m_falls_back_where_rows_do_not_fit_k_blocks() -> None:
    table = synthetic.tensor_table(synthetic.shape_for("gemma3", "270m"), 262144)
    embd = next(t for t in table if t.name == "token_embd.weight")
    assert embd.shape == (640, 262144) and embd.type_name == "Q5_0"


def test_split_writes_n_parts_with_split_metadata(model_factory: Callable[..., Path]) -> None:
    first = model_factory("llama", parts=2)
    parts = list(gguf_file.iter_split_paths(first))
    headers = [gguf_file.read_header(p) for p in parts]
    assert [h.metadata["split.no"] for h in headers] == [0, 1]
    assert all(h.metadata["split.count"] == 2 for h in headers)
    total = sum(len(h.tensors) for h in headers)
    assert headers[0].metadata["split.tensors.count"] == total
    assert all(h.tensors for h in headers)
    assert headers[0].metadata["general.architecture"] == "llama"


def test_sparse_model_uses_almost_no_disk(model_factory: Callable[..., Path]) -> None:
    path = model_factory("llama", sparse=True)
    dense = model_factory("llama")
    assert path.stat().st_size == dense.stat().st_size
    assert path.stat().st_blocks * 512 < dense.stat().st_size / 4  # only the header is data


def test_context_override_is_recorded(vocab_dir: Path, tmp_path: Path) -> None:
    shape = synthetic.shape_for("qwen3", "tiny")
    out = tmp_path / "q.gguf"
    synthetic.write_model(
        out, shape, vocab_dir / synthetic.vocab_file_name(shape), context=1024, sparse=True
    )
    assert gguf_file.read_header(out).metadata["qwen3.context_length"] == 1024


def test_existing_file_is_not_replaced_without_force(vocab_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine.gguf"
    out.write_bytes(b"precious")
    shape = synthetic.shape_for("llama", "tiny")
    vocab = vocab_dir / synthetic.vocab_file_name(shape)
    with pytest.raises(LauncherError, match="already exists.*--force"):
        synthetic.write_model(out, shape, vocab, sparse=True)
    assert out.read_bytes() == b"precious"
    synthetic.write_model(out, shape, vocab, sparse=True, force=True)
    assert gguf_file.read_header(out).metadata["general.architecture"] == "llama"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_unknown_arch_and_shape_list_the_valid_ones() -> None:
    with pytest.raises(LauncherError, match="llama, qwen3, qwen3moe, gemma3"):
        synthetic.shape_for("mistral", "7b")
    with pytest.raises(LauncherError, match="tiny, 270m, 1b, 4b, 12b, 27b"):
        synthetic.shape_for("gemma3", "2b")
