"""The speed model's constants and where they come from.

Every constant of the decode model (``plan/perf.py``) was fitted on a real box. The boxes, the
points each was fitted on and the constants that came out are data, in ``fits.toml`` beside
this file; ``tests/test_fits.py`` fits every box again from its points and checks that the
stored constants are what the points give.

A prediction says how it was made (``Basis``): with constants measured here by
``plan --measure``, fitted on a box with this card, fitted on a card of the same family
(compute capability), or a card never seen (the average of the fitted boxes, scaled by the
card's own bandwidth and FLOPs); a CPU likewise. Each basis carries how far off such
predictions were found to be (docs/validation/2026-11-30-h200-speed-holdout.md). After a
full ``bench`` of this box the plan shows the measured figures instead (``bench/results.py``).
"""

from __future__ import annotations

import functools
import itertools
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from launcher.gpu.card import GpuCard
from launcher.gpu.catalog import CATALOG, CatalogCard, match_name
from launcher.model.spec import ModelSpec
from launcher.plan.memory import kv_bytes_per_token

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FITS_FILE = Path(__file__).with_name("fits.toml")


def load_toml(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads(path.read_text())
    return data


# A host whose memory bandwidth was never measured: assumed (a server's several channels; a
# desktop's two give less, which plan --measure finds)
UNMEASURED_HOST_BW = 100e9

# How far off each kind of prediction may be (percent of the measured tok/s), from the
# held-out checks in docs/validation/ (the uncalibrated targets where nothing was seen yet).
ERROR_PCT = {
    "measured": 20.0,  # H200, the wide probe: dense rows within 20% (9 of 11 within 15%)
    # the same card kind on another machine ran batches up to 24% slower than the fitted one
    # (the second H200 run): the fit holds for its box, the band for the kind
    "fitted": 25.0,
    "family": 35.0,
    "unseen": 50.0,
    "cpu-measured": 40.0,  # the CI box's 2 vCPUs: most rows within 40%, its noisiest +211%
    "cpu": 60.0,  # the device host before it was fitted: -49% to +151%
}
# a mixture of experts is predicted less well (the H200: +25% at 4 users and +41% at 8 on one
# card, up to +53% pooled-tensor): its band is this much wider
MOE_EXTRA_PCT = 25.0


@dataclass(frozen=True)
class Basis:
    """Where a prediction's constants come from, and how far off it may be."""

    kind: str  # a key of ERROR_PCT
    detail: str
    extra_pct: float = 0.0  # wider for what the fits saw less of (a mixture of experts)

    @property
    def error_pct(self) -> float:
        return ERROR_PCT[self.kind] + self.extra_pct

    def for_model(self, spec: ModelSpec) -> Basis:
        """This basis for ``spec``: wider for a mixture of experts."""
        if not spec.n_expert:
            return self
        return replace(self, extra_pct=MOE_EXTRA_PCT, detail=f"{self.detail}; experts")

    @property
    def label(self) -> str:
        return f"±{self.error_pct:.0f}% ({self.detail})"

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "detail": self.detail, "error_pct": self.error_pct}


# llama.cpp multiplies up to this many tokens at once with its dot-product kernels on the CUDA
# cores (MMVQ); larger batches go to the tensor-core kernels (MMQ): ggml-cuda/mmvq.cuh
MMVQ_MAX_BATCH = 8


@dataclass(frozen=True)
class Point:
    """One measured decode rate and what that step had to do (one worker, one card)."""

    what: str
    users: int
    tok_s: float
    layers: int
    weight_bytes: float  # weights read per step at this batch (MoE: the experts touched)
    kv_bytes: float  # KV bytes one user's step reads
    params: float  # parameters multiplied per token

    def terms(
        self, bandwidth: float, flops: float, tensor_flops: float | None = None
    ) -> tuple[float, float, float, float, float, float]:
        """One step's parts at full speed, the coefficients of ``GpuConstants``: (1, layers,
        seconds at full bandwidth, users, seconds at full CUDA-core FLOPs (batches up to
        ``MMVQ_MAX_BATCH``), seconds at full tensor-core FLOPs (larger batches))."""
        read = self.weight_bytes + self.users * self.kv_bytes
        work = self.users * 2 * self.params
        small = self.users <= MMVQ_MAX_BATCH
        return (
            1.0,
            float(self.layers),
            read / bandwidth,
            float(self.users),
            work / flops if small else 0.0,
            0.0 if small else work / (tensor_flops or flops),
        )


@dataclass(frozen=True)
class GpuConstants:
    """The decode model's constants for one kind of card on one host (the names are the
    coefficients of ``Point.terms``)."""

    step_s: float  # fixed cost per decode step (host: scheduling, synchronisation)
    layer_s: float  # per layer per step (kernel launches)
    efficiency: float  # share of the peak memory bandwidth that weight streaming reaches
    user_s: float  # per user per step: sampling and the server's per-sequence work
    compute_eff: float  # share of the CUDA cores' FP32 FLOPs that batches up to 8 reach
    tensor_core_eff: float  # share of the tensor cores' FLOPs that larger batches reach
    tensor_step_s: float = 2.0e-3  # -sm tensor: fixed cost per step
    tensor_layer_s: float = 39.5e-6  # -sm tensor: per layer, its two all-reduces included
    tensor_compute_eff: float = 0.4  # how well -sm tensor divides the per-user compute

    @property
    def coefficients(self) -> tuple[float, float, float, float, float, float]:
        """Seconds per unit of each of ``Point.terms``."""
        return (
            self.step_s,
            self.layer_s,
            1 / self.efficiency,
            self.user_s,
            1 / self.compute_eff,
            1 / self.tensor_core_eff,
        )

    def step(self, p: Point, bandwidth: float, flops: float, tensor_flops: float) -> float:
        """Seconds of one step of ``p`` on one card."""
        terms = p.terms(bandwidth, flops, tensor_flops)
        return sum(c * t for c, t in zip(self.coefficients, terms, strict=True))


FITTED_NAMES = ("step_s", "layer_s", "efficiency", "user_s", "compute_eff", "tensor_core_eff")


@dataclass(frozen=True)
class GpuBox:
    """A box the GPU constants were fitted on (``fixed``: constants taken from another box of
    the family because this one's points do not determine them)."""

    name: str
    card: str  # catalog id
    source: str
    constants: GpuConstants
    points: tuple[Point, ...] = field(default=())
    bandwidth_gb_s: float = 0.0  # as measured there (NVML); 0: the catalog's
    fixed: tuple[str, ...] = ()

    @property
    def catalog(self) -> CatalogCard:
        return CATALOG[self.card]


@dataclass(frozen=True)
class CpuConstants:
    """The decode model's constants for a CPU worker (a roofline: a step takes the longer of
    streaming the weights and multiplying them, plus fixed and per-user costs)."""

    step_s: float
    layer_s: float
    thread_bw: float  # bytes/s of weights one thread streams
    host_bw: float  # the host's memory bandwidth, shared by all threads
    thread_flops: float  # FLOP/s one thread reaches on quantized matmuls
    user_s: float = 0.0  # per user per step: sampling, the server's bookkeeping

    def step(self, p: Point, threads: int) -> float:
        """Seconds of one step of ``p`` on ``threads`` threads."""
        read = p.weight_bytes + p.users * p.kv_bytes
        bandwidth = min(threads * self.thread_bw, self.host_bw)
        compute = p.users * 2 * p.params / (threads * self.thread_flops)
        return (
            self.step_s
            + p.layers * self.layer_s
            + max(read / bandwidth, compute)
            + (p.users * self.user_s)
        )


@dataclass(frozen=True)
class CpuBox:
    name: str
    cores: int
    source: str
    constants: CpuConstants
    points: tuple[Point, ...] = field(default=())


@dataclass(frozen=True)
class Fits:
    gpu: tuple[GpuBox, ...]
    cpu: tuple[CpuBox, ...]


def _point(data: dict[str, Any]) -> Point:
    return Point(
        what=str(data["what"]),
        users=int(data["users"]),
        tok_s=float(data["tok_s"]),
        layers=int(data["layers"]),
        weight_bytes=float(data["weight_bytes"]),
        kv_bytes=float(data["kv_bytes"]),
        params=float(data["params"]),
    )


@functools.cache
def load(path: Path = FITS_FILE) -> Fits:
    """The fitted boxes of ``fits.toml``."""
    data = tomllib.loads(path.read_text())
    gpu = tuple(
        GpuBox(
            name=b["name"],
            card=b["card"],
            source=b["source"],
            constants=GpuConstants(**b["constants"]),
            points=tuple(_point(p) for p in b.get("points", [])),
            bandwidth_gb_s=b.get("bandwidth_gb_s", 0.0),
            fixed=tuple(b.get("fixed", [])),
        )
        for b in data.get("gpu", [])
    )
    cpu = tuple(
        CpuBox(
            name=b["name"],
            cores=b["cores"],
            source=b["source"],
            constants=CpuConstants(**b["constants"]),
            points=tuple(_point(p) for p in b.get("points", [])),
        )
        for b in data.get("cpu", [])
    )
    return Fits(gpu, cpu)


def matmul_params(spec: ModelSpec) -> float:
    """Parameters multiplied per token: all but the embedding rows and the unused experts."""
    return spec.parameters * spec.active_bytes_per_token() / max(spec.weights_bytes, 1)


def weights_read(spec: ModelSpec, users: int) -> float:
    """Weight bytes one step of ``users`` tokens reads: the dense weights, and of a mixture
    of experts the share of experts those tokens touch (``experts_touched``)."""
    read = float(spec.active_bytes_per_token())
    if spec.n_expert and spec.expert_bytes:
        experts = sum(spec.expert_bytes)
        read -= experts * spec.n_expert_used / spec.n_expert
        read += experts * experts_touched(users, spec.n_expert, spec.n_expert_used)
    return read


def experts_touched(batch: int, n_expert: int, n_used: int) -> float:
    """Share of the experts that ``batch`` tokens touch, each choosing ``n_used`` of
    ``n_expert`` (independently and uniformly: real routers are less even, which only lowers
    it). One token of an 8-of-128 model reads 6%; 16 tokens read 65%."""
    if n_expert <= 0:
        return 1.0
    return 1.0 - (1.0 - min(n_used, n_expert) / n_expert) ** max(batch, 1)


def point_for(
    spec: ModelSpec, what: str, users: int, tok_s: float, context: int, kv_type: str = "f16"
) -> Point:
    """The fit point of ``spec`` decoding for ``users`` at ``context`` tokens each."""
    return Point(
        what,
        users,
        tok_s,
        spec.n_layer,
        weights_read(spec, users),
        kv_bytes_per_token(spec, kv_type) * context,
        matmul_params(spec),
    )


# --- fitting --------------------------------------------------------------------------------


def solve(rows: Sequence[Sequence[float]], values: Sequence[float]) -> list[float]:
    """Least squares ``rows @ x ~ values`` (normal equations, Gaussian elimination)."""
    n = len(rows[0])
    a = [[sum(r[i] * r[j] for r in rows) for j in range(n)] for i in range(n)]
    b = [sum(r[i] * v for r, v in zip(rows, values, strict=True)) for i in range(n)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        a[col], a[pivot] = a[pivot], a[col]
        b[col], b[pivot] = b[pivot], b[col]
        if abs(a[col][col]) < 1e-300:
            raise ValueError("the points do not determine the constants")
        for r in range(n):
            if r != col:
                f = a[r][col] / a[col][col]
                a[r] = [x - f * y for x, y in zip(a[r], a[col], strict=True)]
                b[r] -= f * b[col]
    return [b[i] / a[i][i] for i in range(n)]


def fit_gpu(
    points: Sequence[Point],
    bandwidth: float,
    flops: float,
    tensor_flops: float,
    fixed: GpuConstants | None = None,
    keep: Sequence[str] = (),
) -> GpuConstants:
    """The constants that best give ``points``' step times (least squares); those named in
    ``keep`` are taken from ``fixed`` (a box whose points do not determine them all)."""
    free = [i for i, name in enumerate(FITTED_NAMES) if name not in keep]
    held = fixed.coefficients if fixed else (0.0,) * len(FITTED_NAMES)
    rows = []
    values = []
    for p in points:
        terms = p.terms(bandwidth, flops, tensor_flops)
        rows.append([terms[i] for i in free])
        values.append(
            p.users / p.tok_s
            - sum(held[i] * terms[i] for i in range(len(FITTED_NAMES)) if i not in free)
        )
    solved = dict(zip(free, solve(rows, values), strict=True))
    coefficients = [solved.get(i, held[i]) for i in range(len(FITTED_NAMES))]
    base = fixed or GpuConstants(0.0, 0.0, 1.0, 0.0, 1.0, 1.0)
    return replace(
        base,
        step_s=coefficients[0],
        layer_s=coefficients[1],
        efficiency=1 / coefficients[2],
        user_s=coefficients[3],
        compute_eff=1 / coefficients[4],
        tensor_core_eff=1 / coefficients[5],
    )


def fit_cpu(points: Sequence[Point], threads: int, host_bw: float) -> CpuConstants:
    """The CPU constants that best give ``points`` (one worker on ``threads`` threads): a grid
    search on the log error, refined around the best, since the roofline is not linear."""
    grid = {
        "step_s": [0.0, 2e-4, 5e-4, 1e-3, 2e-3],
        "layer_s": [0.0, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 4e-4],
        "thread_bw": [x * 1e9 for x in (5, 10, 15, 20, 25, 30, 40, 50, 60, 80)],
        "thread_flops": [x * 1e9 for x in (25, 50, 80, 100, 120, 150, 200, 250, 300, 400)],
        "user_s": [0.0, 5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 8e-4, 1.2e-3],
    }

    def error(c: CpuConstants) -> float:
        return sum(math.log(p.users / c.step(p, threads) / p.tok_s) ** 2 for p in points)

    def make(values: dict[str, float]) -> CpuConstants:
        return CpuConstants(host_bw=host_bw, **values)

    best = min(
        (dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())),
        key=lambda v: error(make(v)),
    )
    for _ in range(3):  # refine each constant in turn within +-40%
        for key in grid:
            tries = [best[key] * f for f in (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4)]
            value = min(tries, key=lambda x: error(make({**best, key: x})))
            best = {**best, key: value}
    return make(best)


# --- choosing the constants for a card ------------------------------------------------------


def catalog_entry(card: GpuCard) -> CatalogCard | None:
    if card.catalog_id and card.catalog_id in CATALOG:
        return CATALOG[card.catalog_id]
    return match_name(card.name)


def card_flops(card: GpuCard) -> float | None:
    """Peak FP32 FLOP/s of ``card``, from the catalog (None: not listed)."""
    entry = catalog_entry(card)
    return entry.tflops * 1e12 if entry and entry.tflops else None


def card_tensor_flops(card: GpuCard) -> float | None:
    """Peak dense FP16 tensor-core FLOP/s of ``card``, from the catalog (None: not listed)."""
    entry = catalog_entry(card)
    return entry.tensor_tflops * 1e12 if entry and entry.tensor_tflops else None


def _average(boxes: Sequence[GpuBox]) -> GpuConstants:
    c = [b.constants for b in boxes]
    return GpuConstants(
        statistics.fmean(x.step_s for x in c),
        statistics.fmean(x.layer_s for x in c),
        statistics.fmean(x.efficiency for x in c),
        statistics.fmean(x.user_s for x in c),
        statistics.fmean(x.compute_eff for x in c),
        statistics.fmean(x.tensor_core_eff for x in c),
        statistics.fmean(x.tensor_step_s for x in c),
        statistics.fmean(x.tensor_layer_s for x in c),
        statistics.fmean(x.tensor_compute_eff for x in c),
    )


def gpu_constants(card: GpuCard, fits: Fits | None = None) -> tuple[GpuConstants, Basis]:
    """The constants for ``card`` and how they were chosen (no measurement of this box)."""
    fits = fits or load()
    entry = catalog_entry(card)
    same = [b for b in fits.gpu if entry and b.card == entry.id]
    if same:
        return same[0].constants, Basis("fitted", f"fitted on {same[0].name}")
    family = [
        b
        for b in fits.gpu
        if card.compute_capability and b.catalog.compute_capability == card.compute_capability
    ]
    if family:
        names = ", ".join(b.catalog.name for b in family)
        cc = ".".join(map(str, card.compute_capability or ()))
        return _average(family), Basis("family", f"same family (sm {cc}) as {names}")
    return _average(fits.gpu), Basis("unseen", f"{card.name} never measured")


def cpu_constants(threads: int, fits: Fits | None = None) -> tuple[CpuConstants, Basis]:
    """CPU constants for a host never measured: those of the fitted host whose thread count is
    nearest (threads do not add up linearly: a 32-thread host reached a quarter of the
    2-thread host's FLOP/s per thread), the host bandwidth assumed (``UNMEASURED_HOST_BW``)."""
    fits = fits or load()
    nearest = min(fits.cpu, key=lambda b: abs(math.log(b.cores / max(threads, 1))))
    return (
        replace(nearest.constants, host_bw=UNMEASURED_HOST_BW),
        Basis("cpu", f"this CPU never measured; as {nearest.name}"),
    )


def with_measured(constants: GpuConstants, measured: GpuConstants) -> GpuConstants:
    """``constants`` with what ``plan --measure`` measured here (the tensor-split ones kept)."""
    return replace(
        constants,
        step_s=measured.step_s,
        layer_s=measured.layer_s,
        efficiency=measured.efficiency,
        user_s=measured.user_s,
        compute_eff=measured.compute_eff,
        tensor_core_eff=measured.tensor_core_eff,
    )


@dataclass(frozen=True)
class Calibration:
    """What ``plan --measure`` measured on this host: constants per card name, and the CPU's."""

    gpu: tuple[tuple[str, GpuConstants], ...] = ()
    cpu: CpuConstants | None = None
    detail: str = "measured here by plan --measure"

    def for_card(self, name: str) -> GpuConstants | None:
        return next((c for n, c in self.gpu if n == name), None)


def constants_for(
    card: GpuCard, calibration: Calibration | None = None
) -> tuple[GpuConstants, Basis]:
    """The constants for ``card``: measured here if ``calibration`` has its kind, else fitted."""
    constants, basis = gpu_constants(card)
    measured = calibration.for_card(card.name) if calibration else None
    if measured is not None and calibration is not None:
        return with_measured(constants, measured), Basis("measured", calibration.detail)
    return constants, basis


def cpu_constants_for(
    threads: int, calibration: Calibration | None = None
) -> tuple[CpuConstants, Basis]:
    if calibration is not None and calibration.cpu is not None:
        return calibration.cpu, Basis("cpu-measured", calibration.detail)
    return cpu_constants(threads)
