"""The fleet spec and llama-server's arguments: plain values that survive JSON, and argv built
in one place."""

from __future__ import annotations

import json

import pytest

from launcher.errors import LauncherError
from launcher.llamacpp.args import PROMPT_CACHE_OFF, ServerArgs
from launcher.llamacpp.poll import WorkerSnapshot
from launcher.llamacpp.wire import SlotState, parse_slots, tokens_in
from launcher.spec.fleet import (
    FleetSpec,
    GroupSpec,
    RemoteMember,
    RouterSpec,
    ServerSettings,
    WorkerSpec,
    check_name,
    name_from_model,
)


def _args(**changes: object) -> ServerArgs:
    base = ServerArgs("llama-server", "/m/x.gguf", 8081, 4, 1024, defaults=PROMPT_CACHE_OFF)
    return base.replace(**changes)


def test_argv_is_built_from_the_settings() -> None:
    gpu = _args(kv_type="q8_0", gpu_layers=999, split_mode="layer", tensor_split=(16, 17),
                fit_off=True, extra=("--temp", "0.7"))  # fmt: skip
    assert gpu.argv() == (
        "llama-server", "-m", "/m/x.gguf", "--host", "127.0.0.1", "--port", "8081",
        "-c", "4096", "-np", "4", "-fa", "on", "--metrics", "-ctk", "q8_0", "-ctv", "q8_0",
        "--cache-ram", "0", "-ngl", "999", "-sm", "layer", "-ts", "16,17", "--fit", "off",
        "--temp", "0.7",
    )  # fmt: skip
    # a profile's --cache-ram replaces the launcher's default instead of repeating it
    assert _args(extra=("--cache-ram", "8192")).argv().count("--cache-ram") == 1
    assert "--cache-ram" not in _args(extra=("--cache-ram=64",)).argv()[:-1]
    # a new port is a new value, never an edit of the list
    assert _args().replace(port=9000).argv()[6] == "9000" and _args().port == 8081
    assert _args(flash_attn=False, threads=2).argv()[11:13] == ("-fa", "off")


def test_a_planned_spec_survives_json() -> None:
    worker = WorkerSpec(_args(gpu_layers=0, threads=2), {"CUDA_VISIBLE_DEVICES": ""}, ())
    group = GroupSpec(
        name="x",
        model="/m/x.gguf",
        layout="cpu:1",
        aliases=("gpt-4o",),
        users=4,
        ctx=1024,
        server=ServerSettings(kv_type="q8_0", extra_args=("--temp", "0.7")),
        workers=(worker,),
    )
    spec = FleetSpec(
        "fleet",
        (group,),
        RouterSpec(port=9000, members=(RemoteMember("http://10.0.0.2:8080", 0.5, "K"),)),
        source="/p.toml",
    )
    again = FleetSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec and again.planned and again.workers[0].args.argv() == worker.args.argv()
    assert not FleetSpec("f", (GroupSpec("x", "/m/x.gguf"),)).planned


def test_snapshots_survive_json() -> None:
    slots = parse_slots(
        [
            {"id": 0, "id_task": 7, "is_processing": True, "next_token": [{"n_decoded": 12}]},
            {"id": 1, "is_processing": False},
            "not a slot",
        ]
    )
    assert slots == (SlotState(0, True, 7, 12), SlotState(1, False, None, 0))
    snap = WorkerSnapshot(1.5, True, 100, 20.0, slots, 1, 0)
    assert WorkerSnapshot.from_json(json.loads(json.dumps(snap.to_json()))) == snap
    assert (snap.slots_busy, snap.slots_total) == (1, 2)


def test_tokens_at_the_end_of_an_answer() -> None:
    stream = b'data: {"content":"x"}\n\ndata: {"tokens_predicted": 5, "stop": true}\n\n'
    assert tokens_in(stream, streaming=True) == 5
    assert tokens_in(b'{"usage": {"completion_tokens": 8}}', streaming=False) == 8
    assert tokens_in(b"data: [DONE]\n\n", streaming=True) == 0


def test_names() -> None:
    assert name_from_model("/m/Qwen2.5 32B-00001-of-00002.gguf") == "Qwen2.5-32B"
    assert name_from_model("/m/.hidden.gguf") == "hidden"
    assert check_name("my-fleet_1.2") == "my-fleet_1.2"
    for bad in ("../x", "a/b", ".x", "x" * 65, ""):
        with pytest.raises(LauncherError, match="not a usable fleet name"):
            check_name(bad)


def test_group_kinds_give_their_flags_and_routes() -> None:
    from launcher.llamacpp.args import ServerArgs
    from launcher.router.server import path_kind

    base = ServerArgs("llama-server", "m.gguf", 8081, 1, 512)
    assert "--embeddings" in base.replace(embeddings=True).argv()
    assert "--reranking" in base.replace(reranking=True).argv()
    assert base.replace(alias="chat").argv()[-2:] == ("--alias", "chat")
    # a profile's own --alias wins over the group's name
    own = base.replace(alias="chat", extra=("--alias", "mine")).argv()
    assert own.count("--alias") == 1 and own[-1] == "mine"
    assert path_kind("/v1/rerank") == "rerank" and path_kind("/v1/embeddings") == "embedding"
    assert path_kind("/v1/chat/completions") == "generation" and path_kind("/tokenize") is None


def test_fleet_spec_problems_name_each_inconsistency() -> None:
    from launcher.spec.fleet import GroupRoute

    a = GroupSpec(name="a", model="a.gguf", aliases=("x",), route=GroupRoute(overflow_to="zz"))
    b = GroupSpec(name="b", model="b.gguf", aliases=("x",), exclusive_with=("a",))
    spec = FleetSpec("f", (a, b), RouterSpec(default_model="nope"))
    problems = " ".join(spec.problems())
    assert "'x' is served by both a and b" in problems
    assert "routes to 'zz'" in problems
    assert "exclusive with 'a', which is not an on-demand group" in problems
    assert "default model 'nope'" in problems
    assert FleetSpec("f", (GroupSpec(name="a", model="a.gguf"),)).problems() == []
