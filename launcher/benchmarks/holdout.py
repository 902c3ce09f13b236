"""The bench calibration on points it was not fitted on.

Reads bench results (default: this user's results file), and for every box, model and layout
fits the correction only on the concurrencies given with ``--fit`` (the code ``plan`` uses,
``bench.results``), then compares the calibrated prediction with the measurement at every
other measured concurrency. Rows of fleets run with other llama-server settings and rows of a
staggered load are checked apart. ``--workers per-card=4`` gives the worker count to rows
written before the bench kept it. Exit status 1 when a held-out point is off by more than
``--limit`` percent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from launcher.bench import results
from launcher.bench.results import BenchRun, HoldoutCheck


def read_rows(path: Path, assumed_workers: dict[str, int]) -> list[BenchRun]:
    """The error-free rows of a results file (JSON lines)."""
    runs = []
    for line in path.read_text().splitlines():
        data = json.loads(line)
        if not data.get("errors"):
            run = BenchRun(**data)
            if not run.workers and run.layout in assumed_workers:
                run = dataclasses.replace(run, workers=assumed_workers[run.layout])
            runs.append(run)
    return runs


def held_out(runs: list[BenchRun], fit: set[int]) -> list[tuple[str, HoldoutCheck]]:
    """(model key, check) for every measured point outside ``fit``, per box, model, layout,
    settings and arrivals."""

    def group(r: BenchRun) -> tuple[str, str, str, tuple[str, ...], str]:
        return (
            r.hardware_key,
            r.model_key,
            r.layout,
            (*r.server_defaults, *r.server_flags),
            (r.arrivals),
        )

    out = []
    for key in dict.fromkeys(group(r) for r in runs):
        _, model, layout, _, _ = key
        mine = [r for r in runs if group(r) == key]
        if not fit <= {r.users for r in mine}:
            continue
        for users in sorted({r.users for r in mine} - fit):
            check = results.check_point(mine, layout, fit, users)
            if check is not None:
                out.append((model, check))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.benchmarks.holdout")
    parser.add_argument("results", nargs="?", type=Path, default=results.results_path())
    parser.add_argument("--fit", required=True, help="concurrencies to fit on, e.g. 1,64")
    parser.add_argument("--limit", type=float, default=10.0, help="allowed error in percent")
    parser.add_argument(
        "--workers", default="", help="workers per layout for rows without it, e.g. per-card=4"
    )
    args = parser.parse_args(argv)
    fit = {int(u) for u in args.fit.split(",")}
    assumed = {k: int(v) for k, v in (p.split("=") for p in args.workers.split(",") if p)}
    checks = held_out(read_rows(args.results, assumed), fit)
    print(
        f"{'model':<32}{'layout':<15}{'users':>6}{'predicted':>10}{'calibrated':>11}"
        f"{'measured':>10}{'error':>8}{'planner alone':>15}"
    )
    for model, c in checks:
        print(
            f"{model:<32}{c.layout:<15}{c.users:>6}{c.predicted:>10.1f}{c.calibrated:>11.1f}"
            f"{c.measured:>10.1f}{c.error_pct:>+7.1f}%{c.uncalibrated_error_pct:>+14.1f}%"
        )
    worst = max((abs(c.error_pct) for _, c in checks), default=0.0)
    print(f"\nfitted on users {args.fit}; worst held-out error {worst:.1f}% (limit {args.limit}%)")
    return 1 if worst > args.limit else 0


if __name__ == "__main__":
    sys.exit(main())
