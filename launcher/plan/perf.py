"""Predicted tokens/s: decode is bound by memory bandwidth, batches add compute.

One decode step of a worker serving B users:

    step(B) = sum over stages of [bytes_read / (bandwidth x EFFICIENCY) + layers x LAYER_S
              + B x 2 x active_params_on_card / (FLOP_PER_BYTE x bandwidth)]
              + (stages - 1) x (BOUNDARY_S + activations / link)         (layer split)

A tensor split runs its cards in parallel (the slowest sets the step) and pays two
all-reduces per layer over its slowest link. Tokens/s = B / step(B). Prompt processing is
compute bound, plus activation transfers over PCIe (which is where x1 risers hurt).

EFFICIENCY, LAYER_S and FLOP_PER_BYTE are fitted exactly on three points of the measured
baseline in DESIGN.md (4x H100 SXM, synthetic Llama-3): 8B one card 249 tok/s single and 988
at 16 users, 70B one card 38.2 single. The tensor-split constants were refitted on this repo's
4x H100 validation run (docs/validation/2026-11-27-h100x4-planner.md). docs/planner.md shows
every baseline row beside its prediction. Other cards scale with their memory bandwidth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

EFFICIENCY = 0.820  # share of theoretical bandwidth that weight streaming reaches
LAYER_S = 47.6e-6  # fixed cost per layer per step (kernel launches, synchronisation)
FLOP_PER_BYTE = 5.9  # decode FLOP/s per byte/s of memory bandwidth (quantized matmul)
PP_FLOP_PER_BYTE = 48.0  # prompt processing FLOP/s per byte/s of memory bandwidth
BOUNDARY_S = 100e-6  # hand-off between two stages of a layer split, per step
# -sm tensor, refitted on 4x H100 runs of this repo (docs/validation/2026-11-27-h100x4-planner.md):
TENSOR_STEP_S = 2.0e-3  # fixed cost per decode step of a tensor split
TENSOR_LAYER_S = 39.5e-6  # per layer over NVLink, the two all-reduces included
TENSOR_COMPUTE_EFF = 0.4  # how well a tensor split divides the per-user compute between cards
PCIE_ALLREDUCE_S = 150e-6  # one all-reduce through PCIe and host memory (assumed, not measured)
ACT_BYTES = 4  # f32 activations


@dataclass(frozen=True)
class Stage:
    """One card's share of a worker."""

    bandwidth_bytes_s: float
    weight_bytes: int  # weights read per token on this card
    active_params: float  # parameters multiplied per token on this card
    layers: int
    link_bytes_s: float | None  # PCIe link to the next stage / the host (None: unknown)
    nvlink: bool = False


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


def layer_split_step(
    stages: Sequence[Stage], batch: int, n_embd: int, kv_read_bytes: float = 0.0
) -> float:
    """Seconds per decode step of a layer split (one stage = a single card)."""
    step = 0.0
    total_weights = sum(s.weight_bytes for s in stages) or 1
    for s in stages:
        share = s.weight_bytes / total_weights
        read = s.weight_bytes + batch * kv_read_bytes * share
        step += read / (s.bandwidth_bytes_s * EFFICIENCY) + s.layers * LAYER_S
        step += batch * 2 * s.active_params / (FLOP_PER_BYTE * s.bandwidth_bytes_s)
    for s in stages[:-1]:
        step += BOUNDARY_S + batch * n_embd * ACT_BYTES / _link(s)
    return step


def tensor_split_step(
    stages: Sequence[Stage], batch: int, n_embd: int, n_layer: int, kv_read_bytes: float = 0.0
) -> float:
    """Seconds per decode step of ``-sm tensor``: cards in parallel, all-reduce per layer."""
    total_weights = sum(s.weight_bytes for s in stages) or 1
    slowest = 0.0
    for s in stages:
        share = s.weight_bytes / total_weights
        t = (s.weight_bytes + batch * kv_read_bytes * share) / (s.bandwidth_bytes_s * EFFICIENCY)
        t += batch * 2 * s.active_params / (FLOP_PER_BYTE * s.bandwidth_bytes_s)
        t_compute = batch * 2 * s.active_params / (FLOP_PER_BYTE * s.bandwidth_bytes_s)
        t += t_compute * (1 / TENSOR_COMPUTE_EFF - 1)
        slowest = max(slowest, t)
    n = len(stages)
    all_nvlink = all(s.nvlink for s in stages)
    if all_nvlink:
        return slowest + TENSOR_STEP_S + n_layer * TENSOR_LAYER_S
    link = min(_link(s) for s in stages)
    exchange_bytes = batch * n_embd * ACT_BYTES * 2 * (n - 1) / n
    per_reduce = PCIE_ALLREDUCE_S + exchange_bytes / link
    return slowest + TENSOR_STEP_S + n_layer * (TENSOR_LAYER_S + 2 * per_reduce)


def prompt_tok_s(
    stages: Sequence[Stage], n_embd: int, n_layer: int, tensor: bool, n_ubatch: int = 512
) -> float:
    """Prompt tokens per second for one user (a batch of ``n_ubatch`` tokens at a time)."""
    compute = [
        n_ubatch * 2 * s.active_params / (PP_FLOP_PER_BYTE * s.bandwidth_bytes_s) for s in stages
    ]
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
