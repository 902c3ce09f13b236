"""The speed and memory model's terms, each against the figures it was derived from.

The fitted constants live in ``launcher/plan/fits.toml`` with the points they came from;
these tests fit every box again and check the stored constants, then check each new term
(experts touched, the CUDA-core/tensor-core switch, the per-user cost, CPU repacking, the CPU
compute buffer, flash attention off, the tensor split rule, the basis of a prediction) on the
numbers llama.cpp itself reported (docs/validation/2026-11-30-h200-speed-holdout.md and
-cpu-holdout.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher.errors import LauncherError
from launcher.gpu.card import GpuCard
from launcher.model.spec import ModelSpec, read_model_spec
from launcher.plan import fits, memory, perf
from launcher.plan.fits import Calibration, GpuConstants, Point
from launcher.plan.split import layer_counts, parse_split, tensor_shares

from .conftest import run_cli

MIB = 1 << 20
FITS = fits.load()


@pytest.fixture(scope="module")
def spec_of(model_factory: Callable[..., Path]) -> Callable[..., ModelSpec]:
    cache: dict[tuple[str, str], ModelSpec] = {}

    def get(arch: str, size: str) -> ModelSpec:
        if (arch, size) not in cache:
            cache[arch, size] = read_model_spec(model_factory(arch, size, sparse=True))
        return cache[arch, size]

    return get


def _box(card: str) -> fits.GpuBox:
    return next(b for b in FITS.gpu if b.card == card)


def _close(a: GpuConstants, b: GpuConstants, rel: float = 2e-3) -> None:
    for f in dataclasses.fields(GpuConstants):
        assert getattr(a, f.name) == pytest.approx(getattr(b, f.name), rel=rel), f.name


# --- the fitted boxes --------------------------------------------------------------------------


def test_the_h200_box_is_what_its_points_give() -> None:
    box = _box("h200-141gb")
    entry = box.catalog
    refit = fits.fit_gpu(
        box.points, box.bandwidth_gb_s * 1e9, entry.tflops * 1e12, entry.tensor_tflops * 1e12
    )
    tensor = ("tensor_step_s", "tensor_layer_s", "tensor_compute_eff")  # from its -sm tensor rows
    refit = dataclasses.replace(refit, **{k: getattr(box.constants, k) for k in tensor})
    _close(refit, box.constants)
    # and the fit reproduces every one of its dense one-card points within 11%
    for p in box.points:
        step = box.constants.step(
            p, box.bandwidth_gb_s * 1e9, entry.tflops * 1e12, entry.tensor_tflops * 1e12
        )
        assert p.users / step == pytest.approx(p.tok_s, rel=0.22 if p.layers in (16, 64) else 0.11)


def test_the_h100_box_takes_what_its_three_points_cannot_tell_from_the_h200() -> None:
    box = _box("h100-80gb")
    h200 = _box("h200-141gb").constants
    keep = tuple(k for k in box.fixed if k in fits.FITTED_NAMES)
    refit = fits.fit_gpu(box.points, 3350e9, 67e12, 989e12, h200, keep)
    refit = dataclasses.replace(refit, tensor_step_s=box.constants.tensor_step_s)
    _close(refit, box.constants)
    for p in box.points:  # three points, three unknowns: exact
        step = box.constants.step(p, 3350e9, 67e12, 989e12)
        assert p.users / step == pytest.approx(p.tok_s, rel=1e-4)
    assert box.constants.efficiency == pytest.approx(0.646, abs=0.01)  # the H200: 0.604
    assert box.constants.user_s == pytest.approx(h200.user_s, rel=0.1)  # both ~0.6 ms a user


@pytest.mark.parametrize("box", FITS.cpu, ids=lambda b: b.name.split(":")[0])
def test_each_cpu_box_is_what_its_points_give(box: fits.CpuBox) -> None:
    refit = fits.fit_cpu(box.points, box.cores, box.constants.host_bw)
    for f in dataclasses.fields(fits.CpuConstants):
        assert getattr(refit, f.name) == pytest.approx(getattr(box.constants, f.name), rel=1e-3)


def test_an_unmeasured_cpu_takes_the_host_with_the_nearest_thread_count() -> None:
    two, _ = fits.cpu_constants(2)
    many, basis = fits.cpu_constants(24)
    assert two.thread_flops == FITS.cpu[0].constants.thread_flops  # the 2-vCPU CI box
    assert many.thread_flops == FITS.cpu[1].constants.thread_flops  # the 32-vCPU device host
    assert many.host_bw == fits.UNMEASURED_HOST_BW and basis.kind == "cpu"


# --- the terms ---------------------------------------------------------------------------------


def test_experts_touched_by_a_batch() -> None:
    # qwen3moe 30b-a3b: 8 of 128 experts per token
    assert fits.experts_touched(1, 128, 8) == pytest.approx(8 / 128)
    assert fits.experts_touched(4, 128, 8) == pytest.approx(1 - (120 / 128) ** 4)  # 22.8%
    assert fits.experts_touched(16, 128, 8) == pytest.approx(0.644, abs=1e-3)
    assert fits.experts_touched(1000, 128, 8) == pytest.approx(1.0)
    assert fits.experts_touched(3, 0, 0) == 1.0  # a dense model reads everything


def test_a_moe_step_reads_more_experts_as_the_batch_grows(
    spec_of: Callable[..., ModelSpec],
) -> None:
    moe = spec_of("qwen3moe", "tiny")
    dense_part = moe.active_bytes_per_token() - sum(moe.expert_bytes) * 2 / 8
    assert fits.weights_read(moe, 1) == pytest.approx(moe.active_bytes_per_token())
    assert fits.weights_read(moe, 16) == pytest.approx(
        dense_part + sum(moe.expert_bytes) * fits.experts_touched(16, 8, 2)
    )
    llama = spec_of("llama", "tiny")
    assert fits.weights_read(llama, 16) == llama.active_bytes_per_token()


def test_batches_above_eight_run_on_the_tensor_cores() -> None:
    c = _box("h200-141gb").constants
    stage = perf.Stage(4.8e12, 0, 7.5e9, 32, None, flops=67e12, tensor_flops=989e12)
    eight, nine = stage.compute_s(8, c), stage.compute_s(9, c)
    assert eight == pytest.approx(8 * 2 * 7.5e9 / (67e12 * c.compute_eff))
    assert nine == pytest.approx(9 * 2 * 7.5e9 / (989e12 * c.tensor_core_eff))
    assert nine < eight  # llama.cpp's MMQ makes the ninth user cheap (H200: 515 -> 1118 tok/s)


def test_each_user_costs_host_time_per_step() -> None:
    c = _box("h200-141gb").constants
    stage = perf.Stage(4.8e12, 0, 0.0, 16, None, flops=67e12, tensor_flops=989e12)
    one = perf.layer_split_step([stage], 1, 256, c)
    sixteen = perf.layer_split_step([stage], 16, 256, c)
    assert sixteen - one == pytest.approx(15 * c.user_s)
    assert 0.4e-3 < c.user_s < 0.8e-3  # ~0.6 ms: sampling a 128k vocabulary, on the CPU


def test_measured_constants_replace_the_fitted_ones_for_that_card_only() -> None:
    h200 = GpuCard(0, "NVIDIA H200", 141 << 30, compute_capability=(9, 0))
    mine = GpuConstants(1e-4, 2e-5, 0.5, 5e-4, 0.4, 0.1)
    calibration = Calibration((("NVIDIA H200", mine),), None, "measured here")
    constants, basis = fits.constants_for(h200, calibration)
    assert basis.kind == "measured" and constants.efficiency == 0.5
    assert constants.tensor_step_s == _box("h200-141gb").constants.tensor_step_s
    other = dataclasses.replace(h200, name="NVIDIA H100 80GB HBM3")
    assert fits.constants_for(other, calibration)[1].kind == "fitted"


@pytest.mark.parametrize(
    ("name", "cc", "kind"),
    [
        ("NVIDIA H200", (9, 0), "fitted"),
        ("NVIDIA H100 80GB HBM3", (9, 0), "fitted"),
        ("NVIDIA GH200 480GB", (9, 0), "family"),
        ("NVIDIA GeForce RTX 3090", (8, 6), "unseen"),
    ],
)
def test_the_basis_says_how_far_off_a_prediction_may_be(
    name: str, cc: tuple[int, int], kind: str
) -> None:
    _, basis = fits.gpu_constants(GpuCard(0, name, 80 << 30, compute_capability=cc))
    assert basis.kind == kind
    assert basis.label.startswith(f"±{fits.ERROR_PCT[kind]:.0f}% (")
    assert fits.ERROR_PCT["fitted"] < fits.ERROR_PCT["family"] < fits.ERROR_PCT["unseen"]


# --- memory ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "size", "reported_mib"),
    [
        ("llama", "1b", 586.41),  # tied: the output's copy of the embedding is repacked too
        ("llama", "8b", 3204.0),  # its Q6_K output is not
        ("qwen3", "0.6b", 288.21),
        ("gemma3", "270m", 12.66),  # 640 wide: mostly Q5_0/Q8_0, which x86 does not repack
        ("qwen3moe", "tiny", 1.6),
        ("llama", "tiny", 0.54),
    ],
)
def test_cpu_repacked_copy_matches_llama_cpp(
    spec_of: Callable[..., ModelSpec], arch: str, size: str, reported_mib: float
) -> None:
    # llama.cpp on the CI box (AVX2): "CPU_REPACK model buffer size = ... MiB"
    avx2 = ("avx", "avx2", "fma")
    ours = memory.cpu_repack_bytes(spec_of(arch, size), avx2) / MIB
    assert ours == pytest.approx(reported_mib, abs=0.01)
    assert memory.cpu_repack_bytes(spec_of(arch, size), ("sse4_2",)) == 0


def test_which_types_a_cpu_repacks() -> None:
    assert memory.repacked_types(("avx2", "avx512f")) >= {"Q4_0", "Q4_K", "IQ4_NL", "Q2_K"}
    assert {"Q6_K", "Q8_0"} <= memory.repacked_types(("asimd", "asimddp"))


def test_each_cpu_worker_holds_its_own_repacked_copy(spec_of: Callable[..., ModelSpec]) -> None:
    spec = spec_of("llama", "8b")
    one = memory.cpu_worker_bytes(spec, 4096, 1, "f16", cpu_flags=("avx2",))
    # RSS of that worker on the CI box after load: 8481 MiB (anon 3784 + file 4697)
    total = (one.shared_bytes + one.private_bytes) / MIB
    assert total == pytest.approx(8481, abs=256)
    assert one.repacked_bytes / MIB == pytest.approx(3204.0, abs=0.05)


@pytest.mark.parametrize(
    ("arch", "size", "reported_mib"),
    [
        ("llama", "tiny", 8.01),  # fitted
        ("llama", "1b", 68.01),  # fitted
        ("llama", "8b", 120.0),  # fitted
        ("qwen3", "0.6b", 30.0),  # held out
        ("gemma3", "270m", 22.8),  # held out
    ],
)
def test_cpu_compute_buffer_against_llama_cpp(
    spec_of: Callable[..., ModelSpec], arch: str, size: str, reported_mib: float
) -> None:
    # llama.cpp's "CPU compute buffer size" at -c 4096 -np 1 -fa on, n_ubatch 512
    ours = memory.compute_buffer_bytes(spec_of(arch, size), 512, gpu=False) / MIB
    assert ours == pytest.approx(reported_mib, abs=3.0)


@pytest.mark.parametrize(
    ("arch", "size", "reported_mib"),
    [("llama", "tiny", 43.0), ("llama", "1b", 286.0), ("qwen3", "0.6b", 154.0)],
)
def test_flash_attention_off_adds_the_score_buffer(
    spec_of: Callable[..., ModelSpec], arch: str, size: str, reported_mib: float
) -> None:
    spec = spec_of(arch, size)
    off = memory.compute_buffer_bytes(spec, 512, gpu=False, flash_attn=False, ctx_per_slot=4096)
    assert off / MIB == pytest.approx(reported_mib, abs=12.0)
    on_gpu = memory.compute_buffer_bytes(spec, 512, True, False, 4096)
    assert on_gpu >= memory.compute_buffer_bytes(spec, 512, True, True, 4096)


def test_flash_attention_off_on_the_h200(spec_of: Callable[..., ModelSpec]) -> None:
    # the 8b shape, one card, -c 4096: NVML 5616 MiB with -fa on, 5804 with -fa off
    spec = spec_of("llama", "8b")
    on = memory.compute_buffer_bytes(spec, 512, True, True, 4096)
    off = memory.compute_buffer_bytes(spec, 512, True, False, 4096)
    assert (off - on) / MIB == pytest.approx(5804 - 5616, abs=32)


# --- the split rule ----------------------------------------------------------------------------


def test_a_tensor_split_is_read_one_way_everywhere() -> None:
    assert parse_split("3,1") == (3.0, 1.0)
    assert parse_split(" 0.6 / 0.4 ") == (0.6, 0.4)
    # proportions become llama.cpp's layers: 33 layers (32 + output) at 3:1 -> 25 and 8
    assert layer_counts((3, 1), 2, 32) == (25, 8)
    assert layer_counts((17, 16), 2, 32) == (17, 16)  # exact counts are used as given
    assert layer_counts((1, 0, 1), 3, 32) == (17, 0, 16)
    assert tensor_shares((3, 1), 2) == (3, 1)
    assert tensor_shares((0.6, 0.4), 2) == (60, 40)
    for text, words in [
        ("3,x", "not a tensor split"),
        ("", "one number per card"),
        ("3,,1", "one number per card"),
        ("nan,1", "finite"),
    ]:
        with pytest.raises(LauncherError, match=words):
            parse_split(text)
    for values, words in [((3, 1, 1), "3 number"), ((-1, 2), "negative"), ((0, 0), "all zeros")]:
        with pytest.raises(LauncherError, match=words):
            layer_counts(values, 2, 32)


# --- the CLI ------------------------------------------------------------------------------------


def test_plan_takes_a_tensor_split_and_flash_attention(
    model_factory: Callable[..., Path],
) -> None:
    model = str(model_factory("llama", "8b", sparse=True))
    hw = ("--hardware", "3090-and-1660")
    shown = run_cli("plan", model, *hw, "--layout", "pooled-layer", "--tensor-split", "3,1")
    assert shown.returncode == 0, shown.stderr
    assert "-ts 25,8" in shown.stdout and "tensor split 3,1" in shown.stdout
    rows = [line.split() for line in shown.stdout.splitlines() if line.strip()[:1] in "01"]
    assert [r[1] for r in rows if len(r) == 7][:2] == ["25", "8"]  # the layers column
    data = json.loads(run_cli("plan", model, *hw, "--tensor-split", "1,1", "--json").stdout)
    assert {layout["kind"] for layout in data["layouts"]} == {"pooled-layer", "pooled-tensor"}
    assert data["workload"]["flash_attn"] is True
    for args, sentence in [
        (("--tensor-split", "1,1,1"), "The tensor split has 3 number(s) for 2 card(s)"),
        (("--tensor-split", "1,1", "--layout", "per-card"), "applies to the pooled layouts"),
        (("--flash-attn", "off", "--kv-type", "q8_0"), "needs flash attention"),
    ]:
        result = run_cli("plan", model, *hw, *args)
        assert result.returncode != 0 and sentence in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    off = run_cli("plan", model, *hw, "--flash-attn", "off", "--json")
    assert "-fa off" in " ".join(json.loads(off.stdout)["layouts"][0]["processes"][0]["argv"])


def test_plan_says_where_its_speed_comes_from(model_factory: Callable[..., Path]) -> None:
    model = str(model_factory("llama", "8b", sparse=True))
    text = run_cli("plan", model, "--hardware", "four-h100-nvlink").stdout
    assert f"Speed ±{fits.ERROR_PCT['fitted']:.0f}% (fitted on 4x H100 SXM" in text
    text = run_cli("plan", model, "--hardware", "3090-and-1660").stdout
    assert "never measured" in text
    data = json.loads(run_cli("plan", model, "--hardware", "3090-and-1660", "--json").stdout)
    basis = data["layouts"][0]["predicted"]["basis"]
    assert basis["kind"] == "unseen" and basis["error_pct"] == fits.ERROR_PCT["unseen"]


def test_plan_measure_on_this_cpu(
    model_factory: Callable[..., Path], llama_server: Path, launcher_home: Path
) -> None:
    """Three short runs of the real llama-server on sparse synthetic models; the constants
    are kept for later plans, which say so."""
    model = str(model_factory("llama", "tiny"))
    server = ("--llama-server", str(llama_server))
    measured = run_cli(*server, "plan", model, "--measure", timeout=240)
    assert measured.returncode == 0, measured.stderr
    assert "run 3 of 3, probe model llama-1b" in measured.stderr
    assert "measured here by plan --measure" in measured.stdout
    stored = list((launcher_home / "state" / "calibration").glob("*.json"))
    assert len(stored) == 1
    data = json.loads(stored[0].read_text())
    cpu = data["kinds"][0]["cpu"]
    assert data["seconds"] < 60 and cpu["thread_bw"] > 0 and cpu["thread_flops"] > 0
    assert [p["users"] for p in data["kinds"][0]["points"]] == [1, 4, 1, 1, 4]
    later = run_cli(*server, "plan", model)
    assert "measured here by plan --measure" in later.stdout
    stored[0].write_text("{broken")  # a broken file: the fitted constants, no traceback
    again = run_cli(*server, "plan", model)
    assert again.returncode == 0 and "never measured" in again.stdout


def test_the_fit_points_carry_what_the_model_needs(spec_of: Callable[..., ModelSpec]) -> None:
    """A point made from a model (``point_for``) is what fits.toml stores: the llama 8b row of
    the H100 box."""
    spec = spec_of("llama", "8b")
    stored = _box("h100-80gb").points[0]
    made = fits.point_for(spec, stored.what, 1, stored.tok_s, 576)
    for f in dataclasses.fields(Point):
        value = getattr(made, f.name)
        if isinstance(value, float):
            assert math.isclose(value, getattr(stored, f.name), rel_tol=1e-9), f.name
        else:
            assert value == getattr(stored, f.name), f.name


def test_a_hardware_profile_gives_the_cpu_flags_that_decide_the_repacked_copy(
    model_factory: Callable[..., Path], tmp_path: Path
) -> None:
    model = str(model_factory("llama", "1b", sparse=True))
    base = 'format = 1\nname = "cpuonly"\n[[hosts]]\nname = "box"\nram_gb = 32\ncpu_cores = 8\n'
    plain = tmp_path / "plain.toml"
    plain.write_text(base)
    avx2 = tmp_path / "avx2.toml"
    avx2.write_text(base + 'cpu_flags = ["avx2", "fma"]\n')

    def host_gib(profile: Path) -> float:
        data = json.loads(run_cli("plan", model, "--hardware", str(profile), "--json").stdout)
        return float(data["layouts"][0]["host_bytes"]) / 2**30

    # the llama 1b shape's repacked copy: 586.41 MiB, as llama.cpp reported on AVX2
    assert (host_gib(avx2) - host_gib(plain)) * 1024 == pytest.approx(586.41, abs=0.1)
    bad = tmp_path / "bad.toml"
    bad.write_text(base + 'cpu_flags = "avx2"\n')
    result = run_cli("plan", model, "--hardware", str(bad))
    assert (
        result.returncode != 0
        and "cpu_flags" in result.stderr
        and "must be a list" in result.stderr
    )
