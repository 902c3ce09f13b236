"""The benchmark programs the docs cite run and measure what they say, on small settings."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest

from launcher.bench.results import BenchRun
from launcher.benchmarks import (
    fleet,
    gpu_sampler,
    group_routing,
    holdout,
    idle_connections,
    nvidia_smi,
    plan_speed,
    router_capacity,
    router_cost,
    speed_holdout,
    tui_refresh,
    worker_kill,
)
from launcher.benchmarks.boxes import h100s
from launcher.gpu.backend import FixedBackend
from tests.test_fleet import base_port


def test_gpu_sampler_cost_counts_every_tick() -> None:
    cost = gpu_sampler.measure(FixedBackend(h100s(2), delay_s=0.01), [0, 1], 2.2)
    assert cost.ticks >= 2 and cost.samples == 2 * cost.ticks
    assert 0 <= cost.late_ms_p50 <= cost.late_ms_max < 1000 and cost.cpu_s >= 0


def test_plan_speed_reads_only_the_headers(model_factory: Callable[..., Path]) -> None:
    first = model_factory("llama", "8b", parts=2, sparse=True)
    speed = plan_speed.measure(first, runs=3)
    assert speed.parts == 2 and speed.layouts >= 3 and speed.best == "per-card"
    assert speed.header_bytes < speed.file_bytes / 100
    assert speed.warm_read_ms > 0 and speed.warm_plan_ms > 0


def test_router_cost_passes_every_chunk() -> None:
    cost = router_cost.measure(requests=20, chunks=5, interval_ms=2.0, streams=4)
    assert cost.via_chunks == 4 * (5 + 1)
    assert cost.direct_p50_ms > 0 and cost.via_p50_ms > 0 and cost.stream_ratio > 0


def test_router_capacity_counts_both_ways() -> None:
    c = router_capacity.measure(clients=4, seconds=0.5, chunks=3)
    assert c.direct_rps > 0 and c.via_rps > 0 and c.stream_via_rps > 0
    assert c.via_p99_ms >= c.via_p50_ms > 0


def test_idle_connections_holds_them_and_keeps_serving() -> None:
    c = idle_connections.measure(idle=50, seconds=0.5)
    assert c.idle == 50 and c.refused == 0 and c.errors_during == 0
    assert c.rps_during > 0 and c.router_rss_mb > 0


def test_worker_kill_counts_what_was_lost(
    llama_server: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMA_SERVER", str(llama_server))
    k = worker_kill.measure(clients=2, seconds=3.0, port=base_port())
    assert k.clean_but_cut == 0  # a cut answer always reaches its client as an error
    assert k.served > 0 and k.back_healthy_s > 0


def test_group_routing_times_both_routers() -> None:
    cost = group_routing.measure(requests=50, groups=3)
    assert cost.requests == 50 and cost.groups == 3
    assert cost.one_group_p50_ms > 0 and cost.many_groups_p50_ms > 0


async def test_tui_refresh_times_each_round() -> None:
    times = await tui_refresh.measure(3)
    assert len(times.total_ms) == 3 and all(t > 0 for t in times.total_ms)


def test_fleet_start_and_polling(llama_server: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_SERVER", str(llama_server))
    t = fleet.measure(seconds=1.5, base_port=base_port(), poll_workers=2)
    assert len(t.each_of_four_s) == 4 and t.four_workers_s >= max(t.each_of_four_s) > 0
    assert t.poll_workers == 2 and t.polls >= 2


def _row(users: int, measured: float) -> BenchRun:
    return BenchRun("per-card", users, 10, 100, measured, 1.0, 1.0, 1.0, 1.0, 1.0, 0, 1000, 100,
                    hardware_key="h", model_key="m", workers=8)  # fmt: skip


def test_holdout_checks_points_outside_the_fit(tmp_path: Path) -> None:
    # 8 workers (every point on one side of the kernel change); this box runs at
    # 0.8 + 0.1 ln(users) of the prediction, so 16 users is predicted exactly
    rows = [_row(u, 1000 * (0.8 + 0.1 * math.log(u))) for u in (1, 16, 64)]
    ((model, check),) = holdout.held_out(rows, {1, 64})
    assert model == "m" and check.users == 16 and abs(check.error_pct) < 1e-6
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(asdict(r)) for r in rows) + "\n")
    assert holdout.main([str(path), "--fit", "1,64"]) == 0
    rows[1] = _row(16, 500)  # measured far below the calibration
    path.write_text("\n".join(json.dumps(asdict(r)) for r in rows) + "\n")
    assert holdout.main([str(path), "--fit", "1,64"]) == 1


def test_nvidia_smi_comparison_flags_a_different_field() -> None:
    gpu = {
        "index": 0, "uuid": "GPU-a", "name": "NVIDIA H100", "pci_bus_id": "0000:18:00.0",
        "memory_total_bytes": 81559 << 20, "memory_used_bytes": 1 << 20,
        "memory_free_bytes": 81000 << 20, "memory_reserved_bytes": 558 << 20,
        "pcie": {"gen_current": 5, "gen_max": 5, "gen_card_max": 5, "width_current": 16,
                 "width_max": 16},
        "compute_capability": "9.0", "power_draw_w": 70.0, "power_limit_w": 700.0,
        "temperature_c": 30, "sm_clock_mhz": 345, "memory_clock_mhz": 2619,
        "memory_clock_max_mhz": 2619, "display_active": False, "mig_enabled": False,
    }  # fmt: skip
    data = {"gpus": [gpu], "driver": {"driver_version": "580.1"}}
    head = (
        "index, uuid, name, pci.bus_id, memory.total [MiB], memory.used [MiB], memory.free [MiB],"
        " memory.reserved [MiB], pcie.link.gen.current, pcie.link.gen.max, pcie.link.gen.gpumax,"
        " pcie.link.width.current, pcie.link.width.max, compute_cap, driver_version,"
        " power.draw [W], power.limit [W], enforced.power.limit [W], temperature.gpu,"
        " clocks.current.sm [MHz], clocks.current.memory [MHz], clocks.max.memory [MHz],"
        " display_active, mig.mode.current"
    )
    row = (
        "0, GPU-a, NVIDIA H100, 00000000:18:00.0, 81559, 1, 81000, 558, 5, 5, 5, 16, 16, 9.0,"
        " 580.1, 72.5, 700.00, 700.00, 31, 345, 2619, 2619, Disabled, Disabled"
    )
    checks = nvidia_smi.compare(data, f"{head}\n{row}\n")
    assert len(checks) == 23 and all(c.ok for c in checks)
    checks = nvidia_smi.compare(data, f"{head}\n{row.replace('81559', '40000')}\n")
    assert [c.field for c in checks if not c.ok] == ["memory_total (MiB)"]


def test_speed_holdout_runs_each_case_as_planned(
    model_factory: Callable[..., Path],
    llama_server: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One CPU case at 1 and 2 users: the planned worker runs, its rate and RSS are recorded
    beside the prediction, the table shows both and the error."""
    monkeypatch.setenv("LLAMA_SERVER", str(llama_server))
    monkeypatch.setenv("LLAMA_LAUNCHER_GPU_BACKEND", str(_no_gpu(tmp_path)))
    cases = tmp_path / "cases.json"
    model = model_factory("llama")
    cases.write_text(json.dumps([{"model": str(model), "layout": "cpu:1", "users": [1, 2]}]))
    out = tmp_path / "rows.jsonl"
    assert speed_holdout.main([str(cases), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["users"] for r in rows] == [1, 2]
    for r in rows:
        assert r["measured"] > 0 and r["predicted"] > 0 and r["basis"] == "cpu"
        ((card, planned, real),) = r["memory"]
        assert card == -1 and real > 0 and abs(real - planned) < 256 << 20  # RSS
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("| case | users | measured tok/s")
    assert f"| {model.stem} cpu:1 | 2 |" in table


def _no_gpu(tmp_path: Path) -> Path:
    from tests import gpu_boxes

    return Path(gpu_boxes.save(gpu_boxes.no_driver_backend(), tmp_path / "box.json"))


def test_speed_holdout_runs_a_pooled_rpc_case_on_lent_cards(
    model_factory: Callable[..., Path],
    llama_server: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A pooled-rpc case: card 1 becomes the second box (an rpc-server on loopback), the
    worker runs on the others with --rpc at the planned port; its rate is recorded beside the
    plan (the CPU build serves the fixed backend's cards with its CPU)."""
    from tests import gpu_boxes

    monkeypatch.setenv("LLAMA_SERVER", str(llama_server))
    monkeypatch.setenv(
        "LLAMA_LAUNCHER_GPU_BACKEND",
        gpu_boxes.save(gpu_boxes.four_h100_backend(), tmp_path / "box.json"),
    )
    cases = tmp_path / "cases.json"
    model = model_factory("llama")
    case = {"model": str(model), "layout": "pooled-rpc", "rpc_cards": "1", "users": [1]}
    cases.write_text(json.dumps([case]))
    out = tmp_path / "rows.jsonl"
    assert speed_holdout.main([str(cases), "--out", str(out)]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["measured"] > 0 and row["predicted"] > 0
    assert [m[0] for m in row["memory"]] == [0, 2, 3, 1]  # the lent card last
    assert f"| {model.stem} pooled-rpc | 1 |" in capsys.readouterr().out
    from launcher import paths

    rpc_logs = list(paths.state_dir().rglob("*.rpc.log"))  # the rpc-server served the worker
    assert any("Accepted client connection" in p.read_text() for p in rpc_logs)
