"""The box planner: several models on one box (hardware profiles, sparse synthetic models)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher.app import hardware
from launcher.model.spec import read_model_spec
from launcher.plan.box import BoxPlan, ModelRequest, plan_box
from launcher.plan.workload import Workload
from launcher.profiles.store import read_toml
from tests.conftest import run_cli

PRO_AND_5060 = """format = 1
name = "pro6000-and-5060ti-one-box"
[[hosts]]
name = "workstation"
ram_gb = 128
cpu_cores = 24
[[hosts.cards]]
card = "rtx-pro-6000-96gb"
pcie = "gen5 x16"
[[hosts.cards]]
card = "rtx-5060-ti-16gb"
pcie = "gen4 x8"
"""


def box(
    profile: str, models: list[tuple[Path, int]], goal: str = "throughput"
) -> tuple[BoxPlan, dict[int, int]]:
    """The best box plan for (model, users) pairs at 4096 tokens, and each card's memory."""
    inventory = hardware.inventory(profile)
    requests = [
        ModelRequest(p.stem.split("-")[1], read_model_spec(p), Workload(users=u, ctx=4096))
        for p, u in models
    ]
    result = plan_box(requests, inventory, goal=goal)
    assert result.best is not None
    totals = {c.index: c.memory_total_bytes for c in inventory.local.cards}
    return result.best, totals


def check_memory(plan: BoxPlan, totals: dict[int, int]) -> None:
    """The resident groups' memory on each card adds up to less than the card holds."""
    used: dict[int, int] = {}
    for p in plan.resident:
        for c in p.layout.cards:
            used[c.card] = used.get(c.card, 0) + c.total_bytes
    for card, n in used.items():
        assert n < totals[card], (card, n, totals[card])


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> dict[str, Path]:
    from launcher.model import synthetic

    root = tmp_path_factory.mktemp("shapes")
    out = {}
    for arch, size in (("qwen3", "32b"), ("qwen3", "14b"), ("llama", "8b"), ("llama", "70b")):
        shape = synthetic.shape_for(arch, size)
        path = root / f"{arch}-{size}.gguf"
        synthetic.write_model(
            path, shape, vocab_dir / synthetic.vocab_file_name(shape), sparse=True
        )
        out[size] = path
    return out


def test_six_8gb_cards_pool_the_32b_and_run_the_8b_per_card_on_the_rest(
    shapes: dict[str, Path],
) -> None:
    plan, totals = box("six-2060s-risers", [(shapes["32b"], 4), (shapes["8b"], 8)])
    big, small = plan.placement("32b"), plan.placement("8b")
    assert big is not None and small is not None and not plan.missing
    assert big.layout.kind.startswith("pooled-") and len(big.cards) >= 3  # it must pool
    assert small.layout.kind == "per-card" and small.layout.workers == len(small.cards)
    assert not set(big.cards) & set(small.cards)  # each on cards of its own
    assert set(big.cards) | set(small.cards) == set(range(6))  # the whole box is used
    assert not any(p.on_demand for p in plan.placements)
    check_memory(plan, totals)
    assert "32b: pooled-" in plan.reason and "8b: per-card" in plan.reason


def test_96gb_and_16gb_cards_hold_a_32b_a_14b_and_an_8b(
    shapes: dict[str, Path], tmp_path: Path
) -> None:
    profile = tmp_path / "pro.toml"
    profile.write_text(PRO_AND_5060)
    plan, totals = box(str(profile), [(shapes["32b"], 8), (shapes["14b"], 8), (shapes["8b"], 16)])
    assert not plan.missing and all(not p.on_demand for p in plan.placements)
    names = {p.name: p for p in plan.placements}
    assert 0 in names["32b"].cards and 0 in names["14b"].cards  # the big ones share the 96 GB
    assert 1 in names["8b"].cards  # the 16 GB card runs the small model
    check_memory(plan, totals)
    # groups sharing a card share its bandwidth: the prediction says so
    assert names["32b"].contention < 1 and "of the bandwidth of cards it shares" in plan.reason
    shared = names["32b"].throughput.aggregate_tok_s
    assert shared < names["32b"].layout.throughput.aggregate_tok_s


def test_models_that_cannot_all_be_resident_load_on_demand_or_are_named_missing(
    shapes: dict[str, Path],
) -> None:
    plan, _ = box("three-2060s-x8", [(shapes["32b"], 2), (shapes["14b"], 4), (shapes["8b"], 4)])
    assert not plan.missing
    on_demand = {p.name: p for p in plan.placements if p.on_demand}
    assert "32b" in on_demand  # it needs all three cards: it takes turns with the others
    assert set(on_demand["32b"].exclusive_with) == set(on_demand) - {"32b"}
    assert "loads on demand" in plan.reason or "loaded on demand" in plan.reason

    plan, _ = box("six-2060s-risers", [(shapes["70b"], 2), (shapes["32b"], 2)])
    assert plan.placement("70b") is None
    assert plan.missing and "70b does not fit even alone" in plan.missing[0]
    assert "GiB of weights" in plan.missing[0]


def test_plan_several_models_json_and_per_model_values(shapes: dict[str, Path]) -> None:
    result = run_cli(
        "plan",
        str(shapes["32b"]),
        str(shapes["8b"]),
        "--hardware",
        "six-2060s-risers",
        "--users",
        "4,8",
        "--ctx",
        "4096",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) >= {"models", "workload", "host", "box_plans"}
    assert [m["group"] for m in data["models"]] == ["qwen3-32b", "llama-8b"]
    best = data["box_plans"][0]
    assert best["rank"] == 1 and best["reason"]
    assert [g["name"] for g in best["groups"]] == ["qwen3-32b", "llama-8b"]
    assert set(best["predicted"]) == {"qwen3-32b", "llama-8b"}
    assert {c["group"] for c in best["cards"]} == {"qwen3-32b", "llama-8b"}
    ports = [p["port"] for g in best["groups"] for p in g["processes"]]
    assert ports == list(range(8081, 8081 + len(ports)))  # every worker its own port
    assert best["groups"][1]["users"] == 8
    text = run_cli(
        "plan",
        str(shapes["32b"]),
        str(shapes["8b"]),
        "--hardware",
        "six-2060s-risers",
        "--users",
        "4,8",
    )
    assert text.returncode == 0 and "card 5 (8 GiB): llama-8b" in text.stdout
    wrong = run_cli(
        "plan",
        str(shapes["32b"]),
        str(shapes["8b"]),
        "--hardware",
        "six-2060s-risers",
        "--users",
        "4,8,2",
    )
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert "--users has 3 values for 2 models" in wrong.stderr


def test_profile_save_of_several_models_writes_one_group_each(
    model_factory: Callable[..., Path], llama_server: Path, launcher_home: Path
) -> None:
    env = {"LLAMA_SERVER": str(llama_server)}
    a, b = model_factory("llama"), model_factory("qwen3")
    result = run_cli(
        "profile",
        "save",
        "pair",
        "--model",
        str(a),
        "--model",
        str(b),
        "--users",
        "1,2",
        "--ctx",
        "512",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    saved = read_toml(launcher_home / "config" / "launch" / "pair.toml")
    assert saved["format"] == 2
    assert [(g["name"], g["users"], g["layout"]) for g in saved["groups"]] == [
        ("llama-tiny-1", 1, "cpu:1"),
        ("qwen3-tiny-1", 2, "cpu:1"),
    ]
