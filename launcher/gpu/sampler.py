"""Live GPU samples on a background thread, at a fixed rate, all cards in parallel.

An NVML sample blocks for tens of milliseconds per card (the PCIe counters are measured over
a 20 ms window each), so cards are read concurrently by a small thread pool: eight cards take
about as long as one. The caller gets each tick's samples through ``on_samples``, from the
sampler's thread; it never blocks on NVML itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait

from launcher.gpu.backend import GpuBackend
from launcher.gpu.card import GpuSample

OnSamples = Callable[[list[GpuSample], float], None]
"""Receives one tick's samples and the tick's scheduled time (time.monotonic seconds)."""


class GpuSampler:
    """Reads ``indices`` from ``backend`` every ``interval_s`` until ``stop()``."""

    def __init__(
        self,
        backend: GpuBackend,
        indices: Sequence[int],
        on_samples: OnSamples,
        interval_s: float = 1.0,
        max_parallel: int = 8,
    ) -> None:
        self.backend = backend
        self.indices = list(indices)
        self.on_samples = on_samples
        self.interval_s = interval_s
        self._pool = ThreadPoolExecutor(
            max(1, min(max_parallel, len(self.indices) or 1)), thread_name_prefix="gpu-sample"
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
        self.latest: dict[int, GpuSample] = {}
        self._pending: dict[int, Future[GpuSample]] = {}

    def start(self) -> GpuSampler:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> GpuSampler:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        tick = time.monotonic()
        while not self._stop.is_set():
            # A card whose last reading has not come back yet is not asked again this tick.
            for i in self.indices:
                if i not in self._pending or self._pending[i].done():
                    self._pending[i] = self._pool.submit(self._read, i)
            done, _ = wait(list(self._pending.values()), timeout=self.interval_s)
            for i in [i for i, f in self._pending.items() if f in done]:
                del self._pending[i]
            samples = [f.result() for f in done]
            samples.sort(key=lambda s: s.index)
            for s in samples:
                self.latest[s.index] = s
            if not self._stop.is_set():
                self.on_samples(samples, tick)
            tick += self.interval_s
            now = time.monotonic()
            if tick < now:  # fell behind (a slow driver): skip missed ticks, keep the phase
                tick += (now - tick) // self.interval_s * self.interval_s + self.interval_s
            self._stop.wait(max(0.0, tick - now))

    def _read(self, index: int) -> GpuSample:
        try:
            return self.backend.sample(index)
        except Exception as err:  # a sampler must outlive one bad reading
            return GpuSample(index, time.monotonic(), error=f"sample failed: {err}")
