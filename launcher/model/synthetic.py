"""Synthetic GGUF models with the shape of real model families, for tests and GPU checks.

A synthetic model has the hyper-parameters, tensor table and tokenizer of a real model, and
quantized weights in a Q4_K_M-like mix filled with random bytes whose f16 block scales are set
to a small finite value (so no NaN or Inf reaches the logits). With ``sparse=True`` the data
region is left as a hole: weights read as zero and the file costs no disk. llama-server loads
and runs both the same way, and speed and memory do not depend on the values.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from launcher.errors import LauncherError
from launcher.model import gguf_file as gf
from launcher.model.gguf_file import TensorSpec

Q4_K, Q6_K, Q5_0, Q8_0, F32 = (gf.GGML_TYPE_IDS[n] for n in ("Q4_K", "Q6_K", "Q5_0", "Q8_0", "F32"))
FILE_TYPE_Q4_K_M = 15

# Where each quantized block keeps its f16 scales: (offset, count) within the block.
_SCALE_BYTES: dict[int, tuple[int, int]] = {
    Q4_K: (0, 2),
    Q6_K: (208, 1),
    Q5_0: (0, 1),
    Q8_0: (0, 1),
}
_SMALL_F16 = struct.pack("<e", 2.0**-12)  # a small finite scale, ~0.00024

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class ModelShape:
    """Hyper-parameters of one real model (dimensions as in its config.json)."""

    arch: str
    size: str
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    context: int
    tied_embeddings: bool
    rope_base: float
    vocab: str
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_expert: int = 0
    sliding_window: int = 0
    rms_eps: float = 1e-5


def _llama(
    size: str, embd: int, layers: int, heads: int, kv: int, hd: int, ff: int, ctx: int, tied: bool
) -> ModelShape:
    return ModelShape(
        "llama", size, embd, layers, heads, kv, hd, ff, ctx, tied, 500000.0, "llama-bpe"
    )


def _qwen3(
    size: str,
    embd: int,
    layers: int,
    heads: int,
    kv: int,
    ff: int,
    ctx: int,
    tied: bool,
    hd: int = 128,
) -> ModelShape:
    return ModelShape(
        "qwen3", size, embd, layers, heads, kv, hd, ff, ctx, tied, 1000000.0, "qwen2", rms_eps=1e-6
    )


def _gemma3(
    size: str, embd: int, layers: int, heads: int, kv: int, hd: int, ff: int, ctx: int, window: int
) -> ModelShape:
    return ModelShape(
        "gemma3",
        size,
        embd,
        layers,
        heads,
        kv,
        hd,
        ff,
        ctx,
        True,
        1000000.0,
        "gemma-4",
        sliding_window=window,
        rms_eps=1e-6,
    )


# Sizes from the models' published configs (Llama 3.x, Qwen3, Gemma 3). "tiny" shapes are
# small enough for CI and keep every structural feature (GQA, tied output, SWA, experts).
SHAPES: dict[str, dict[str, ModelShape]] = {
    "llama": {
        "tiny": _llama("tiny", 256, 2, 4, 2, 64, 512, 4096, False),
        "1b": _llama("1b", 2048, 16, 32, 8, 64, 8192, 131072, True),
        "3b": _llama("3b", 3072, 28, 24, 8, 128, 8192, 131072, True),
        "8b": _llama("8b", 4096, 32, 32, 8, 128, 14336, 131072, False),
        "70b": _llama("70b", 8192, 80, 64, 8, 128, 28672, 131072, False),
    },
    "qwen3": {
        "tiny": _qwen3("tiny", 256, 2, 4, 2, 512, 4096, True, hd=64),
        "0.6b": _qwen3("0.6b", 1024, 28, 16, 8, 3072, 40960, True),
        "4b": _qwen3("4b", 2560, 36, 32, 8, 9728, 40960, True),
        "8b": _qwen3("8b", 4096, 36, 32, 8, 12288, 40960, False),
        "14b": _qwen3("14b", 5120, 40, 40, 8, 17408, 40960, False),
        "32b": _qwen3("32b", 5120, 64, 64, 8, 25600, 40960, False),
    },
    "qwen3moe": {
        "tiny": ModelShape(
            "qwen3moe",
            "tiny",
            256,
            2,
            4,
            2,
            64,
            512,
            4096,
            False,
            1000000.0,
            "qwen2",
            n_expert=8,
            n_expert_used=2,
            n_ff_expert=256,
            rms_eps=1e-6,
        ),
        "30b-a3b": ModelShape(
            "qwen3moe",
            "30b-a3b",
            2048,
            48,
            32,
            4,
            128,
            6144,
            40960,
            False,
            1000000.0,
            "qwen2",
            n_expert=128,
            n_expert_used=8,
            n_ff_expert=768,
            rms_eps=1e-6,
        ),
    },
    "gemma3": {
        "tiny": _gemma3("tiny", 256, 6, 4, 1, 64, 512, 4096, 128),
        "270m": _gemma3("270m", 640, 18, 4, 1, 256, 2048, 32768, 512),
        "1b": _gemma3("1b", 1152, 26, 4, 1, 256, 6912, 32768, 512),
        "4b": _gemma3("4b", 2560, 34, 8, 4, 256, 10240, 131072, 1024),
        "12b": _gemma3("12b", 3840, 48, 16, 8, 256, 15360, 131072, 1024),
        "27b": _gemma3("27b", 5376, 62, 32, 16, 128, 21504, 131072, 1024),
    },
}


def shape_for(arch: str, size: str) -> ModelShape:
    """The shape of ``arch`` at ``size``; an unknown name lists the valid ones."""
    if arch not in SHAPES:
        raise LauncherError(f"Unknown architecture '{arch}'; choose one of: {', '.join(SHAPES)}.")
    sizes = SHAPES[arch]
    if size not in sizes:
        raise LauncherError(
            f"Unknown shape '{size}' for {arch}; choose one of: {', '.join(sizes)}."
        )
    return sizes[size]


def vocab_file_name(shape: ModelShape) -> str:
    """The llama.cpp ``models/`` vocabulary file this shape takes its tokenizer from."""
    return f"ggml-vocab-{shape.vocab}.gguf"


def _use_more_bits(i: int, n: int) -> bool:
    # llama.cpp's Q4_K_M gives attn_v and ffn_down Q6_K on these layers (llama-quant.cpp).
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _quant(base: int, row: int) -> int:
    """``base`` if rows fit its 256-element blocks, else llama.cpp's fallback type."""
    if row % 256 == 0:
        return base
    return Q5_0 if base == Q4_K else Q8_0


def tensor_table(shape: ModelShape, n_vocab: int) -> list[TensorSpec]:
    """The tensors llama.cpp's loader expects for ``shape``, in ggml order (ne0 first)."""
    e, hd = shape.n_embd, shape.head_dim
    q_dim, kv_dim = hd * shape.n_head, hd * shape.n_head_kv
    out = [TensorSpec("token_embd.weight", (e, n_vocab), _quant(Q4_K, e))]
    for i in range(shape.n_layer):
        more = _use_more_bits(i, shape.n_layer)

        def t(name: str, dims: tuple[int, ...], base: int = Q4_K, i: int = i) -> TensorSpec:
            type_id = F32 if base == F32 else _quant(base, dims[0])
            return TensorSpec(f"blk.{i}.{name}.weight", dims, type_id)

        layer = [
            t("attn_norm", (e,), F32),
            t("attn_q", (e, q_dim)),
            t("attn_k", (e, kv_dim)),
            t("attn_v", (e, kv_dim), Q6_K if more else Q4_K),
            t("attn_output", (q_dim, e)),
        ]
        if shape.arch in ("qwen3", "qwen3moe", "gemma3"):
            layer += [t("attn_q_norm", (hd,), F32), t("attn_k_norm", (hd,), F32)]
        if shape.arch == "gemma3":
            layer.append(t("post_attention_norm", (e,), F32))
        layer.append(t("ffn_norm", (e,), F32))
        if shape.n_expert:
            ff, n_x = shape.n_ff_expert, shape.n_expert
            layer += [
                t("ffn_gate_inp", (e, n_x), F32),
                t("ffn_gate_exps", (e, ff, n_x)),
                t("ffn_up_exps", (e, ff, n_x)),
                t("ffn_down_exps", (ff, e, n_x), Q6_K if more else Q4_K),
            ]
        else:
            ff = shape.n_ff
            layer += [
                t("ffn_gate", (e, ff)),
                t("ffn_up", (e, ff)),
                t("ffn_down", (ff, e), Q6_K if more else Q4_K),
            ]
        if shape.arch == "gemma3":
            layer.append(t("post_ffw_norm", (e,), F32))
        out += layer
    out.append(TensorSpec("output_norm.weight", (e,), F32))
    if not shape.tied_embeddings:
        out.append(TensorSpec("output.weight", (e, n_vocab), _quant(Q6_K, e)))
    return out


def hyper_parameters(shape: ModelShape, context: int, n_vocab: int) -> list[bytes]:
    """The architecture's metadata keys, packed."""
    a = shape.arch
    kv = [
        gf.pack_kv("general.architecture", a, gf.STRING),
        gf.pack_kv("general.name", f"synthetic {a} {shape.size}", gf.STRING),
        gf.pack_kv("general.file_type", FILE_TYPE_Q4_K_M, gf.UINT32),
        gf.pack_kv("general.quantization_version", 2, gf.UINT32),
        gf.pack_kv(f"{a}.vocab_size", n_vocab, gf.UINT32),
        gf.pack_kv(f"{a}.context_length", context, gf.UINT32),
        gf.pack_kv(f"{a}.embedding_length", shape.n_embd, gf.UINT32),
        gf.pack_kv(f"{a}.block_count", shape.n_layer, gf.UINT32),
        gf.pack_kv(f"{a}.feed_forward_length", shape.n_ff, gf.UINT32),
        gf.pack_kv(f"{a}.attention.head_count", shape.n_head, gf.UINT32),
        gf.pack_kv(f"{a}.attention.head_count_kv", shape.n_head_kv, gf.UINT32),
        gf.pack_kv(f"{a}.attention.key_length", shape.head_dim, gf.UINT32),
        gf.pack_kv(f"{a}.attention.value_length", shape.head_dim, gf.UINT32),
        gf.pack_kv(f"{a}.attention.layer_norm_rms_epsilon", shape.rms_eps, gf.FLOAT32),
        gf.pack_kv(f"{a}.rope.freq_base", shape.rope_base, gf.FLOAT32),
        gf.pack_kv(f"{a}.rope.dimension_count", shape.head_dim, gf.UINT32),
    ]
    if shape.n_expert:
        kv += [
            gf.pack_kv(f"{a}.expert_count", shape.n_expert, gf.UINT32),
            gf.pack_kv(f"{a}.expert_used_count", shape.n_expert_used, gf.UINT32),
            gf.pack_kv(f"{a}.expert_feed_forward_length", shape.n_ff_expert, gf.UINT32),
        ]
    if shape.sliding_window:
        kv += [
            gf.pack_kv(f"{a}.attention.sliding_window", shape.sliding_window, gf.UINT32),
            gf.pack_kv(f"{a}.rope.freq_base_swa", 10000.0, gf.FLOAT32),
        ]
    return kv


def read_tokenizer(vocab_path: Path) -> tuple[list[bytes], int]:
    """The packed ``tokenizer.*`` metadata of a llama.cpp vocabulary file and its size."""
    header = gf.read_header(vocab_path, raw_prefixes=("tokenizer.",))
    tokens = header.metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, gf.ArrayRef):
        raise LauncherError(f"{vocab_path} has no tokenizer.ggml.tokens; it is not a vocabulary.")
    return list(header.raw_metadata.values()), tokens.count


def part_paths(out: Path, parts: int) -> list[Path]:
    """The files a model written to ``out`` in ``parts`` parts occupies."""
    if parts <= 1:
        return [out]
    stem = out.name.removesuffix(".gguf")
    return [out.with_name(f"{stem}-{i:05d}-of-{parts:05d}.gguf") for i in range(1, parts + 1)]


def _split_tensors(tensors: list[TensorSpec], parts: int) -> list[list[TensorSpec]]:
    """Cut the table into ``parts`` runs of about equal bytes, each with one tensor at least."""
    if parts > len(tensors):
        raise LauncherError(
            f"Cannot split {len(tensors)} tensors into {parts} parts; use a smaller --split."
        )
    total = max(sum(t.nbytes for t in tensors), 1)
    runs: list[list[TensorSpec]] = [[] for _ in range(parts)]
    current = 0
    acc = 0
    for idx, t in enumerate(tensors):
        remaining = len(tensors) - idx
        target = min(parts - 1, acc * parts // total)
        later_parts = parts - 1 - current
        if runs[current] and later_parts and (target > current or remaining <= later_parts):
            current += 1
        runs[current].append(t)
        acc += t.nbytes
    return runs


def _block_template(type_id: int, nbytes: int, rng_seed: int) -> bytes:
    """Random blocks of ``type_id`` with small finite f16 scales, about ``nbytes`` long."""
    import numpy as np  # deferred: only writing weights needs it (sparse models do not)

    if type_id == F32:
        return np.full(max(nbytes // 4, 1), 1.0, dtype="<f4").tobytes()
    _, _, block_bytes = gf.GGML_TYPES[type_id]
    n_blocks = max(nbytes // block_bytes, 1)
    data = np.random.default_rng(rng_seed).integers(0, 256, n_blocks * block_bytes, dtype=np.uint8)
    blocks = data.reshape(n_blocks, block_bytes)
    offset, count = _SCALE_BYTES[type_id]
    scale = np.frombuffer(_SMALL_F16 * count, dtype=np.uint8)
    blocks[:, offset : offset + 2 * count] = scale
    return blocks.tobytes()


def check_targets(out: Path, parts: int, force: bool) -> list[Path]:
    """The files ``write_model`` would write; raises if one exists and not ``force``."""
    if parts < 1:
        raise LauncherError("--split must be 1 or more.")
    if out.suffix != ".gguf":
        raise LauncherError(f"{out} does not end in .gguf; name the output file NAME.gguf.")
    targets = part_paths(out, parts)
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        raise LauncherError(
            f"{existing[0]} already exists; choose another name or pass --force to replace it."
        )
    if out.parent.exists() and not out.parent.is_dir():
        raise LauncherError(f"{out.parent} is not a folder; choose another place for the model.")
    return targets


def write_model(
    out: Path,
    shape: ModelShape,
    vocab_path: Path,
    *,
    context: int | None = None,
    parts: int = 1,
    sparse: bool = False,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> list[Path]:
    """Write a synthetic model of ``shape`` to ``out`` (or its ``-0000i-of-0000N`` parts).

    Files are written beside their final name and renamed at the end, so an interrupted run
    leaves nothing half-written. Refuses to replace an existing file unless ``force``.
    Returns the paths written.
    """
    targets = check_targets(out, parts, force)
    try:  # a first model's folder (~/models) is made for it
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LauncherError(
            f"Cannot create {out.parent} ({err.strerror}); choose another place."
        ) from err
    tokenizer, n_vocab = read_tokenizer(vocab_path)
    ctx = context if context is not None else shape.context
    if ctx < 256:
        raise LauncherError("--ctx must be at least 256.")
    tensors = tensor_table(shape, n_vocab)
    metadata = hyper_parameters(shape, ctx, n_vocab) + tokenizer
    runs = _split_tensors(tensors, parts)
    total = sum(t.nbytes for t in tensors)
    done = 0
    templates: dict[int, bytes] = {}
    temps: list[Path] = []
    try:
        for index, (target, run) in enumerate(zip(targets, runs, strict=True)):
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            temps.append(Path(tmp_name))
            with os.fdopen(fd, "wb") as f:
                part_meta = metadata if index == 0 else [metadata[0]]
                if parts > 1:
                    part_meta = [
                        *part_meta,
                        gf.pack_kv("split.no", index, gf.UINT16),
                        gf.pack_kv("split.count", parts, gf.UINT16),
                        gf.pack_kv("split.tensors.count", len(tensors), gf.INT32),
                    ]
                gf.write_header(f, part_meta, run, gf.DEFAULT_ALIGNMENT)
                start = f.tell()
                for t in run:
                    size = t.nbytes
                    if sparse:
                        f.seek(size, 1)
                    else:
                        if t.type_id not in templates:
                            templates[t.type_id] = _block_template(t.type_id, 8 << 20, t.type_id)
                        _write_repeated(f, templates[t.type_id], size)
                    pad = (-size) % gf.DEFAULT_ALIGNMENT
                    f.seek(pad, 1)
                    done += size
                    if progress:
                        progress(done, total)
                f.truncate(start + gf.data_size(run, gf.DEFAULT_ALIGNMENT))
        for tmp, target in zip(temps, targets, strict=True):
            tmp.chmod(0o644)
            tmp.replace(target)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    return targets


def _write_repeated(f: BinaryIO, template: bytes, size: int) -> None:
    write = f.write
    view = memoryview(template)
    while size > 0:
        chunk = min(size, len(view))
        write(view[:chunk])
        size -= chunk
