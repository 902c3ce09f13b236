#!/usr/bin/env python3
"""Session 7's tables from the stored GPU rows (report, "Session 7: run P").

1. Run P part 1: each round of the 8B ladders in one fleet (prompt cache off), mean, spread,
   measured / predicted of the planner alone.
2. Run P part 2: the 70B ladders, one round.
3. Run P part 3: 8B per-card, plain and with a profile's --backend-sampling (prompt cache off).
Run from the repository root: python3 docs/validation/raw/2026-11-27-h100x4-bench/session7-posthoc.py
"""

import json
from pathlib import Path

RAW = Path(__file__).resolve().parent


def rows(path: str) -> list[dict]:
    return [json.loads(line) for line in (RAW / path).read_text().splitlines() if line.strip()]


def rounds(title: str, data: list[dict]) -> None:
    print(title)
    by: dict[tuple[str, int], list[dict]] = {}
    for r in data:
        by.setdefault((r["layout"], r["users"]), []).append(r)
    for (layout, users), rs in by.items():
        vals = [r["aggregate_tok_s"] for r in rs]
        mean = sum(vals) / len(vals)
        spread = (max(vals) - min(vals)) / mean * 100  # as bench's Rounds block
        ratio = mean / rs[0]["predicted_aggregate_tok_s"]
        errors = sum(r["errors"] for r in rs)
        match = all(r["server_tokens"] == r["tokens"] for r in rs)
        defaults = {" ".join(r["server_defaults"]) for r in rs}
        print(
            f"  {layout:<13}{users:>3} users: {' / '.join(f'{v:.1f}' for v in vals)}"
            f"  mean {mean:.1f}  apart {spread:.1f}%  mean/predicted {ratio:.2f}"
            f"  errors {errors}  tokens match {match}  defaults {sorted(defaults)}"
        )


def table_rows(path: str) -> dict[int, tuple[float, float, float]]:
    """users -> (aggregate, user p50, ttft p50) from a bench table (text output)."""
    out = {}
    for line in (RAW / path).read_text().splitlines():
        parts = line.split()
        if len(parts) > 10 and parts[0] == "per-card" and parts[1].isdigit():
            out[int(parts[1])] = (float(parts[4]), float(parts[7]), float(parts[8]))
    return out


def backend_sampling() -> None:
    print("Run P part 3: 8B per-card, aggregate tok/s (user p50 tok/s, ttft p50 ms), prompt cache off")
    names = ("off-1", "on-1", "off-2", "on-2")
    runs = {name: table_rows(f"run-p/bs-{name}.txt") for name in names}
    for users in sorted(runs["off-1"]):
        cells = "  ".join(
            f"{n} {runs[n][users][0]:.1f} ({runs[n][users][1]:.1f}, {runs[n][users][2]:.0f})" for n in runs
        )
        off = (runs["off-1"][users][0] + runs["off-2"][users][0]) / 2
        on = (runs["on-1"][users][0] + runs["on-2"][users][0]) / 2
        p50_off = (runs["off-1"][users][1] + runs["off-2"][users][1]) / 2
        p50_on = (runs["on-1"][users][1] + runs["on-2"][users][1]) / 2
        print(f"  {users:>3} users: {cells}  means on vs off {on / off - 1:+.1%}, user p50 {p50_on / p50_off - 1:+.1%}")


if __name__ == "__main__":
    rounds("Run P: 8B, --rounds 3, prompt cache off", rows("run-p/results-8b.jsonl"))
    rounds("Run P: 70B, one round, prompt cache off", rows("run-p/results-70b.jsonl"))
    backend_sampling()
