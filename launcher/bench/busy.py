"""Whether the box was busy with other work while a bench row was measured.

The CPU time the whole box used over the row, less what this process and the fleet's own
workers used, spread over the row's wall time: cores that other processes took. A row measured
while others took more than ``BUSY_CORES`` is marked, and ``plan`` does not calibrate on it
(docs/bench.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

BUSY_CORES = 0.5  # other processes' CPU, in cores, above which a row counts as measured busy


def _box_busy_s() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def _own_s(pids: Iterable[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:  # a worker that exited: its time is lost from both sides
            continue
        total += t.user + t.system
    return total


@dataclass
class OtherLoad:
    """Measures the cores other processes used between ``start()`` and ``stop()``."""

    pids: tuple[int, ...]  # this process and the fleet's workers
    _box: float = 0.0
    _own: float = 0.0
    _time: float = 0.0

    def start(self) -> OtherLoad:
        self._box, self._own, self._time = _box_busy_s(), _own_s(self.pids), time.monotonic()
        return self

    def stop(self) -> float:
        """Cores used by other processes since ``start()`` (0 or more)."""
        wall = max(time.monotonic() - self._time, 1e-6)
        others = (_box_busy_s() - self._box) - (_own_s(self.pids) - self._own)
        return max(others / wall, 0.0)


def busy_reason(other_cores: float) -> str:
    """Why a row counts as measured busy ("" when it does not)."""
    if other_cores <= BUSY_CORES:
        return ""
    return f"other processes used {other_cores:.1f} cores while it ran"
