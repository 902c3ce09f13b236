"""The planner: hardware, model shape and the per-card numbers and rankings that follow."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher.errors import LauncherError
from launcher.gpu.inventory import Inventory, from_backend
from launcher.llamacpp.probe import ServerTarget, default_flags
from launcher.model.spec import ModelSpec, read_model_spec
from launcher.plan import memory as mem
from launcher.plan.advisor import plan
from launcher.plan.workload import Workload
from launcher.profiles import hardware
from tests import gpu_boxes
from tests.conftest import run_cli

MIB = 1 << 20
GIB = 1 << 30


@pytest.fixture(scope="module")
def spec_of(model_factory: Callable[..., Path]) -> Callable[..., ModelSpec]:
    cache: dict[tuple[str, str, int], ModelSpec] = {}

    def get(arch: str, size: str, parts: int = 1) -> ModelSpec:
        if (arch, size, parts) not in cache:
            cache[arch, size, parts] = read_model_spec(
                model_factory(arch, size, parts=parts, sparse=True)
            )
        return cache[arch, size, parts]

    return get


def profile(name: str) -> Inventory:
    return hardware.load_hardware_profile(hardware.resolve(name))


def layout(result: object, kind: str) -> object:
    return next(r.layout for r in result.layouts if r.layout.kind == kind)  # type: ignore[attr-defined]


# --- the model ---------------------------------------------------------------------------------


def test_llama_8b_spec(spec_of: Callable[..., ModelSpec]) -> None:
    spec = spec_of("llama", "8b")
    assert (spec.arch, spec.quantization, spec.n_layer, spec.n_embd) == (
        "llama",
        "Q4_K_M",
        32,
        4096,
    )
    assert spec.n_head_kv == (8,) * 32 and spec.head_dim_k == 128
    assert spec.n_vocab == 128256 and spec.training_context == 131072
    assert 8.0e9 < spec.parameters < 8.1e9  # Llama-3-8B: 8.03B
    assert (
        spec.weights_bytes
        == sum(spec.layer_bytes) + spec.token_embd_bytes + spec.output_bytes + spec.other_bytes
    )
    assert not spec.output_tied and not spec.kv_approximate


def test_multi_part_model_reads_like_one_file(
    spec_of: Callable[..., ModelSpec], model_factory: Callable[..., Path]
) -> None:
    whole = spec_of("llama", "tiny")
    split = read_model_spec(model_factory("llama", "tiny", parts=2))
    assert len(split.parts) == 2
    assert split.layer_bytes == whole.layer_bytes and split.weights_bytes == whole.weights_bytes


def test_missing_part_is_a_clear_error(model_factory: Callable[..., Path], tmp_path: Path) -> None:
    first = model_factory("qwen3", "tiny", parts=2)
    lonely = tmp_path / first.name
    lonely.write_bytes(first.read_bytes())
    with pytest.raises(LauncherError, match=r"-00002-of-00002.gguf is missing.*every part"):
        read_model_spec(lonely)


def test_sliding_window_layers(spec_of: Callable[..., ModelSpec]) -> None:
    spec = spec_of("gemma3", "tiny")  # 6 layers, window 128, every 6th global
    assert spec.swa_window == 128
    assert spec.swa_layers == (True, True, True, True, True, False)
    # KV of a 4096-token user: 5 window layers keep pad256(128 + 512) = 768 cells, 1 keeps 4096;
    # each cell is 1 KV head x 64 dims x (K + V) x 2 bytes = 256 bytes
    kv = sum(mem.kv_layer_bytes(spec, il, 4096, 1, "f16") for il in range(6))
    assert kv == (5 * 768 + 4096) * 256
    full = sum(
        mem.kv_layer_bytes(dataclasses.replace(spec, swa_layers=()), il, 4096, 1, "f16")
        for il in range(6)
    )
    assert kv < full / 2


def test_moe_reads_only_the_used_experts(spec_of: Callable[..., ModelSpec]) -> None:
    spec = spec_of("qwen3moe", "30b-a3b")
    assert (spec.n_expert, spec.n_expert_used) == (128, 8)
    assert spec.active_bytes_per_token() < spec.weights_bytes / 5
    h100 = profile("four-h100-nvlink")
    single = layout(plan(spec, h100, Workload(users=1), kind="per-card"), "per-card")
    assert single.throughput.single_user_tok_s > 200  # type: ignore[attr-defined]


# --- memory -------------------------------------------------------------------------------


def test_per_card_memory_of_8b_and_70b_on_an_h100(spec_of: Callable[..., ModelSpec]) -> None:
    """Against nvidia-smi after loading on one H100 (-c 4096 -np 1 -fa on, docs/validation):
    8B 5625 MiB, 70B 42041 MiB."""
    inv = from_backend(
        gpu_boxes.four_h100_backend(), hardware.HostInfo("h", 512 * GIB, 500 * GIB, 64)
    )
    w = Workload(users=1, ctx=4096, cards=("0",))
    for size, measured in (("8b", 5625), ("70b", 42041)):
        (card,) = layout(plan(spec_of("llama", size), inv, w, kind="per-card"), "per-card").cards  # type: ignore[attr-defined]
        assert abs(card.total_bytes / MIB - measured) < max(0.05 * measured, 256)
    (card,) = layout(plan(spec_of("llama", "8b"), inv, w, kind="per-card"), "per-card").cards  # type: ignore[attr-defined]
    assert round(card.weights_bytes / MIB) == 4403  # all but the token embedding
    assert card.kv_bytes == 32 * 4096 * 8 * 128 * 2 * 2  # layers x cells x heads x dim x K,V x f16


def test_llama_cpp_layer_assignment() -> None:
    # -ngl 38 of 81 layers, -ts 13,13,12: layers 43..80, the output layer (80) on the last card
    placed = mem.assign_layers(80, [13, 13, 12], 38)
    assert [len(p) for p in placed] == [13, 13, 12]
    assert placed[0][0] == 43 and placed[2][-1] == 80


def test_balanced_split_leaves_similar_headroom(spec_of: Callable[..., ModelSpec]) -> None:
    result = plan(
        spec_of("llama", "8b"), profile("six-2060s-risers"), Workload(users=6), kind="pooled-layer"
    )
    free_after = [c.free_after_bytes for c in layout(result, "pooled-layer").cards]  # type: ignore[attr-defined]
    assert max(free_after) - min(free_after) < 0.6 * GIB


# --- layouts and ranking ------------------------------------------------------------------------


def test_70b_on_three_2060s_does_not_fit_fully(spec_of: Callable[..., ModelSpec]) -> None:
    result = plan(spec_of("llama", "70b"), profile("three-2060s-x8"), Workload(users=1))
    best = result.layouts[0]
    assert best.layout.kind == "partial-offload"
    assert best.reason.startswith("The model does not fit fully on the cards")
    for kind in ("per-card", "pooled-layer", "pooled-tensor"):
        assert not layout(result, kind).feasible  # type: ignore[attr-defined]
    assert "GiB missing" in result.advice[0]
    missing = float(result.advice[0].split("free: ")[1].split(" GiB")[0])
    assert 15 < missing < 25  # ~43 GiB needed, 24 GiB of cards
    assert any("partial-offload" in line for line in result.advice)


def test_8b_on_six_2060s_on_risers_per_card_wins_for_many_users(
    spec_of: Callable[..., ModelSpec],
) -> None:
    spec = spec_of("llama", "8b")
    risers = profile("six-2060s-risers")
    result = plan(spec, risers, Workload(users=24))
    assert result.layouts[0].layout.kind == "per-card"
    per_card = layout(result, "per-card")
    assert per_card.workers == 6  # type: ignore[attr-defined]
    pooled = layout(result, "pooled-layer")
    # six workers of 4 users each against one of 24 (whose batch runs on the tensor cores)
    assert per_card.throughput.aggregate_tok_s > 2.5 * pooled.throughput.aggregate_tok_s  # type: ignore[attr-defined]
    # x1 risers show where they matter: a tensor split's prompt processing...
    x16_cards = tuple(
        dataclasses.replace(c, pcie=dataclasses.replace(c.pcie, width_max=16, width_current=16))
        for c in risers.local.cards
    )
    x16 = dataclasses.replace(risers, hosts=(dataclasses.replace(risers.local, cards=x16_cards),))
    fast = plan(spec, x16, Workload(users=24))
    t1 = layout(result, "pooled-tensor").throughput  # type: ignore[attr-defined]
    t16 = layout(fast, "pooled-tensor").throughput  # type: ignore[attr-defined]
    assert t1.prompt_tok_s < 0.5 * t16.prompt_tok_s
    assert t1.single_user_tok_s < t16.single_user_tok_s
    # ...and not where they do not: layer-split decode
    l1 = layout(result, "pooled-layer").throughput.single_user_tok_s  # type: ignore[attr-defined]
    l16 = layout(fast, "pooled-layer").throughput.single_user_tok_s  # type: ignore[attr-defined]
    assert l1 == pytest.approx(l16, rel=0.03)


def test_70b_on_four_h100(spec_of: Callable[..., ModelSpec]) -> None:
    spec = spec_of("llama", "70b")
    h100 = profile("four-h100-nvlink")
    one = plan(spec, h100, Workload(users=1, goal="latency"))
    assert layout(one, "per-card").feasible  # type: ignore[attr-defined]  # fits one card
    assert one.layouts[0].layout.kind == "pooled-tensor"
    tensor = one.layouts[0].layout.throughput.single_user_tok_s
    single = layout(one, "per-card").throughput.single_user_tok_s  # type: ignore[attr-defined]
    assert tensor == pytest.approx(79.8, rel=0.1) and single == pytest.approx(38.2, rel=0.1)
    many = plan(spec, h100, Workload(users=64))
    assert many.layouts[0].layout.kind == "per-card"
    assert "64 users" in many.layouts[0].reason


def test_baseline_8b_on_four_h100(spec_of: Callable[..., ModelSpec]) -> None:
    """DESIGN.md's measured baseline: per-card 3227 and pooled-layer 1002 tok/s at 64 users."""
    result = plan(spec_of("llama", "8b"), profile("four-h100-nvlink"), Workload(users=64))
    per_card = layout(result, "per-card").throughput.aggregate_tok_s  # type: ignore[attr-defined]
    pooled = layout(result, "pooled-layer").throughput.aggregate_tok_s  # type: ignore[attr-defined]
    assert per_card == pytest.approx(3227, rel=0.25) and pooled == pytest.approx(1002, rel=0.25)
    assert per_card / pooled > 2.9


def test_reserved_and_chosen_cards(spec_of: Callable[..., ModelSpec]) -> None:
    inv = profile("four-h100-nvlink")
    cards = list(inv.local.cards)
    cards[1] = dataclasses.replace(cards[1], reserved=True)
    inv = dataclasses.replace(inv, hosts=(dataclasses.replace(inv.local, cards=tuple(cards)),))
    spec = spec_of("llama", "8b")
    result = plan(spec, inv, Workload(users=12))
    for r in result.layouts:
        assert all(c.card != 1 for c in r.layout.cards), r.layout.kind
    per_card = layout(result, "per-card")
    assert [p.cards for p in per_card.processes] == [(0,), (2,), (3,)]  # type: ignore[attr-defined]
    only = plan(spec, inv, Workload(users=4, cards=("2", "3")), kind="pooled-layer")
    assert [c.card for c in only.layouts[0].layout.cards] == [2, 3]
    with pytest.raises(LauncherError, match="Card '7' is not in this box"):
        plan(spec, inv, Workload(exclude_cards=("7",)))


def test_processes_carry_exact_argv_env_and_ports(spec_of: Callable[..., ModelSpec]) -> None:
    inv = from_backend(
        gpu_boxes.four_h100_backend(), hardware.HostInfo("h", 512 * GIB, 500 * GIB, 64)
    )
    server = ServerTarget("/opt/llama-server", ("none", "layer", "tensor"), True)
    result = plan(
        spec_of("llama", "8b"),
        inv,
        Workload(users=8, ctx=2048),
        server,
        kind="per-card",
        router_port=9000,
    )
    procs = layout(result, "per-card").processes  # type: ignore[attr-defined]
    assert [p.port for p in procs] == [9001, 9002, 9003, 9004]
    first = procs[0]
    assert first.env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "GPU-h100-0"}
    argv = list(first.argv)
    assert argv[0] == "/opt/llama-server"
    for flag, value in (
        ("-c", "4096"),
        ("-np", "2"),
        ("-ngl", "999"),
        ("-fa", "on"),
        ("--host", "127.0.0.1"),
        ("--port", "9001"),
        ("-sm", "none"),
        ("--cache-ram", "0"),  # llama.cpp's RAM prompt cache off (plan.layouts.PROMPT_CACHE_OFF)
    ):
        assert argv[argv.index(flag) + 1] == value
    assert "--metrics" in argv
    pooled = plan(spec_of("llama", "8b"), inv, Workload(users=8), server, kind="pooled-layer")
    p = pooled.layouts[0].layout
    argv = list(p.processes[0].argv)
    assert argv[argv.index("-ts") + 1] == ",".join(map(str, p.tensor_split))
    assert sum(p.tensor_split) == 33
    assert (
        p.processes[0].env["CUDA_VISIBLE_DEVICES"] == "GPU-h100-0,GPU-h100-1,GPU-h100-2,GPU-h100-3"
    )


def test_prompt_cache_stays_as_llama_cpp_has_it_where_the_server_lacks_the_flag(
    spec_of: Callable[..., ModelSpec],
) -> None:
    # an older llama-server has neither --cache-ram nor a RAM prompt cache: the flag would
    # stop it from starting
    older = ServerTarget("llama-server", ("none", "layer"), True, supports_cache_ram=False)
    result = plan(spec_of("llama", "8b"), profile("four-h100-nvlink"), Workload(), older)
    for r in result.layouts:
        for proc in r.layout.processes:
            assert "--cache-ram" not in proc.argv
    assert default_flags(older) == () and default_flags(ServerTarget()) == ("--cache-ram", "0")


def test_no_tensor_split_without_support(spec_of: Callable[..., ModelSpec]) -> None:
    server = ServerTarget("llama-server", ("none", "layer"), True)
    result = plan(spec_of("llama", "8b"), profile("four-h100-nvlink"), Workload(), server)
    assert "pooled-tensor" not in [r.layout.kind for r in result.layouts]
    with pytest.raises(LauncherError, match="no -sm tensor"):
        plan(
            spec_of("llama", "8b"),
            profile("four-h100-nvlink"),
            Workload(),
            server,
            kind="pooled-tensor",
        )


# --- CLI ------------------------------------------------------------------------------------------


def test_plan_json_on_a_box_without_gpus(
    model_factory: Callable[..., Path], tmp_path: Path, llama_server: Path
) -> None:
    backend = gpu_boxes.save(gpu_boxes.no_driver_backend(), tmp_path / "box.json")
    result = run_cli(
        "--llama-server",
        str(llama_server),
        "plan",
        str(model_factory("llama")),
        "--json",
        env={"LLAMA_LAUNCHER_GPU_BACKEND": backend},
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) >= {"model", "workload", "host", "layouts"}
    (only,) = data["layouts"]
    assert only["kind"] == "cpu:1" and only["rank"] == 1 and only["cards"] == []
    assert set(only["predicted"]) == {
        "single_user_tok_s",
        "aggregate_tok_s",
        "prompt_tok_s",
        "basis",
    }
    assert only["predicted"]["basis"]["kind"] == "cpu"
    assert only["processes"][0]["argv"][0] == str(llama_server.resolve())


def test_plan_verify_asks_llama_fit_params_with_the_planned_flags(
    model_factory: Callable[..., Path], tmp_path: Path, llama_server: Path
) -> None:
    # llama-fit-params rejects server-only flags such as --cache-ram: they are left out
    backend = gpu_boxes.save(gpu_boxes.no_driver_backend(), tmp_path / "box.json")
    result = run_cli(
        "--llama-server", str(llama_server),
        "plan", str(model_factory("llama")), "--layout", "cpu:1", "--verify",
        env={"LLAMA_LAUNCHER_GPU_BACKEND": backend},
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--cache-ram 0" in result.stdout  # the planned command line
    assert "llama-fit-params for cpu:1" in result.stdout
    assert "host: weights" in result.stdout


def test_plan_text_with_a_profile(model_factory: Callable[..., Path]) -> None:
    result = run_cli(
        "plan",
        str(model_factory("llama", "8b", sparse=True)),
        "--hardware",
        "four-h100-nvlink",
        "--users",
        "64",
    )
    assert result.returncode == 0, result.stderr
    assert "1. per-card" in result.stdout and "CUDA_VISIBLE_DEVICES=0" in result.stdout
    data = json.loads(
        run_cli(
            "plan",
            str(model_factory("llama", "8b", sparse=True)),
            "--hardware",
            "four-h100-nvlink",
            "--json",
        ).stdout
    )
    card = data["layouts"][0]["cards"][0]
    assert set(card) == {
        "index",
        "host",  # another box's card lent over RPC; null here
        "uuid",
        "weights_bytes",
        "kv_bytes",
        "compute_bytes",
        "total_bytes",
        "free_after_bytes",
    }
    assert card["uuid"] is None  # cards from a profile
    assert data["workload"]["users"] == 16  # 4 per card by default


def test_plan_bad_inputs_are_one_sentence(tmp_path: Path) -> None:
    missing = run_cli("plan", str(tmp_path / "nope.gguf"), "--hardware", "four-h100-nvlink")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    junk = tmp_path / "junk.gguf"
    junk.write_text("hello")
    bad = run_cli("plan", str(junk), "--hardware", "four-h100-nvlink")
    assert bad.returncode == 2 and "not a GGUF file" in bad.stderr
    assert "Traceback" not in missing.stderr + bad.stderr
