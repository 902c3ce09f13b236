"""How fast ``plan`` is: a 70B model in 4 files (sparse synthetic) on an 8-card box.

Reports the wall time of reading the model's headers and of planning (median of warm runs),
the bytes of the headers parsed, and what the process read from disk (``/proc/self/io``; the
first run drops the files from the page cache). Target (docs/planner.md): under 100 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from launcher.app import models
from launcher.benchmarks.boxes import h100s
from launcher.gpu.backend import FixedBackend
from launcher.gpu.host import HostInfo
from launcher.gpu.inventory import from_backend
from launcher.plan.advisor import plan
from launcher.plan.workload import Workload


@dataclass(frozen=True)
class PlanSpeed:
    parts: int
    file_bytes: int
    header_bytes: int
    layouts: int
    best: str
    cold_read_ms: float
    cold_plan_ms: float
    cold_disk_bytes: int
    warm_read_ms: float  # medians of the warm runs
    warm_plan_ms: float


def _io() -> dict[str, int]:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return {k: int(v) for k, v in fields.items()}


def measure(first: Path, runs: int = 11) -> PlanSpeed:
    """Read and plan the model whose first file is ``first``, ``runs`` times."""
    inventory = from_backend(FixedBackend(h100s(8)), HostInfo("bench", 1 << 40, 1 << 40, 128))
    parts = sorted(first.parent.glob(first.name.replace("00001-of", "*-of")))
    for p in parts:  # cold cache for the first run
        fd = os.open(p, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    timings = []
    for _ in range(runs):
        before = _io()
        t0 = time.perf_counter()
        spec = models.read_model(first)
        t1 = time.perf_counter()
        result = plan(spec, inventory, Workload(users=64))
        t2 = time.perf_counter()
        after = _io()
        timings.append((t1 - t0, t2 - t1, after["read_bytes"] - before["read_bytes"]))
    cold, warm = timings[0], timings[1:] or timings
    return PlanSpeed(
        len(spec.parts),
        sum(p.stat().st_size for p in spec.parts),
        spec.header_bytes_read,
        len(result.layouts),
        result.layouts[0].layout.kind,
        cold[0] * 1000,
        cold[1] * 1000,
        cold[2],
        statistics.median(t[0] for t in warm) * 1000,
        statistics.median(t[1] for t in warm) * 1000,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.benchmarks.plan_speed")
    parser.add_argument("model", nargs="?", help="first file of a split model (default: a new one)")
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        first = (
            Path(args.model)
            if args.model
            else models.make_model(Path(tmp) / "llama-70b.gguf", "llama", "70b", parts=4,
                                   sparse=True)[0]
        )  # fmt: skip
        s = measure(first, args.runs)
    print(
        f"model: {s.parts} parts, {s.file_bytes / 2**30:.2f} GiB; inventory: 8x H100; "
        f"{s.layouts} layouts, best {s.best}"
    )
    print(
        f"cold: read headers {s.cold_read_ms:.1f} ms + plan {s.cold_plan_ms:.1f} ms; disk "
        f"read_bytes {s.cold_disk_bytes:,}"
    )
    print(
        f"warm (median of {args.runs - 1}): read headers {s.warm_read_ms:.1f} ms + plan "
        f"{s.warm_plan_ms:.1f} ms = {s.warm_read_ms + s.warm_plan_ms:.1f} ms"
    )
    print(
        f"header bytes parsed: {s.header_bytes:,} of {s.file_bytes:,} "
        f"({100 * s.header_bytes / s.file_bytes:.3f}%)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
