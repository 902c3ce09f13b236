"""Bench results on disk, and the calibration the planner takes from them.

Results go to ``<state>/bench/results.jsonl``, one run a line, written as each run ends,
keyed by hardware (the card UUIDs, or the profile's name), model shape (architecture, layers,
width, quantization, size) and layout. A run's prediction is the planner's for the bench's own
traffic: its decode aggregate taking turns with the prompts (``plan.perf.served_tok_s``).
For a key with measurements, ``correction`` takes measured/predicted at each measured
concurrency and interpolates it linearly in log(users) between them (flat beyond the ends),
without crossing llama.cpp's change of decode kernel: up to ``MMVQ_MAX_BATCH`` users per worker
its CUDA backend multiplies with matrix-vector kernels (MMVQ), above that with tiled ones
(MMQ), a step in speed the planner does not model (on 4x H100 the 70B layer split's
measured/predicted stayed at 1.20-1.25 from 2 to 8 users and jumped to 1.78 at 16), so a
concurrency is corrected from the measured points on its own side when there are any.
``plan`` multiplies its prediction for the same traffic by it, and says when a figure is a
measurement, and when it lies outside the measured concurrencies of its side (where the
correction is carried flat, and the held-out checks on 4x H100 missed most often).
Several benches of the same layout on one box are averaged point by point, which is how
rounds reduce the noise of one measurement. ``holdout_check`` predicts each inner point from
the others.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from launcher import paths
from launcher.gpu.inventory import Inventory
from launcher.llamacpp.args import inherited_settings
from launcher.llamacpp.probe import ServerTarget, default_flags
from launcher.model.spec import ModelSpec
from launcher.plan.advisor import Plan
from launcher.plan.perf import served_tok_s

# llama.cpp's MMVQ_MAX_BATCH_SIZE (ggml-cuda/mmvq.cuh): the largest decode batch per worker
# that uses the matrix-vector kernels
MMVQ_MAX_BATCH = 8


@dataclass(frozen=True)
class BenchRun:
    """One layout at one concurrency (the ``bench --json`` row, plus its keys)."""

    layout: str
    users: int
    requests: int
    tokens: int
    aggregate_tok_s: float
    per_user_tok_s_p50: float
    ttft_ms_p50: float | None
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_p99: float
    errors: int
    predicted_aggregate_tok_s: float  # the planner's, for this traffic (prompts included)
    server_tokens: int  # the workers' own tokens_predicted_total over the run
    power_w: float | None = None
    tok_s_per_w: float | None = None
    usd_per_tok_s: float | None = None
    predicted_decode_tok_s: float = 0.0  # the planner's aggregate without prompts
    prompt_tokens: int = 0  # per request (0: rows written before prompts were counted)
    answer_tokens: int = 0  # per request
    ctx: int = 0  # context per user the fleet was started with
    workers: int = 0  # llama-server processes of the layout (0: rows written before)
    # each worker's own tokens_predicted_total over the run: how evenly the router spread it
    worker_tokens: list[int] = field(default_factory=list)
    # llama-server settings beyond the plan's: a profile's extra flags and the LLAMA_ARG_*
    # variables the workers inherited and llama-server took (e.g. ["LLAMA_ARG_BATCH=4096"]);
    # empty for the fleet `up` starts from a shell without such variables
    server_flags: list[str] = field(default_factory=list)
    # the settings the launcher chose over llama.cpp's defaults (llamacpp.probe.default_flags):
    # rows written before the launcher turned the RAM prompt cache off have none
    server_defaults: list[str] = field(default_factory=list)
    # how the users' requests arrived: "lockstep" (all start together) or "staggered"
    arrivals: str = "lockstep"
    # why the box was busy with other work while this row ran ("" = it was not): plan does not
    # calibrate on busy rows (bench.busy); bench --keep-busy keeps them on purpose
    busy: str = ""
    hardware_key: str = ""
    model_key: str = ""
    time: float = 0.0

    def row(self) -> dict[str, Any]:
        return asdict(self)


def results_path() -> Path:
    return paths.state_dir() / "bench" / "results.jsonl"


def model_key(spec: ModelSpec) -> str:
    return (
        f"{spec.arch}:{spec.n_layer}x{spec.n_embd}:{spec.quantization}:"
        f"{round(spec.weights_bytes / 2**20)}MiB"
    )


def hardware_key(uuids: list[str | None], source: str) -> str:
    known = sorted(u for u in uuids if u)
    return ",".join(known) if known else source


def append(runs: list[BenchRun]) -> Path:
    """Add ``runs`` to the results file (one line each, flushed at once)."""
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for run in runs:
            f.write(json.dumps(run.row()) + "\n")
    return path


@dataclass(frozen=True)
class Keys:
    """Which stored rows describe a fleet: this box, this model shape, and the settings the
    launcher chooses for the llama-server that will run it."""

    hardware: str
    model: str
    defaults: tuple[str, ...]


def keys_for(inventory: Inventory, spec: ModelSpec, server: ServerTarget) -> Keys:
    cards = inventory.local.cards
    return Keys(
        hardware_key([c.uuid for c in cards], inventory.source),
        model_key(spec),
        default_flags(server),
    )


def _stored() -> list[BenchRun]:
    path = results_path()
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(BenchRun(**json.loads(line)))
        except (ValueError, TypeError):
            continue
    return out


def load(keys: Keys, flags: list[str] | None = None, arrivals: str = "lockstep") -> list[BenchRun]:
    """The error-free runs of ``keys``' box and model whose fleets ran with the launcher's
    settings in ``keys`` and ``flags`` (default: none beyond the plan's, which is what ``plan``
    predicts) under ``arrivals``, so that a bench with, say, the prompt cache on does not
    correct the figures of fleets that keep it off, and loads measured differently are not
    mixed. Rows measured while the box was busy with other work are left out."""
    return [
        run
        for run in _stored()
        if not run.busy
        and run.hardware_key == keys.hardware
        and run.model_key == keys.model
        and not run.errors
        and run.server_defaults == list(keys.defaults)
        and run.server_flags == (flags or [])
        and run.arrivals == arrivals
    ]


def inherited_flags(result: Plan, server: ServerTarget) -> list[str]:
    """The settings beyond the plan that the fleet ``up`` would start from this environment
    runs with (the LLAMA_ARG_* variables its workers inherit and llama-server takes), as a
    bench from the same environment records them; empty when nothing fits."""
    best = result.best
    if best is None or not best.layout.processes:
        return []
    return inherited_settings(best.layout.processes[0].argv, server.env_options)


def inherited_note(flags: list[str]) -> str:
    """What ``plan`` says when this shell gives its workers ``flags``."""
    return (
        f"Workers started from this shell also take {' '.join(flags)}; bench results are "
        "used only where they ran with the same."
    )


def stale_note(keys: Keys, flags: list[str] | None = None) -> str | None:
    """For a box and model that ``load`` found nothing for: a sentence when bench results of
    it with these ``flags`` were measured with other launcher settings (before it turned
    llama.cpp's RAM prompt cache off); None when there are none."""
    older = [
        run
        for run in _stored()
        if run.hardware_key == keys.hardware
        and run.model_key == keys.model
        and run.server_flags == (flags or [])
        and run.arrivals == "lockstep"
        and run.server_defaults != list(keys.defaults)
    ]
    if not older:
        return None
    return (
        f"{len(older)} bench result(s) of this model here were measured with llama.cpp's RAM "
        "prompt cache on, which the launcher now turns off, so they are not used; run "
        "'llama-launcher bench' again to calibrate."
    )


def by_point(runs: list[BenchRun]) -> dict[tuple[str, int], list[BenchRun]]:
    """The rows of each layout and concurrency, oldest first (several benches of one box, or
    ``--rounds``, measure a point more than once)."""
    groups: dict[tuple[str, int], list[BenchRun]] = {}
    for r in sorted(runs, key=lambda r: r.time):
        groups.setdefault((r.layout, r.users), []).append(r)
    return groups


def averaged(runs: list[BenchRun]) -> list[BenchRun]:
    """One row per layout and concurrency, its aggregate the mean of the rows measured there
    (what ``plan`` corrects with is their mean too)."""
    return [
        replace(rs[-1], aggregate_tok_s=sum(r.aggregate_tok_s for r in rs) / len(rs))
        for rs in by_point(runs).values()
    ]


def big_batch(users: int, workers: int) -> bool | None:
    """Whether ``users`` spread over ``workers`` decode in batches above MMVQ_MAX_BATCH (None:
    the number of workers is not known)."""
    return -(-users // workers) > MMVQ_MAX_BATCH if workers else None


@dataclass(frozen=True)
class Correction:
    """measured / predicted at each measured concurrency; between them the ratio is
    interpolated linearly in ln(users), beyond them it stays at the nearest one. Only points
    on the same side of the kernel change as ``users`` are used, when there are any."""

    ratios: dict[int, float]
    measured: dict[int, float]
    prompt_tokens: int
    answer_tokens: int
    workers: int = 0

    @property
    def points(self) -> tuple[int, ...]:
        return tuple(sorted(self.ratios))

    def points_for(self, users: int) -> tuple[int, ...]:
        """The measured concurrencies that correct ``users``: those on its side of the kernel
        change, or all of them when its side has none."""
        side = big_batch(users, self.workers)
        return tuple(p for p in self.points if big_batch(p, self.workers) == side) or self.points

    def inside(self, users: int) -> bool:
        """Whether ``users`` lies between two of the points that correct it (or on one): an
        interpolation, not a figure carried beyond what was measured."""
        pts = self.points_for(users)
        return pts[0] <= users <= pts[-1]

    def factor(self, users: int) -> float:
        pts = self.points_for(users)
        if users <= pts[0]:
            return self.ratios[pts[0]]
        if users >= pts[-1]:
            return self.ratios[pts[-1]]
        hi = next(p for p in pts if p >= users)
        lo = max(p for p in pts if p < hi)
        x = (math.log(users) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return self.ratios[lo] + x * (self.ratios[hi] - self.ratios[lo])

    @property
    def traffic(self) -> str:
        """``, 512-token prompts, 128-token answers`` (empty for rows older than that)."""
        if not self.prompt_tokens:
            return ""
        return f", {self.prompt_tokens}-token prompts, {self.answer_tokens}-token answers"


def correction(
    runs: list[BenchRun], layout: str, fit_users: set[int] | None = None
) -> Correction | None:
    """The correction for ``layout`` from its runs (optionally only those at ``fit_users``)."""
    chosen = [
        r
        for r in runs
        if r.layout == layout
        and r.predicted_aggregate_tok_s > 0
        and (fit_users is None or r.users in fit_users)
    ]
    if not chosen:
        return None
    by_users: dict[int, list[BenchRun]] = {}
    for r in chosen:
        by_users.setdefault(r.users, []).append(r)
    ratios = {
        u: sum(r.aggregate_tok_s / r.predicted_aggregate_tok_s for r in rs) / len(rs)
        for u, rs in by_users.items()
    }
    measured = {u: sum(r.aggregate_tok_s for r in rs) / len(rs) for u, rs in by_users.items()}
    latest = max(chosen, key=lambda r: r.time)
    return Correction(ratios, measured, latest.prompt_tokens, latest.answer_tokens, latest.workers)


def predicted_for(
    fix: Correction, users: int, decode_tok_s: float, prompt_tok_s: float, workers: int
) -> float:
    """The planner's prediction for the bench's traffic at ``users``."""
    if not fix.prompt_tokens:
        return decode_tok_s
    return served_tok_s(
        decode_tok_s, prompt_tok_s, workers, users, fix.prompt_tokens, fix.answer_tokens
    )


def calibrated(
    runs: list[BenchRun],
    layout: str,
    users: int,
    decode_tok_s: float,
    prompt_tok_s: float = 0.0,
    workers: int = 1,
) -> tuple[float, str] | None:
    """The figure to show for ``layout`` at ``users`` (for the traffic the bench ran): a
    measurement, or the planner's prediction corrected by this box's measurements; None when
    there are none for this layout."""
    fix = correction(runs, layout)
    if fix is None:
        return None
    if not fix.workers:  # rows written before the bench kept the worker count
        fix = replace(fix, workers=workers)
    if users in fix.measured:
        return fix.measured[users], f"measured{fix.traffic}"
    predicted = predicted_for(fix, users, decode_tok_s, prompt_tok_s, workers)
    source = f"calibrated on {len(fix.points)} measured point(s){fix.traffic}"
    if not fix.inside(users):
        pts = fix.points_for(users)
        measured = f"{pts[0]}" if len(pts) == 1 else f"{pts[0]} to {pts[-1]}"
        source += (
            f"; outside the {measured} user(s) measured{_side(pts, fix.workers)}, so less sure: "
            f"'bench --users {users}' measures it"
        )
    return predicted * fix.factor(users), source


def _side(points: tuple[int, ...], workers: int) -> str:
    """`` at up to 8 per worker`` (the side of the kernel change ``points`` are on)."""
    side = big_batch(points[0], workers)
    if side is None:
        return ""
    return f" at {'more than' if side else 'up to'} {MMVQ_MAX_BATCH} per worker"


@dataclass(frozen=True)
class HoldoutCheck:
    """One measured point predicted from the layout's other points."""

    layout: str
    users: int
    fitted_on: tuple[int, ...]
    predicted: float  # the planner's, uncalibrated
    calibrated: float
    measured: float

    @property
    def error_pct(self) -> float:
        return (self.calibrated / self.measured - 1) * 100 if self.measured else 0.0

    @property
    def uncalibrated_error_pct(self) -> float:
        return (self.predicted / self.measured - 1) * 100 if self.measured else 0.0

    def row(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "users": self.users,
            "fitted_on": list(self.fitted_on),
            "predicted_aggregate_tok_s": round(self.predicted, 1),
            "calibrated_aggregate_tok_s": round(self.calibrated, 1),
            "measured_aggregate_tok_s": round(self.measured, 1),
            "error_pct": round(self.error_pct, 1),
            "uncalibrated_error_pct": round(self.uncalibrated_error_pct, 1),
        }

    def line(self) -> str:
        fitted = ", ".join(map(str, self.fitted_on))
        return (
            f"{self.layout}: at {self.users} user(s), calibrated on users {fitted}: "
            f"{self.calibrated:.1f} tok/s, measured {self.measured:.1f} "
            f"({self.error_pct:+.1f}%; the planner alone {self.uncalibrated_error_pct:+.1f}%)"
        )


def check_point(runs: list[BenchRun], layout: str, fit: set[int], held: int) -> HoldoutCheck | None:
    """``layout`` at ``held`` users, predicted from its runs at ``fit`` users only."""
    mine = [r for r in runs if r.layout == layout and r.predicted_aggregate_tok_s > 0]
    fix = correction(mine, layout, fit)
    at = [r for r in mine if r.users == held]
    if fix is None or not at:
        return None
    predicted = sum(r.predicted_aggregate_tok_s for r in at) / len(at)
    measured = sum(r.aggregate_tok_s for r in at) / len(at)
    return HoldoutCheck(layout, held, fix.points, predicted, predicted * fix.factor(held), measured)


def holdout_check(runs: list[BenchRun]) -> list[HoldoutCheck]:
    """Each inner concurrency of each layout, predicted from the layout's other points (the
    ends only bound the interpolation, so they are never held out)."""
    out = []
    for layout in dict.fromkeys(r.layout for r in runs):
        users = sorted({r.users for r in runs if r.layout == layout})
        for held in users[1:-1]:
            check = check_point(runs, layout, set(users) - {held}, held)
            if check is not None:
                out.append(check)
    return out
