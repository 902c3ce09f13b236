"""``plan --measure``: this host's decode constants in well under a minute.

Three short llama-server runs per kind of card (or on the CPU when the box has none), each on a
sparse synthetic model written once into the cache (no download, no disk used for weights):

- two *thin* models (llama, 256 wide) of 16 and 64 layers: nearly nothing to read or
  multiply, so their step times are the host's fixed cost per step and per layer, and (16
  users on the thin model) per user;
- a *probe* model at one user and at a batch: the one-user step gives the bandwidth reached,
  the batch the compute reached. On a card it is wide and shallow (the llama 70B's layers, as
  many as fill 40% of the card, at most 24): its weights dominate its fixed costs, so the
  bandwidth comes out clean (an 8B probe left it at the mercy of the fixed costs: 0.39 of peak
  against the 0.60 the 70B showed on the same card). On the CPU the llama 1B shape.

The five points are fitted with the same functions that fitted the boxes in
``plan/fits.toml``; the result is stored in ``<state>/calibration/HOST.json`` and planning on
this box uses it (the plan says "measured here") until a full ``bench`` corrects it further.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from launcher import paths
from launcher.errors import LauncherError
from launcher.gpu.card import GpuCard
from launcher.llamacpp.args import ServerArgs
from launcher.llamacpp.probe import ServerTarget, default_flags
from launcher.model import synthetic
from launcher.model.spec import ModelSpec, read_model_spec
from launcher.plan import fits
from launcher.plan.fits import Calibration, CpuConstants, GpuConstants, Point
from launcher.plan.layouts import Process
from launcher.plan.perf import FLOPS_PER_BYTE_S, TENSOR_FLOPS_PER_BYTE_S
from launcher.run import microbench
from launcher.run.server_binary import find_server, find_vocab

THIN_LAYERS = (16, 64)
TOKENS = 48  # answer tokens per stream
GPU_BATCH = 16
CPU_BATCH = 4
CONTEXT = 2 + TOKENS // 2  # tokens of context a step sees on average (prompt + half the answer)

Say = Callable[[str], None]


@dataclass(frozen=True)
class MeasuredKind:
    """The constants measured for one kind of card (``card`` None: the CPU)."""

    card: str | None
    points: tuple[Point, ...]
    gpu: GpuConstants | None = None
    cpu: CpuConstants | None = None


@dataclass(frozen=True)
class Measurement:
    host: str
    measured_at: str
    seconds: float
    kinds: tuple[MeasuredKind, ...]

    @property
    def calibration(self) -> Calibration:
        gpu = tuple((k.card, k.gpu) for k in self.kinds if k.card and k.gpu)
        cpu = next((k.cpu for k in self.kinds if k.cpu), None)
        return Calibration(gpu, cpu, f"measured here by plan --measure, {self.measured_at[:10]}")

    def to_json(self) -> dict[str, object]:
        return {
            "host": self.host,
            "measured_at": self.measured_at,
            "seconds": round(self.seconds, 1),
            "kinds": [
                {
                    "card": k.card,
                    "gpu": asdict(k.gpu) if k.gpu else None,
                    "cpu": asdict(k.cpu) if k.cpu else None,
                    "points": [asdict(p) for p in k.points],
                }
                for k in self.kinds
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Measurement:
        kinds = []
        for k in data["kinds"]:  # type: ignore[attr-defined]
            kinds.append(
                MeasuredKind(
                    k["card"],
                    tuple(Point(**p) for p in k["points"]),
                    GpuConstants(**k["gpu"]) if k["gpu"] else None,
                    CpuConstants(**k["cpu"]) if k["cpu"] else None,
                )
            )
        return cls(
            str(data["host"]),
            str(data["measured_at"]),
            float(data["seconds"]),  # type: ignore[arg-type]
            tuple(kinds),
        )


def calibration_path(host: str | None = None) -> Path:
    return paths.state_dir() / "calibration" / f"{host or socket.gethostname()}.json"


def load_calibration(host: str | None = None) -> Calibration | None:
    """What ``plan --measure`` stored for this host, if anything (a broken file: nothing)."""
    path = calibration_path(host)
    try:
        return Measurement.from_json(json.loads(path.read_text())).calibration
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _model(name: str, shape: synthetic.ModelShape, server: str | None) -> ModelSpec:
    """A sparse synthetic model in the cache (written the first time)."""
    out = paths.cache_dir() / "measure" / f"{name}.gguf"
    if not out.exists():
        binary = find_server(server)
        vocab = find_vocab(synthetic.vocab_file_name(shape), binary)
        synthetic.write_model(out, shape, vocab, context=4096, sparse=True)
    return read_model_spec(out)


def _thin(layers: int) -> synthetic.ModelShape:
    base = synthetic.shape_for("llama", "tiny")
    return synthetic.ModelShape(**{**asdict(base), "size": f"thin{layers}", "n_layer": layers})


WIDE_LAYER_BYTES = 524 << 20  # one layer of the llama 70B shape (Q4_K_M), for sizing the probe


def _wide(layers: int) -> synthetic.ModelShape:
    base = synthetic.shape_for("llama", "70b")
    return synthetic.ModelShape(**{**asdict(base), "size": f"wide{layers}", "n_layer": layers})


def _probe_layers(card: GpuCard) -> int:
    """Layers of the wide probe: 40% of the card's free memory, 2 to 24."""
    free = card.memory_free_bytes or card.memory_total_bytes
    return max(2, min(24, int(0.4 * free / WIDE_LAYER_BYTES)))


def _args(target: ServerTarget, spec: ModelSpec, slots: int, gpu: bool, threads: int) -> ServerArgs:
    return ServerArgs(
        binary=target.path,
        model=str(spec.path),
        port=0,
        slots=slots,
        ctx_per_slot=512,
        defaults=default_flags(target),
        gpu_layers=999 if gpu else 0,
        split_mode="none" if gpu else None,
        fit_off=target.supports_fit and gpu,
        threads=None if gpu else threads,
    )


def _run(
    target: ServerTarget,
    spec: ModelSpec,
    batches: tuple[int, ...],
    card: GpuCard | None,
    threads: int,
    log: Path,
) -> list[Point]:
    env = (
        {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": card.uuid or str(card.index)}
        if card
        else {"CUDA_VISIBLE_DEVICES": ""}
    )
    args = _args(target, spec, max(batches), card is not None, threads)
    rates = microbench.measure_decode(args, env, batches, TOKENS, log)
    return [
        fits.point_for(
            spec, f"{spec.path.stem}, {r.users} user(s)", r.users, r.aggregate_tok_s, CONTEXT
        )
        for r in rates
    ]


def run_process(
    process: Process,
    batches: tuple[int, ...],
    log: Path,
    on_loaded: Callable[[int], None] | None = None,
) -> list[microbench.DecodeRate]:
    """Run one planned worker (its argv and environment) and measure decode at ``batches``."""
    return microbench.measure_decode(
        process.args, process.env, batches, TOKENS, log, on_loaded=on_loaded
    )


def _fit_gpu(points: list[Point], card: GpuCard) -> GpuConstants:
    """The host's costs and the bandwidth reached, from the points; the compute efficiencies
    stay the fitted family's (a few tokens cannot tell them apart from the rest)."""
    family, _ = fits.gpu_constants(card)
    bandwidth = card.memory_bandwidth_bytes_s or 300e9
    flops = fits.card_flops(card) or bandwidth * FLOPS_PER_BYTE_S
    tensor_flops = fits.card_tensor_flops(card) or bandwidth * TENSOR_FLOPS_PER_BYTE_S
    keep = ("compute_eff", "tensor_core_eff")
    try:
        measured = fits.fit_gpu(points, bandwidth, flops, tensor_flops, family, keep)
        if measured.step_s < 0:  # within noise of none: hold it at zero, fit the rest
            base = replace(family, step_s=0.0)
            measured = fits.fit_gpu(points, bandwidth, flops, tensor_flops, base, ("step_s", *keep))
    except ValueError:
        return family
    if min(measured.step_s, measured.layer_s, measured.user_s) < 0 or not (
        0.05 < measured.efficiency <= 1.0
    ):
        return family  # a noisy host: nothing measured can be trusted
    return measured


def measure(
    cards: list[GpuCard],
    cpu_cores: int,
    llama_server: str | None,
    target: ServerTarget,
    say: Say,
) -> Measurement:
    """Measure this host (each kind of usable card once, else the CPU) and store the result."""
    started = time.monotonic()
    kinds: dict[str, GpuCard] = {}
    for usable in cards:
        if usable.usable:
            kinds.setdefault(usable.name, usable)
    thin = [_model(f"thin{n}", _thin(n), llama_server) for n in THIN_LAYERS]
    logs = paths.state_dir() / "calibration" / "logs"
    measured = []
    steps = [("thin", thin[0], (1, GPU_BATCH)), ("thin", thin[1], (1,))]
    targets: list[tuple[str | None, GpuCard | None]] = list(kinds.items()) or [(None, None)]
    for name, card in targets:
        what = f"{name} (card {card.index})" if card else f"the CPU ({cpu_cores} threads)"
        batch = GPU_BATCH if card else CPU_BATCH
        if card is not None:
            layers = _probe_layers(card)
            probe = _model(f"probe-wide{layers}", _wide(layers), llama_server)
        else:
            probe = _model("llama-1b", synthetic.shape_for("llama", "1b"), llama_server)
        runs = [*steps, ("probe", probe, (1, batch))]
        if card is None:
            runs[0] = ("thin", thin[0], (1, batch))
        points: list[Point] = []
        for i, (label, spec, batches) in enumerate(runs, 1):
            say(
                f"Measuring {what}: run {i} of {len(runs)}, {label} model "
                f"{spec.path.stem} at {', '.join(map(str, batches))} user(s)..."
            )
            points += _run(target, spec, batches, card, cpu_cores, logs / f"{spec.path.stem}.log")
        if card is not None:
            gpu = _fit_gpu(points, card)
            measured.append(MeasuredKind(name, tuple(points), gpu=gpu))
        else:
            cpu = fits.fit_cpu(points, cpu_cores, 1e12)
            cpu = CpuConstants(**{**asdict(cpu), "host_bw": cpu_cores * cpu.thread_bw})
            measured.append(MeasuredKind(None, tuple(points), cpu=cpu))
    result = Measurement(
        socket.gethostname(),
        datetime.now(timezone.utc).isoformat(timespec="seconds"),
        time.monotonic() - started,
        tuple(measured),
    )
    _store(result)
    return result


def _store(result: Measurement) -> None:
    path = calibration_path(result.host)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result.to_json(), indent=2))
        tmp.replace(path)
    except OSError as err:
        raise LauncherError(
            f"Measured, but could not store the result in {path.parent} ({err.strerror}); "
            "free some space or fix the folder's permissions and measure again."
        ) from err
