"""Routing overhead and the RPC decode cost between two network namespaces, beside the plan.

    python -m launcher.benchmarks.network MODEL [--llama-server PATH] [--json OUT]

Needs root (network namespaces, tc); the cases are ``app.netlab.CASES`` (1 GbE, 10 GbE and a
slow far link). docs/remote.md cites its table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import tomli_w

from launcher.app import netlab, server
from launcher.errors import LauncherError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.benchmarks.network")
    parser.add_argument("model", type=Path)
    parser.add_argument("--llama-server")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per decode request")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args(argv)
    try:
        binary = server.required_target(args.llama_server).path
        rows = netlab.run_lab(
            binary, args.model, tokens=args.tokens, say=lambda line: print(line, file=sys.stderr)
        )
    except LauncherError as err:
        print(f"network: {err}", file=sys.stderr)
        return 1
    print("| link | what | round trip ms | measured ms | predicted ms | error |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r.link} | {r.what} | {r.rtt_ms:.3f} | {r.measured_ms:.2f} | "
            f"{r.predicted_ms:.2f} | {r.error_pct:+.0f}% |"
        )
    fitted = netlab.fit(rows)
    print("\nFitted: " + ", ".join(f"{k} = {v:.4g}" for k, v in fitted.items()))
    print("\nPoints for fits.toml:")
    for r in rows:
        print("\n[[network.points]]\n" + tomli_w.dumps(r.point().to_toml()).strip())
    if args.json:
        args.json.write_text(json.dumps([r.to_json() for r in rows], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
