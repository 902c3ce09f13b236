"""Bench results on disk, and the calibration the planner takes from them.

Results go to ``<state>/bench/results.jsonl``, one run a line, keyed by hardware (the card
UUIDs, or the profile's name), model shape (architecture, layers, width, quantization, size)
and layout. For a key with measurements, ``correction`` fits measured/predicted as a line in
log(users) over the measured points; the planner multiplies its aggregate prediction by it,
and says when a figure is a measurement.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from launcher import paths
from launcher.model.spec import ModelSpec


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
    predicted_aggregate_tok_s: float
    server_tokens: int  # the workers' own tokens_predicted_total over the run
    power_w: float | None = None
    tok_s_per_w: float | None = None
    usd_per_tok_s: float | None = None
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
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for run in runs:
            f.write(json.dumps(run.row()) + "\n")
    return path


def load(hardware: str, model: str) -> list[BenchRun]:
    path = results_path()
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            data = json.loads(line)
            run = BenchRun(**data)
        except (ValueError, TypeError):
            continue
        if run.hardware_key == hardware and run.model_key == model and not run.errors:
            out.append(run)
    return out


@dataclass(frozen=True)
class Correction:
    """measured / predicted = a + b x ln(users), fitted on ``points`` (users)."""

    a: float
    b: float
    points: tuple[int, ...]
    measured: dict[int, float]

    def factor(self, users: int) -> float:
        return max(0.05, self.a + self.b * math.log(max(users, 1)))


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
    by_users: dict[int, list[float]] = {}
    for r in chosen:
        by_users.setdefault(r.users, []).append(r.aggregate_tok_s / r.predicted_aggregate_tok_s)
    xs = [math.log(u) for u in sorted(by_users)]
    ys = [sum(v) / len(v) for _, v in sorted(by_users.items())]
    if len(xs) == 1:
        a, b = ys[0], 0.0
    else:
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
        a = my - b * mx
    measured = {r.users: r.aggregate_tok_s for r in chosen}
    return Correction(a, b, tuple(sorted(by_users)), measured)


def calibrated(
    runs: list[BenchRun], layout: str, users: int, predicted: float
) -> tuple[float, str] | None:
    """The figure to show for ``layout`` at ``users``: a measurement, or the prediction
    corrected by this box's measurements; None when there are none for this layout."""
    fix = correction(runs, layout)
    if fix is None:
        return None
    if users in fix.measured:
        return fix.measured[users], "measured"
    return predicted * fix.factor(users), f"calibrated on {len(fix.points)} measured point(s)"
