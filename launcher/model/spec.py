"""What the planner needs to know about a model, read from its GGUF header(s) only.

``read_model_spec(path)`` follows multi-part ``-0000i-of-0000N`` files, sums tensor bytes per
layer, and reads the attention geometry that sizes the KV cache: heads, head dimensions,
sliding-window layers (Gemma 2/3), MLA (DeepSeek 2/3) and experts (MoE). Architectures it
does not know fall back to tensor shapes, and say that their KV estimate is approximate.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from launcher.errors import LauncherError
from launcher.model import gguf_file as gf

_BLOCK = re.compile(r"^blk\.(\d+)\.")
# llama.cpp's LLAMA_FTYPE names, by general.file_type
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}
KNOWN_ARCHS = {
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "qwen3moe",
    "qwen2moe",
    "gemma2",
    "gemma3",
    "phi3",
    "deepseek2",
    "granite",
    "olmo2",
}
# Sliding-window pattern (every Nth layer is global) where the GGUF does not carry one.
_SWA_PATTERN = {"gemma2": 2, "gemma3": 6}


@dataclass(frozen=True)
class ModelSpec:
    """A model's shape as the planner sees it. Byte counts are of the quantized tensors."""

    path: Path
    parts: tuple[Path, ...]
    arch: str
    name: str
    quantization: str
    n_layer: int
    n_embd: int
    n_vocab: int
    n_head: int
    n_head_kv: tuple[int, ...]  # per layer (some models vary it)
    head_dim_k: int
    head_dim_v: int
    training_context: int
    layer_bytes: tuple[int, ...]  # sum of blk.N.* for each N
    token_embd_bytes: int
    output_bytes: int  # output.weight, or token_embd again when the output is tied
    output_tied: bool
    other_bytes: int  # output_norm and anything else outside blk.*
    parameters: int
    swa_window: int = 0
    swa_layers: tuple[bool, ...] = ()  # True where a layer uses the sliding window
    mla_kv_rank: int = 0  # DeepSeek MLA: cached latent width (K), no separate V
    mla_rope_dim: int = 0
    n_expert: int = 0
    n_expert_used: int = 0
    expert_bytes: tuple[int, ...] = ()  # per layer, the *_exps tensors
    kv_approximate: bool = False
    # weights that feed a matrix multiply (blk.* 2D and expert 3D tensors, output.weight), by
    # type: (type name, bytes whose rows come in multiples of 8, of 4); llama.cpp's CPU backend
    # repacks some types of these into a private copy (plan/memory.py cpu_repack_bytes)
    matmul_bytes: tuple[tuple[str, int, int], ...] = ()
    n_ff: int = 0  # feed-forward width (of one expert for a mixture of experts)
    file_bytes: int = 0
    header_bytes_read: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def weights_bytes(self) -> int:
        return (
            sum(self.layer_bytes)
            + self.token_embd_bytes
            + self.other_bytes
            + (0 if self.output_tied else self.output_bytes)
        )

    def to_json(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "arch": self.arch,
            "name": self.name,
            "quantization": self.quantization,
            "parameters": self.parameters,
            "n_layer": self.n_layer,
            "weights_bytes": self.weights_bytes,
            "training_context": self.training_context,
            "parts": len(self.parts),
            "notes": list(self.notes),
        }

    def is_swa(self, layer: int) -> bool:
        return bool(self.swa_layers) and self.swa_layers[layer]

    def kv_width(self, layer: int) -> tuple[int, int]:
        """K and V elements per cached token in ``layer``."""
        if self.mla_kv_rank:
            return self.mla_kv_rank + self.mla_rope_dim, 0
        heads = self.n_head_kv[layer]
        return heads * self.head_dim_k, heads * self.head_dim_v

    def active_bytes_per_token(self) -> int:
        """Weight bytes one decoded token reads: all but unused experts and the embedding rows."""
        total = sum(self.layer_bytes) + self.output_bytes + self.other_bytes
        if self.n_expert and self.expert_bytes:
            unused = 1 - self.n_expert_used / self.n_expert
            total -= int(sum(self.expert_bytes) * unused)
        return total


def _int(meta: dict[str, gf.MetaValue], key: str, default: int | None = None) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        if default is None:
            raise KeyError(key)
        return default
    return value


def read_headers(path: Path) -> list[gf.GGUFHeader]:
    """The headers of ``path`` and, for a split model, of every part; clear errors otherwise."""
    first = gf.read_header(path)
    count = first.metadata.get("split.count")
    if not isinstance(count, int) or count <= 1:
        return [first]
    parts = list(gf.iter_split_paths(path))
    if len(parts) != count:
        raise LauncherError(
            f"{path} is part of a {count}-part model; give the first part, "
            f"NAME-00001-of-{count:05d}.gguf."
        )
    missing = [p for p in parts if not p.is_file()]
    if missing:
        raise LauncherError(
            f"{missing[0].name} is missing: {path.name} is one of {count} parts; download every "
            "part into the same folder."
        )
    return [first] + [gf.read_header(p) for p in parts[1:]]


def read_model_spec(path: Path) -> ModelSpec:
    """A ``ModelSpec`` from the header(s) of ``path``; raises ``LauncherError`` when broken."""
    headers = read_headers(path)
    meta = headers[0].metadata
    arch = str(meta.get("general.architecture", ""))
    if not arch:
        raise LauncherError(f"{path} has no general.architecture; it is not a llama.cpp model.")
    tensors = [t for h in headers for t in h.tensors]
    by_name = {t.name: t for t in tensors}
    if "token_embd.weight" not in by_name:
        raise LauncherError(f"{path} has no token_embd.weight; it is not a language model.")
    notes: list[str] = []
    a = arch
    try:
        n_layer = _int(meta, f"{a}.block_count")
        n_embd = _int(meta, f"{a}.embedding_length")
    except KeyError as err:
        raise LauncherError(
            f"{path} lacks the metadata key {err.args[0]}; convert it again."
        ) from err
    layer_bytes = [0] * n_layer
    expert_bytes = [0] * n_layer
    other = 0
    for t in tensors:
        match = _BLOCK.match(t.name)
        if match and int(match.group(1)) < n_layer:
            i = int(match.group(1))
            layer_bytes[i] += t.nbytes
            if "_exps." in t.name:
                expert_bytes[i] += t.nbytes
        elif t.name not in ("token_embd.weight", "output.weight"):
            other += t.nbytes
    embd = by_name["token_embd.weight"]
    tied = "output.weight" not in by_name
    matmul: dict[str, list[int]] = {}
    output_name = "token_embd.weight" if tied else "output.weight"  # a tied head reuses it
    for t in tensors:
        is_block = _BLOCK.match(t.name) is not None and len(t.shape) in (2, 3)
        if (is_block and t.name.endswith(".weight")) or t.name == output_name:
            rows = t.shape[1] if len(t.shape) > 1 else 0
            entry = matmul.setdefault(gf.GGML_TYPES[t.type_id][0], [0, 0])
            entry[0] += t.nbytes if rows % 8 == 0 else 0
            entry[1] += t.nbytes if rows % 4 == 0 else 0
    output_bytes = embd.nbytes if tied else by_name["output.weight"].nbytes
    n_vocab = embd.shape[1] if len(embd.shape) > 1 else _int(meta, f"{a}.vocab_size", 0)
    n_head = _int(meta, f"{a}.attention.head_count", 0)
    kv_meta = meta.get(f"{a}.attention.head_count_kv")
    if isinstance(kv_meta, gf.ArrayRef):
        per_layer = [int(v) for v in headers[0].read_array(f"{a}.attention.head_count_kv")]  # type: ignore[arg-type]
        n_head_kv = tuple(per_layer[:n_layer])
    else:
        n_head_kv = (_int(meta, f"{a}.attention.head_count_kv", n_head),) * n_layer
    head_k = _int(meta, f"{a}.attention.key_length", n_embd // n_head if n_head else 0)
    head_v = _int(meta, f"{a}.attention.value_length", head_k)
    approximate = a not in KNOWN_ARCHS
    if approximate:
        # read the KV width off the attn_k / attn_v tensors of each layer
        widths = []
        for i in range(n_layer):
            k = by_name.get(f"blk.{i}.attn_k.weight")
            widths.append(k.shape[1] if k is not None and len(k.shape) > 1 else 0)
        if head_k and any(widths):
            n_head_kv = tuple(w // head_k for w in widths)
        notes.append(
            f"architecture '{a}' is not one the planner knows: the KV cache estimate "
            "comes from tensor shapes and is approximate"
        )
    swa = _int(meta, f"{a}.attention.sliding_window", 0)
    swa_layers: tuple[bool, ...] = ()
    if swa:
        pattern_meta = meta.get(f"{a}.attention.sliding_window_pattern")
        if isinstance(pattern_meta, gf.ArrayRef):
            swa_layers = tuple(
                bool(v) for v in headers[0].read_array(f"{a}.attention.sliding_window_pattern")
            )[:n_layer]
        else:
            period = (
                pattern_meta
                if isinstance(pattern_meta, int) and pattern_meta > 0
                else (_SWA_PATTERN.get(a, 0))
            )
            if period:
                # llama.cpp: layer il is dense when (il + 1) % period == 0
                swa_layers = tuple((i + 1) % period != 0 for i in range(n_layer))
            else:
                swa_layers = (True,) * n_layer
    mla_rank = _int(meta, f"{a}.attention.kv_lora_rank", 0)
    mla_rope = _int(meta, f"{a}.rope.dimension_count", 0) if mla_rank else 0
    file_type = meta.get("general.file_type")
    quant = FILE_TYPES.get(file_type, "") if isinstance(file_type, int) else ""
    if not quant:
        counts = Counter(t.type_name for t in tensors if len(t.shape) > 1)
        quant = counts.most_common(1)[0][0] if counts else "unknown"
    parameters = 0
    for t in tensors:
        n = 1
        for d in t.shape:
            n *= d
        parameters += n
    name = str(meta.get("general.name", "")) or path.stem
    return ModelSpec(
        path=path,
        parts=tuple(h.path for h in headers),
        arch=a,
        name=name,
        quantization=quant,
        n_layer=n_layer,
        n_embd=n_embd,
        n_vocab=n_vocab,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=head_k,
        head_dim_v=head_v,
        training_context=_int(meta, f"{a}.context_length", 4096),
        layer_bytes=tuple(layer_bytes),
        token_embd_bytes=embd.nbytes,
        output_bytes=output_bytes,
        output_tied=tied,
        other_bytes=other,
        parameters=parameters,
        swa_window=swa,
        swa_layers=swa_layers,
        mla_kv_rank=mla_rank,
        mla_rope_dim=mla_rope,
        n_expert=_int(meta, f"{a}.expert_count", 0),
        n_expert_used=_int(meta, f"{a}.expert_used_count", 0),
        expert_bytes=tuple(expert_bytes),
        kv_approximate=approximate,
        matmul_bytes=tuple((name, b8, b4) for name, (b8, b4) in sorted(matmul.items())),
        n_ff=_int(meta, f"{a}.expert_feed_forward_length", 0)
        or _int(meta, f"{a}.feed_forward_length", 0),
        file_bytes=sum(h.file_size for h in headers),
        header_bytes_read=sum(h.bytes_read for h in headers),
        notes=tuple(notes),
    )


def read_mmproj_bytes(path: Path) -> int:
    """Bytes of a vision projector (``--mmproj``): all its tensors, loaded on one card."""
    header = gf.read_header(path)
    return sum(t.nbytes for t in header.tensors)


def name_from_model(path: Path | str) -> str:
    """The name a model is served under by default (its group's): the file's stem without the
    split suffix, made a valid name (letters, digits, ``-_.``, at most 64, no leading dot)."""
    stem = Path(path).name.removesuffix(".gguf")
    stem = re.sub(r"-\d{5}-of-\d{5}$", "", stem)
    made = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in stem).lstrip(".")
    return made[:64] or "fleet"
