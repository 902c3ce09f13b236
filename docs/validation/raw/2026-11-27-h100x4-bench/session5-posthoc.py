#!/usr/bin/env python3
"""Session 5's after-the-fact figures from the stored GPU rows (report, "Session 5").

1. For each 8B per-card ladder: measured/predicted at 32 users over that at 16 users.
2. The planner alone against the measurements, per model, layout and users (mean, range over
   runs G to M), as predicted and with a cost of S ms per generated token per busy slot added
   to each request's predicted cycle (--per-token-ms, default 0.5).
Run from the repository root: python3 docs/validation/raw/2026-11-27-h100x4-bench/session5-posthoc.py
"""

import argparse
import json
from pathlib import Path

RAW = Path(__file__).resolve().parent
LADDERS = {
    "G": "run-g/results.jsonl",
    "I pack": "run-i/results-pack.jsonl",
    "I no pack": "run-i/results-nopack.jsonl",
    "K": "run-k/results.jsonl",
    "K previous router": "run-k/results-oldrouter.jsonl",
    "K round 2": "run-k/results-round2.jsonl",
    "L round 1": "run-l/results-r1.jsonl",
    "L previous router": "run-l/results-old.jsonl",
    "L round 2": "run-l/results-r2.jsonl",
    "M": "run-m/results-from-json.jsonl",
}
EIGHT_B = "llama:32x4096"


def rows(name: str) -> list[dict]:
    out = []
    for line in (RAW / LADDERS[name]).read_text().splitlines():
        r = json.loads(line)
        r.setdefault("model_key", EIGHT_B)  # run M's rows come from --out, which omits the key
        if not r.get("server_flags") and r.get("arrivals", "lockstep") == "lockstep":
            out.append(r)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-token-ms", type=float, default=0.5)
    s = parser.parse_args().per_token_ms / 1000
    print("1. 8B per-card, (measured/predicted at 32 users) / (at 16 users):")
    for name in LADDERS:
        ratio = {
            r["users"]: r["aggregate_tok_s"] / r["predicted_aggregate_tok_s"]
            for r in rows(name)
            if r["layout"] == "per-card" and r["model_key"].startswith(EIGHT_B)
        }
        print(f"   {name:<18} {ratio[32] / ratio[16]:.3f}")
    errors: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    for name in LADDERS:
        for r in rows(name):
            users, answer = r["users"], r["answer_tokens"] or 128
            workers = r["workers"] or 1
            batch = -(-users // workers)
            cycle = users * answer / r["predicted_aggregate_tok_s"]
            with_cost = users * answer / (cycle + answer * batch * s)
            model = "8B" if r["model_key"].startswith(EIGHT_B) else "70B"
            key = (model, r["layout"], users)
            errors.setdefault(key, []).append(
                (
                    (r["predicted_aggregate_tok_s"] / r["aggregate_tok_s"] - 1) * 100,
                    (with_cost / r["aggregate_tok_s"] - 1) * 100,
                )
            )
    print(f"2. planner alone against measured: as is | with {s * 1000:g} ms per token per slot")
    for (model, layout, users), pairs in sorted(errors.items()):
        plain = [p for p, _ in pairs]
        cost = [c for _, c in pairs]
        print(
            f"   {model:<4}{layout:<14}{users:>3} users: mean {sum(plain) / len(plain):+6.1f}% "
            f"({min(plain):+.1f}..{max(plain):+.1f}) | mean {sum(cost) / len(cost):+6.1f}% "
            f"({min(cost):+.1f}..{max(cost):+.1f})  [{len(pairs)} run(s)]"
        )


if __name__ == "__main__":
    main()
