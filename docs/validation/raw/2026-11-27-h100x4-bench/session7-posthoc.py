#!/usr/bin/env python3
"""Session 7's tables from the stored GPU rows (report, "Session 7: run P").

1. Run P part 1: each round of the 8B ladders in one fleet (prompt cache off), mean, spread,
   measured / predicted of the planner alone.
2. Run P part 2: the 70B ladders, one round.
3. Run P part 3: 8B per-card, plain and with a profile's --backend-sampling (prompt cache off).
Run from the repository root: python3 docs/validation/raw/2026-11-27-h100x4-bench/session7-posthoc.py
"""

import importlib.util
from pathlib import Path

RAW = Path(__file__).resolve().parent
# session 6's helpers: rows of a results file, the rounds of each point, a bench table's rows
_spec = importlib.util.spec_from_file_location("session6", RAW / "session6-posthoc.py")
assert _spec and _spec.loader
session6 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(session6)
rows, rounds, table_rows = session6.rows, session6.rounds, session6.table_rows


def defaults(title: str, data: list[dict]) -> None:
    settings = sorted({" ".join(r["server_defaults"]) for r in data})
    print(f"{title}: launcher settings of the rows: {settings}")


def backend_sampling() -> None:
    print(
        "Run P part 3: 8B per-card, aggregate tok/s (user p50 tok/s, ttft p50 ms), prompt cache off"
    )
    names = ("off-1", "on-1", "off-2", "on-2")
    runs = {name: table_rows(f"run-p/bs-{name}.txt") for name in names}
    for users in sorted(runs["off-1"]):
        cells = "  ".join(
            f"{n} {runs[n][users][0]:.1f} ({runs[n][users][1]:.1f}, {runs[n][users][2]:.0f})"
            for n in runs
        )
        off = (runs["off-1"][users][0] + runs["off-2"][users][0]) / 2
        on = (runs["on-1"][users][0] + runs["on-2"][users][0]) / 2
        p50_off = (runs["off-1"][users][1] + runs["off-2"][users][1]) / 2
        p50_on = (runs["on-1"][users][1] + runs["on-2"][users][1]) / 2
        gain, p50_gain = on / off - 1, p50_on / p50_off - 1
        print(f"  {users:>3} users: {cells}  means on vs off {gain:+.1%}, user p50 {p50_gain:+.1%}")


if __name__ == "__main__":
    for title, path in (
        ("Run P: 8B, --rounds 3, prompt cache off", "run-p/results-8b.jsonl"),
        ("Run P: 70B, one round, prompt cache off", "run-p/results-70b.jsonl"),
    ):
        rounds(title, rows(path))
        defaults(title, rows(path))
    backend_sampling()
