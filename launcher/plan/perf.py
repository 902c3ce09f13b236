"""Predicted tokens/s: decode is bound by memory bandwidth, batches add compute.

One decode step of a worker serving B users, summed over the cards of a layer split:

    step(B) = step_s + layers x layer_s                        host: scheduling, kernel launches
              + B x user_s                                      host: sampling, per-sequence work
              + (weights read at B + B x KV read) / (bandwidth x efficiency)
              + B x 2 x params per token / (FP32 FLOPs x compute_eff)              B <= 8
                                     or / (tensor FLOPs x tensor_core_eff)         B > 8
              + (stages - 1) x (BOUNDARY_S + activations / link)            (layer split)

Weights read at B: all dense weights, and of a mixture of experts the experts that B tokens
touch: each token picks ``k`` of ``n`` experts per layer, so B tokens touch
``1 - (1 - k/n)^B`` of them (one token reads k/n; 16 tokens of a 8-of-128 model read 64%).
KV read: each user's cache up to its current context. A tensor split runs its cards in
parallel (the slowest sets the step) and pays two all-reduces per layer over its slowest link.
Up to 8 tokens llama.cpp multiplies with dot-product kernels on the CUDA cores (MMVQ),
more with the tensor cores (MMQ): that is where batches get cheap. Tokens/s = B / step(B).
Prompt processing is compute bound, plus activation transfers over
PCIe (which is where x1 risers hurt).

The constants (``GpuConstants``, ``CpuConstants``) are data: ``plan/fits.py`` reads the boxes
they were fitted on from ``fits.toml``, or takes what ``plan --measure`` measured here.
A card's FLOPs are its catalog figures (FP32, tensor); a card the catalog lacks gets the
H100's ratios to its bandwidth (``FLOPS_PER_BYTE_S``, ``TENSOR_FLOPS_PER_BYTE_S``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from launcher.plan.fits import MMVQ_MAX_BATCH, CpuConstants, GpuConstants, Point, experts_touched

BOUNDARY_S = 100e-6  # hand-off between two stages of a layer split, per step
PCIE_ALLREDUCE_S = 150e-6  # one all-reduce through PCIe and host memory (assumed, not measured)
ACT_BYTES = 4  # f32 activations
FLOPS_PER_BYTE_S = 67e12 / 3.35e12  # H100 SXM: FP32 FLOP/s per byte/s of bandwidth
TENSOR_FLOPS_PER_BYTE_S = 989e12 / 3.35e12  # and its dense FP16 tensor FLOP/s
# prompt processing (tensor cores) per FP32 FLOP/s of the card (48 FLOP per byte/s of an H100)
PP_COMPUTE_EFF = 48.0 / FLOPS_PER_BYTE_S


@dataclass(frozen=True)
class Stage:
    """One card's (or one CPU worker's) share of a worker."""

    bandwidth_bytes_s: float
    weight_bytes: int  # dense weights read every step on this card
    active_params: float  # parameters multiplied per token on this card
    layers: int
    link_bytes_s: float | None  # PCIe link to the next stage / the host (None: unknown)
    nvlink: bool = False
    flops: float | None = None  # peak FP32 FLOP/s (None: from the bandwidth)
    tensor_flops: float | None = None  # peak dense FP16 tensor FLOP/s (None: from the bandwidth)
    expert_bytes: int = 0  # all expert weights on this card (mixture of experts)
    n_expert: int = 0
    n_expert_used: int = 0

    @property
    def peak_flops(self) -> float:
        return self.flops or self.bandwidth_bytes_s * FLOPS_PER_BYTE_S

    @property
    def peak_tensor_flops(self) -> float:
        return self.tensor_flops or self.bandwidth_bytes_s * TENSOR_FLOPS_PER_BYTE_S

    def compute_s(self, batch: int, c: GpuConstants) -> float:
        """Seconds of multiplying ``batch`` tokens here (CUDA cores up to 8, else tensor)."""
        work = batch * 2 * self.active_params
        if batch <= MMVQ_MAX_BATCH:
            return work / (self.peak_flops * c.compute_eff)
        return work / (self.peak_tensor_flops * c.tensor_core_eff)

    def weights_read(self, batch: int) -> float:
        """Weight bytes one step of ``batch`` tokens reads here."""
        if not self.n_expert or not self.expert_bytes:
            return float(self.weight_bytes)
        return self.weight_bytes + self.expert_bytes * experts_touched(
            batch, self.n_expert, self.n_expert_used
        )


@dataclass(frozen=True)
class Throughput:
    """Predictions for one layout."""

    single_user_tok_s: float
    aggregate_tok_s: float
    prompt_tok_s: float

    def to_json(self) -> dict[str, float]:
        return {
            "single_user_tok_s": round(self.single_user_tok_s, 1),
            "aggregate_tok_s": round(self.aggregate_tok_s, 1),
            "prompt_tok_s": round(self.prompt_tok_s, 1),
        }


def _link(stage: Stage) -> float:
    return stage.link_bytes_s or 16e9


def _card_time(s: Stage, c: GpuConstants, batch: int, kv_read: float, share: float) -> float:
    read = s.weights_read(batch) + batch * kv_read * share
    return read / (s.bandwidth_bytes_s * c.efficiency) + s.compute_s(batch, c)


def layer_split_step(
    stages: Sequence[Stage],
    batch: int,
    n_embd: int,
    c: GpuConstants,
    kv_read_bytes: float = 0.0,
) -> float:
    """Seconds per decode step of a layer split (one stage = a single card)."""
    step = c.step_s + batch * c.user_s
    total_weights = sum(s.weight_bytes + s.expert_bytes for s in stages) or 1
    for s in stages:
        share = (s.weight_bytes + s.expert_bytes) / total_weights
        step += _card_time(s, c, batch, kv_read_bytes, share) + s.layers * c.layer_s
    for s in stages[:-1]:
        step += BOUNDARY_S + batch * n_embd * ACT_BYTES / _link(s)
    return step


def tensor_split_step(
    stages: Sequence[Stage],
    batch: int,
    n_embd: int,
    n_layer: int,
    c: GpuConstants,
    kv_read_bytes: float = 0.0,
) -> float:
    """Seconds per decode step of ``-sm tensor``: cards in parallel, all-reduce per layer."""
    total_weights = sum(s.weight_bytes + s.expert_bytes for s in stages) or 1
    slowest = 0.0
    for s in stages:
        share = (s.weight_bytes + s.expert_bytes) / total_weights
        t = _card_time(s, c, batch, kv_read_bytes, share)
        t += s.compute_s(batch, c) * (1 / c.tensor_compute_eff - 1)
        slowest = max(slowest, t)
    n = len(stages)
    base = slowest + c.step_s + batch * c.user_s + c.tensor_step_s
    if all(s.nvlink for s in stages):
        return base + n_layer * c.tensor_layer_s
    link = min(_link(s) for s in stages)
    exchange_bytes = batch * n_embd * ACT_BYTES * 2 * (n - 1) / n
    per_reduce = PCIE_ALLREDUCE_S + exchange_bytes / link
    return base + n_layer * (c.tensor_layer_s + 2 * per_reduce)


def cpu_step(
    stage: Stage, batch: int, threads: int, c: CpuConstants, kv_read_bytes: float = 0.0
) -> float:
    """Seconds per decode step of a CPU worker using ``threads`` threads (``c.step``)."""
    point = Point(
        "", batch, 1.0, stage.layers, stage.weights_read(batch), kv_read_bytes, stage.active_params
    )
    return c.step(point, threads)


def prompt_tok_s(
    stages: Sequence[Stage], n_embd: int, n_layer: int, tensor: bool, n_ubatch: int = 512
) -> float:
    """Prompt tokens per second for one user (a batch of ``n_ubatch`` tokens at a time)."""
    compute = [n_ubatch * 2 * s.active_params / (PP_COMPUTE_EFF * s.peak_flops) for s in stages]
    act = n_ubatch * n_embd * ACT_BYTES
    if tensor:
        n = len(stages)
        link = min(_link(s) for s in stages)
        transfer = (
            0.0 if all(s.nvlink for s in stages) else (n_layer * 2 * act * 2 * (n - 1) / n / link)
        )
        seconds = max(compute) + transfer
    else:
        seconds = sum(compute) + sum(act / _link(s) for s in stages[:-1])
    return n_ubatch / seconds if seconds > 0 else 0.0


def served_tok_s(
    aggregate_tok_s: float,
    prompt_tok_s: float,
    workers: int,
    users: int,
    prompt_tokens: int,
    answer_tokens: int,
) -> float:
    """Answer tokens/s of ``users`` who each send ``prompt_tokens`` and read ``answer_tokens``
    back, again and again: decoding at ``aggregate_tok_s`` takes turns with processing the
    prompts (one at a time on each worker, so in parallel over up to ``workers`` workers)."""
    if aggregate_tok_s <= 0 or answer_tokens <= 0:
        return 0.0
    decode_s = answer_tokens * users / aggregate_tok_s
    prompt_s = (
        users * prompt_tokens / (prompt_tok_s * max(1, min(users, workers)))
        if prompt_tok_s > 0
        else 0.0
    )
    return answer_tokens * users / (decode_s + prompt_s)
