"""``gpus --json`` against nvidia-smi, field by field, for every card.

Usage: ``python -m launcher.benchmarks.nvidia_smi GPUS.json SMI.csv``, where SMI.csv comes
from (one line)::

  nvidia-smi --format=csv,nounits --query-gpu=index,uuid,name,pci.bus_id,memory.total,
  memory.used,memory.free,memory.reserved,pcie.link.gen.current,pcie.link.gen.max,
  pcie.link.gen.gpumax,pcie.link.width.current,pcie.link.width.max,compute_cap,driver_version,
  power.draw,power.limit,enforced.power.limit,temperature.gpu,clocks.sm,clocks.mem,
  clocks.max.memory,display_active,mig.mode.current

Prints one row per field and card; exits 1 when a field differs beyond its tolerance. Live
values (power, temperature, clocks) were read a moment apart, so they get a tolerance.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 1 << 20


@dataclass(frozen=True)
class FieldCheck:
    card: int
    field: str
    ours: Any
    theirs: Any
    ok: bool


def bus(text: str) -> str:
    """nvidia-smi's 8-digit PCI domain as NVML's 4-digit one, lower case."""
    d, rest = text.lower().split(":", 1)
    return f"{int(d, 16):04x}:{rest}"


def compare(data: dict[str, Any], smi_csv: str) -> list[FieldCheck]:
    """Every field of every card: ``gpus --json`` output against nvidia-smi's CSV."""
    rows = list(csv.reader(smi_csv.splitlines(), skipinitialspace=True))
    header = [h.split(" [")[0] for h in rows[0]]
    smi = [dict(zip(header, r, strict=True)) for r in rows[1:]]
    out = []
    for gpu, s in zip(data["gpus"], smi, strict=True):
        checks: list[tuple[str, Any, Any, float]] = [
            ("index", gpu["index"], int(s["index"]), 0),
            ("uuid", gpu["uuid"], s["uuid"], 0),
            ("name", gpu["name"], s["name"], 0),
            ("pci_bus_id", gpu["pci_bus_id"], bus(s["pci.bus_id"]), 0),
            ("memory_total (MiB)", gpu["memory_total_bytes"] // MIB, int(s["memory.total"]), 0),
            ("memory_used (MiB)", gpu["memory_used_bytes"] // MIB, int(s["memory.used"]), 2),
            ("memory_free (MiB)", gpu["memory_free_bytes"] // MIB, int(s["memory.free"]), 2),
            (
                "memory_reserved (MiB)",
                gpu["memory_reserved_bytes"] // MIB,
                int(s["memory.reserved"]),
                0,
            ),
            ("pcie gen current", gpu["pcie"]["gen_current"], int(s["pcie.link.gen.current"]), 0),
            ("pcie gen max", gpu["pcie"]["gen_max"], int(s["pcie.link.gen.max"]), 0),
            ("pcie gen card max", gpu["pcie"]["gen_card_max"], int(s["pcie.link.gen.gpumax"]), 0),
            (
                "pcie width current",
                gpu["pcie"]["width_current"],
                int(s["pcie.link.width.current"]),
                0,
            ),
            ("pcie width max", gpu["pcie"]["width_max"], int(s["pcie.link.width.max"]), 0),
            ("compute_capability", gpu["compute_capability"], s["compute_cap"], 0),
            ("driver_version", data["driver"]["driver_version"], s["driver_version"], 0),
            ("power_draw_w", gpu["power_draw_w"], float(s["power.draw"]), 10.0),
            (
                "power_limit_w (enforced)",
                gpu["power_limit_w"],
                float(s["enforced.power.limit"]),
                0.01,
            ),
            ("temperature_c", gpu["temperature_c"], int(s["temperature.gpu"]), 2),
            ("sm_clock_mhz", gpu["sm_clock_mhz"], int(s["clocks.current.sm"]), 100),
            ("memory_clock_mhz", gpu["memory_clock_mhz"], int(s["clocks.current.memory"]), 0),
            ("memory_clock_max_mhz", gpu["memory_clock_max_mhz"], int(s["clocks.max.memory"]), 0),
            ("display_active", gpu["display_active"], s["display_active"] == "Enabled", 0),
            ("mig_enabled", gpu["mig_enabled"], s["mig.mode.current"] == "Enabled", 0),
        ]
        for field, ours, theirs, tol in checks:
            if isinstance(ours, (int, float)) and not isinstance(ours, bool):
                ok = abs(ours - theirs) <= tol
            else:
                ok = ours == theirs
            out.append(FieldCheck(gpu["index"], field, ours, theirs, ok))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.benchmarks.nvidia_smi")
    parser.add_argument("gpus_json", type=Path, help="the output of 'llama-launcher gpus --json'")
    parser.add_argument("smi_csv", type=Path, help="nvidia-smi's CSV (see --help above)")
    args = parser.parse_args(argv)
    checks = compare(json.loads(args.gpus_json.read_text()), args.smi_csv.read_text())
    print(f"{'card':<5}{'field':<34}{'llama-launcher':<44}{'nvidia-smi':<44}ok")
    for c in checks:
        print(f"{c.card:<5}{c.field:<34}{c.ours!s:<44}{c.theirs!s:<44}{'yes' if c.ok else 'NO'}")
    bad = sum(1 for c in checks if not c.ok)
    print(f"\n{bad} mismatch(es)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
