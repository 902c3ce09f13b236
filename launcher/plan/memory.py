"""Per-card memory of a layout, following llama.cpp's own placement rules.

- Layers: ``-ngl N`` offloads the last N of ``n_layer + 1`` layers (the output head is layer
  ``n_layer``); ``-ts`` shares are of layers: layer ``il`` goes to the first card whose
  cumulative share exceeds ``il / n_offloaded``. The token embedding stays in host RAM; a tied
  output head is a copy of it on the card that holds the output layer.
- KV cache per layer on that layer's card: ``-c`` cells in total (``-np`` streams of ``c/np``),
  padded to 256; sliding-window layers keep ``min(ctx, pad256(n_swa + n_ubatch))`` cells per
  stream. Rows are f16 (2 bytes), q8_0 (34/32) or q4_0 (18/32) per element.
- Per card: a CUDA context and library workspace, and a compute buffer that grows with the
  embedding width. Both constants were fitted to nvidia-smi after loading seven synthetic
  models on an H100 (docs/planner.md): within 45 MiB of every one.
- On the CPU the compute buffer grows with the feed-forward and embedding widths (fitted on
  llama.cpp's own "CPU compute buffer size" for three llama shapes: ``CPU_COMPUTE_*``), and
  llama.cpp keeps a private repacked copy of the weights of some types (``REPACKED_TYPES``,
  by the CPU's instruction set) beside the mapped file: each CPU worker holds its own.
- Without flash attention the compute buffer holds the attention scores of a micro-batch
  against the whole cache: ``n_head x cells per stream x n_ubatch`` floats, plus half the
  buffer it has with flash attention (fitted on five shapes on the CPU, within 10 MiB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from launcher.model.spec import ModelSpec

MIB = 1 << 20
CUDA_CONTEXT_BYTES = 520 * MIB  # CUDA context, cuBLAS workspace, driver allocations per card
COMPUTE_BASE_BYTES = 100 * MIB
COMPUTE_PER_EMBD_UBATCH = 12.8 * 4  # bytes of compute buffer per n_embd x n_ubatch element
# CPU compute buffer (flash attention on): bytes per n_ubatch x n_ff and n_ubatch x n_embd
# float, and a base; fitted on llama tiny, 1b and 8b (docs/validation/2026-11-30-cpu-holdout.md)
CPU_COMPUTE_PER_FF = 3.222 * 4
CPU_COMPUTE_PER_EMBD = 3.333 * 4
CPU_COMPUTE_BASE = int(3.11 * MIB)
FA_OFF_BASE = 5 * MIB  # without flash attention: scores + half the buffer + this
# a quantized KV cache with flash attention on a card: llama.cpp converts K and V to f16 for
# the kernel, per stream: 159 MiB more than the f16 plan on the H200 with 16 streams (8b
# shape, q8_0), none measurable with 4 (qwen3 14b): 10 MiB a stream, fitted on those two (a
# -sm tensor worker did not show it)
QUANT_KV_GPU_BYTES_PER_SLOT = 10 * MIB
# a CPU worker's own memory beyond its buffers (tokenizer, server state, libraries): its RSS
# less the buffers llama.cpp reports was 0 to 100 MiB over seven models on the CI box
CPU_RUNTIME_BYTES = 48 * MIB
# a CUDA build of llama-server maps its CUDA libraries even for a CPU worker: RSS 245-276 MiB
# above the plan on the 2x H200 box (docs/validation/2026-11-30-h200-speed-holdout.md)
CUDA_LIBRARIES_BYTES = 256 * MIB
KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
CELL_PAD = 256
# -sm tensor holds more per card than its share of weights, KV and compute: fitted on 4x H100
# (8B: 800 MiB, 70B: 824 MiB above the plain split; docs/validation/2026-11-27-h100x4-planner.md)
TENSOR_SPLIT_EXTRA_BYTES = 812 * MIB


@dataclass(frozen=True)
class CardMemory:
    """What one card holds after loading (bytes)."""

    card: int  # index of the card on its host
    uuid: str | None
    layers: tuple[int, ...]  # layer indices (n_layer = the output layer)
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int  # compute buffer plus the per-card CUDA overhead
    free_bytes: int  # free before loading
    host: str | None = None  # another box whose card this is (lent over RPC); None: this box

    @property
    def label(self) -> str:
        """``3``, or ``lan-box:0`` for a card of another box."""
        return f"{self.host}:{self.card}" if self.host else str(self.card)

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes

    @property
    def free_after_bytes(self) -> int:
        return self.free_bytes - self.total_bytes

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.card,
            "host": self.host,
            "uuid": self.uuid,
            "weights_bytes": self.weights_bytes,
            "kv_bytes": self.kv_bytes,
            "compute_bytes": self.compute_bytes,
            "total_bytes": self.total_bytes,
            "free_after_bytes": self.free_after_bytes,
        }


def _pad(n: int, to: int = CELL_PAD) -> int:
    return (n + to - 1) // to * to


def kv_cells(spec: ModelSpec, layer: int, ctx: int, slots: int, n_ubatch: int) -> int:
    """KV cells ``layer`` keeps for ``slots`` streams of ``ctx`` tokens."""
    if spec.is_swa(layer) and spec.swa_window:
        return slots * min(_pad(ctx), _pad(spec.swa_window + n_ubatch))
    return _pad(ctx * slots)


def kv_layer_bytes(
    spec: ModelSpec, layer: int, ctx: int, slots: int, kv_type: str, n_ubatch: int = 512
) -> int:
    """Bytes of K and V cache of one layer."""
    k, v = spec.kv_width(layer)
    per_cell = (k + v) * KV_BYTES_PER_ELEMENT[kv_type]
    return int(kv_cells(spec, layer, ctx, slots, n_ubatch) * per_cell)


def kv_bytes_per_token(spec: ModelSpec, kv_type: str) -> float:
    """KV bytes one token of context adds over all full-attention layers (read per decode)."""
    total = 0.0
    for layer in range(spec.n_layer):
        k, v = spec.kv_width(layer)
        total += (k + v) * KV_BYTES_PER_ELEMENT[kv_type]
    return total


def compute_buffer_bytes(
    spec: ModelSpec,
    n_ubatch: int = 512,
    gpu: bool = True,
    flash_attn: bool = True,
    ctx_per_slot: int = 4096,
    kv_type: str = "f16",
    slots: int = 1,
) -> int:
    """Compute buffer of one device, plus the CUDA context when ``gpu``."""
    if gpu:
        buffer = COMPUTE_BASE_BYTES + int(COMPUTE_PER_EMBD_UBATCH * spec.n_embd * n_ubatch)
    else:
        ff = spec.n_ff or 4 * spec.n_embd
        buffer = CPU_COMPUTE_BASE + int(
            n_ubatch * (CPU_COMPUTE_PER_FF * ff + CPU_COMPUTE_PER_EMBD * spec.n_embd)
        )
    if not flash_attn:
        scores = spec.n_head * _pad(ctx_per_slot) * n_ubatch * 4
        buffer = max(buffer, scores + buffer // 2 + FA_OFF_BASE)
    if gpu and kv_type != "f16":
        buffer += QUANT_KV_GPU_BYTES_PER_SLOT * slots
    return buffer + (CUDA_CONTEXT_BYTES if gpu else 0)


# Weight types llama.cpp's CPU backend repacks (ggml-cpu/repack.cpp, the pinned llama.cpp):
# on x86 with AVX2 (Q2_K with AVX-512), rows in multiples of 8; on ARM with the dot-product
# instructions, rows in multiples of 4 (Q4_K, Q5_K, Q6_K: of 8).
_X86_REPACK = {"Q4_0": "avx2", "Q4_K": "avx2", "IQ4_NL": "avx2", "MXFP4": "avx2", "Q2_K": "avx512f"}
_ARM_REPACK_4 = {"Q4_0", "IQ4_NL", "MXFP4", "Q8_0"}
_ARM_REPACK_8 = {"Q4_K", "Q5_K", "Q6_K"}


def repacked_types(cpu_flags: Sequence[str]) -> set[str]:
    """The weight types this CPU's llama.cpp keeps a repacked copy of."""
    flags = set(cpu_flags)
    if "asimddp" in flags:
        return _ARM_REPACK_4 | _ARM_REPACK_8
    return {t for t, needs in _X86_REPACK.items() if needs in flags}


def cpu_repack_bytes(spec: ModelSpec, cpu_flags: Sequence[str]) -> int:
    """Bytes of the private repacked copy a CPU worker makes of ``spec``'s weights."""
    flags = set(cpu_flags)
    types = repacked_types(cpu_flags)
    arm = "asimddp" in flags
    total = 0
    for name, rows8, rows4 in spec.matmul_bytes:
        if name in types:
            total += rows4 if arm and name in _ARM_REPACK_4 else rows8
    return total


def layer_weight_bytes(spec: ModelSpec, layer: int) -> int:
    """Weights of layer ``layer``; ``n_layer`` is the output head (and final norm)."""
    if layer == spec.n_layer:
        return spec.output_bytes + spec.other_bytes
    return spec.layer_bytes[layer]


def assign_layers(n_layer: int, shares: Sequence[float], n_gpu_layers: int) -> list[list[int]]:
    """Which of the ``n_layer + 1`` layers each card gets, as llama.cpp assigns them."""
    total_layers = n_layer + 1
    offloaded = min(n_gpu_layers, total_layers)
    start = total_layers - offloaded
    total = sum(shares)
    cumulative = []
    acc = 0.0
    for share in shares:
        acc += share / total
        cumulative.append(acc)
    out: list[list[int]] = [[] for _ in shares]
    for il in range(start, total_layers):
        pos = (il - start) / offloaded
        device = next((i for i, c in enumerate(cumulative) if pos < c - 1e-12), len(shares) - 1)
        out[device].append(il)
    return out


def layer_split_memory(
    spec: ModelSpec,
    cards: Sequence[tuple[int, str | None, int]],  # (index, uuid, free bytes)
    shares: Sequence[float],
    ctx: int,
    slots: int,
    kv_type: str,
    n_ubatch: int = 512,
    n_gpu_layers: int | None = None,
    extra_first_card: int = 0,
    flash_attn: bool = True,
) -> tuple[list[CardMemory], int]:
    """Per-card memory of a ``-sm layer`` (or single-card) worker, and its host bytes.

    ``extra_first_card`` adds bytes to the first card (a vision projector).
    """
    ngl = spec.n_layer + 1 if n_gpu_layers is None else n_gpu_layers
    placed = assign_layers(spec.n_layer, shares, ngl)
    out = []
    for i, ((index, uuid, free), layers) in enumerate(zip(cards, placed, strict=True)):
        weights = sum(layer_weight_bytes(spec, il) for il in layers)
        kv = sum(
            kv_layer_bytes(spec, il, ctx, slots, kv_type, n_ubatch)
            for il in layers
            if il < spec.n_layer
        )
        if i == 0:
            weights += extra_first_card
        out.append(
            CardMemory(
                index,
                uuid,
                tuple(layers),
                weights,
                kv,
                compute_buffer_bytes(spec, n_ubatch, True, flash_attn, ctx, kv_type, slots),
                free,
            )
        )
    on_gpu = {il for layers in placed for il in layers}
    host = spec.token_embd_bytes
    for il in range(spec.n_layer + 1):
        if il not in on_gpu:
            host += layer_weight_bytes(spec, il)
            if il < spec.n_layer:
                host += kv_layer_bytes(spec, il, ctx, slots, kv_type, n_ubatch)
    if len(on_gpu) < spec.n_layer + 1:
        host += compute_buffer_bytes(spec, n_ubatch, False, flash_attn, ctx)
    return out, host


def tensor_split_memory(
    spec: ModelSpec,
    cards: Sequence[tuple[int, str | None, int]],
    shares: Sequence[float],
    ctx: int,
    slots: int,
    kv_type: str,
    n_ubatch: int = 512,
    flash_attn: bool = True,
) -> tuple[list[CardMemory], int]:
    """Per-card memory of a ``-sm tensor`` worker: weights and KV split by ``shares``."""
    total = sum(shares)
    weights = sum(layer_weight_bytes(spec, il) for il in range(spec.n_layer + 1))
    kv = sum(kv_layer_bytes(spec, il, ctx, slots, kv_type, n_ubatch) for il in range(spec.n_layer))
    out = [
        CardMemory(
            index,
            uuid,
            tuple(range(spec.n_layer + 1)),
            int(weights * s / total),
            int(kv * s / total),
            # no quantized-KV term: the 70B -sm tensor q8_0 worker on the H200 matched the plan
            # without it (22966 MiB against 22964)
            compute_buffer_bytes(spec, n_ubatch, True, flash_attn, ctx) + TENSOR_SPLIT_EXTRA_BYTES,
            free,
        )
        for (index, uuid, free), s in zip(cards, shares, strict=True)
    ]
    return out, spec.token_embd_bytes


@dataclass(frozen=True)
class CpuWorkerMemory:
    """Host bytes of a CPU worker: the mapped file is shared by all workers of the same file
    (page cache); the repacked weights, KV, compute and output buffers are each worker's own."""

    shared_bytes: int
    repacked_bytes: int
    kv_bytes: int
    compute_bytes: int
    output_bytes: int
    runtime_bytes: int = CPU_RUNTIME_BYTES

    @property
    def private_bytes(self) -> int:
        return (
            self.repacked_bytes
            + self.kv_bytes
            + self.compute_bytes
            + self.output_bytes
            + self.runtime_bytes
        )


def cpu_worker_bytes(
    spec: ModelSpec,
    ctx: int,
    slots: int,
    kv_type: str,
    n_ubatch: int = 512,
    cpu_flags: Sequence[str] = (),
    flash_attn: bool = True,
    cuda_build: bool = False,
) -> CpuWorkerMemory:
    """What one CPU worker serving ``slots`` streams of ``ctx`` tokens holds in RAM
    (``cuda_build``: the llama-server is built with CUDA, as on a box with cards)."""
    kv = sum(kv_layer_bytes(spec, il, ctx, slots, kv_type, n_ubatch) for il in range(spec.n_layer))
    return CpuWorkerMemory(
        shared_bytes=spec.weights_bytes,
        repacked_bytes=cpu_repack_bytes(spec, cpu_flags),
        kv_bytes=kv,
        compute_bytes=compute_buffer_bytes(spec, n_ubatch, False, flash_attn, ctx),
        output_bytes=slots * spec.n_vocab * 4,  # one row of logits per stream
        runtime_bytes=CPU_RUNTIME_BYTES + (CUDA_LIBRARIES_BYTES if cuda_build else 0),
    )


def balanced_shares(
    spec: ModelSpec,
    free: Sequence[int],
    ctx: int,
    slots: int,
    kv_type: str,
    n_ubatch: int = 512,
    flash_attn: bool = True,
) -> list[int]:
    """Layer counts per card (a ``-ts``) that leave every card about the same free memory.

    Cards are filled in order (llama.cpp keeps layers contiguous); the output layer goes to the
    last card. Each next layer goes where it leaves the most headroom, keeping contiguity.
    """
    n = len(free)
    total_layers = spec.n_layer + 1
    if n == 1:
        return [total_layers]
    per_layer = [
        layer_weight_bytes(spec, il)
        + (kv_layer_bytes(spec, il, ctx, slots, kv_type, n_ubatch) if il < spec.n_layer else 0)
        for il in range(total_layers)
    ]
    fixed = compute_buffer_bytes(spec, n_ubatch, True, flash_attn, ctx, kv_type, slots)
    budget = [f - fixed for f in free]
    # target: equal headroom h with sum(used) = sum(per_layer) -> h = (sum(budget)-need)/n
    need = sum(per_layer)
    headroom = (sum(budget) - need) / n
    counts = []
    start = 0
    for i in range(n):
        if i == n - 1:
            counts.append(total_layers - start)
            break
        target = budget[i] - headroom
        used = 0
        count = 0
        while start + count < total_layers - (n - 1 - i):
            nxt = per_layer[start + count]
            # take the layer if that brings us closer to the target
            if abs(used + nxt - target) <= abs(used - target):
                used += nxt
                count += 1
            else:
                break
        counts.append(max(count, 1) if start + max(count, 1) < total_layers else count)
        start += counts[-1]
    return counts
