#!/usr/bin/env python3
"""Session 6's tables from the stored GPU rows (report, "Session 6: runs N and O").

1. Run N: each round of the 8B ladders in one fleet (prompt cache on), mean and spread.
2. Run N, part 2: 8B per-card with and without backend sampling (prompt cache on).
3. Run O: the same ladders with the RAM prompt cache off (LLAMA_ARG_CACHE_RAM=0) and, same
   machine, pooled-layer with it on; measured/predicted of the planner alone.
Run from the repository root: python3 docs/validation/raw/2026-11-27-h100x4-bench/session6-posthoc.py
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
        print(
            f"  {layout:<13}{users:>3} users: {' / '.join(f'{v:.1f}' for v in vals)}"
            f"  mean {mean:.1f}  apart {spread:.1f}%  mean/predicted {ratio:.2f}"
            f"  errors {errors}  tokens match {match}"
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
    print("Run N part 2: 8B per-card, aggregate tok/s (user p50 tok/s), prompt cache on")
    runs = {name: table_rows(f"run-n/bs-{name}.txt") for name in ("off-1", "on-1", "off-2", "on-2")}
    for users in sorted(runs["off-1"]):
        cells = "  ".join(f"{n} {runs[n][users][0]:.1f} ({runs[n][users][1]:.1f})" for n in runs)
        off = (runs["off-1"][users][0] + runs["off-2"][users][0]) / 2
        on = (runs["on-1"][users][0] + runs["on-2"][users][0]) / 2
        print(f"  {users:>3} users: {cells}  mean on vs off {on / off - 1:+.1%}")


if __name__ == "__main__":
    rounds("Run N: --rounds 3, prompt cache on (llama.cpp's default)", rows("run-n/results-rounds.jsonl"))
    backend_sampling()
    rounds("Run O: --rounds 2, prompt cache off", rows("run-o/results-c0.jsonl"))
    rounds("Run O: --rounds 2, prompt cache on (same machine)", rows("run-o/results-def.jsonl"))
