"""bench: real CPU llama-servers measured through the router, rows kept on Ctrl-C, calibration."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from launcher.bench import results
from launcher.bench.compare import plot, table
from launcher.bench.results import BenchRun
from tests.conftest import run_cli


def bench_env(llama_server: Path, home: Path) -> dict[str, str]:
    return {"LLAMA_SERVER": str(llama_server), "LLAMA_LAUNCHER_HOME": str(home)}


def servers_of(model: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if str(model) in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def test_bench_cpu1_and_cpu2_counts_match_the_servers(
    model_factory: Callable[..., Path], llama_server: Path, launcher_home: Path, tmp_path: Path
) -> None:
    model = model_factory("llama")
    out = tmp_path / "bench.json"
    result = run_cli(
        "bench",
        str(model),
        "--layouts",
        "cpu:1,cpu:2",
        "--users",
        "1,2",
        "--tokens",
        "16",
        "--prompt-tokens",
        "32",
        "--json",
        "--out",
        str(out),
        env=bench_env(llama_server, launcher_home),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)["runs"]
    assert [(r["layout"], r["users"]) for r in runs] == [
        ("cpu:1", 1),
        ("cpu:1", 2),
        ("cpu:2", 1),
        ("cpu:2", 2),
    ]
    for r in runs:
        assert r["errors"] == 0
        assert r["tokens"] == r["requests"] * 16
        assert r["server_tokens"] == r["tokens"]  # the workers' own counters agree exactly
        assert r["predicted_aggregate_tok_s"] > 0 and r["aggregate_tok_s"] > 0
        for key in (
            "per_user_tok_s_p50",
            "ttft_ms_p50",
            "latency_ms_p50",
            "latency_ms_p95",
            "latency_ms_p99",
        ):
            assert key in r
    assert json.loads(out.read_text()) == {"runs": runs}
    stored = (launcher_home / "state/bench/results.jsonl").read_text().splitlines()
    assert len(stored) == 4
    assert not servers_of(model)
    # plan now shows the measurement for this box
    shown = run_cli(
        "plan",
        str(model),
        "--layout",
        "cpu:2",
        "--users",
        "2",
        env=bench_env(llama_server, launcher_home),
    )
    assert "tok/s for 2 user(s) (measured, from 'llama-launcher bench')" in shown.stdout


def test_ctrl_c_keeps_the_finished_rows(
    model_factory: Callable[..., Path], llama_server: Path, launcher_home: Path, tmp_path: Path
) -> None:
    model = model_factory("qwen3")
    out = tmp_path / "partial.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launcher",
            "bench",
            str(model),
            "--layouts",
            "cpu:1,cpu:2",
            "--users",
            "1,2,4",
            "--tokens",
            "64",
            "--prompt-tokens",
            "32",
            "--out",
            str(out),
        ],
        env={**os.environ, **bench_env(llama_server, launcher_home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        if "cpu:1: 1 user(s): " in line:  # the first row is measured
            break
        assert time.monotonic() < deadline
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Interrupted:" in stderr and "finished row(s) kept" in stderr
    rows = json.loads(out.read_text())["runs"]
    assert 1 <= len(rows) < 6 and rows[0]["layout"] == "cpu:1" and rows[0]["users"] == 1
    time.sleep(0.5)
    assert not servers_of(model)


def _run(layout: str, users: int, measured: float, predicted: float) -> BenchRun:
    return BenchRun(layout, users, 10, 100, measured, 1.0, 1.0, 1.0, 1.0, 1.0, 0, predicted, 100)


def test_calibration_is_checked_on_a_point_it_was_not_fitted_on() -> None:
    # this box runs at 0.8 + 0.1 ln(users) of the prediction
    truth = {u: 0.8 + 0.1 * math.log(u) for u in (1, 16, 64)}
    runs = [_run("per-card", u, 1000 * f, 1000) for u, f in truth.items()]
    fix = results.correction(runs, "per-card", fit_users={1, 64})
    assert fix is not None and fix.points == (1, 64)
    assert abs(fix.factor(16) - truth[16]) < 1e-9  # held out, predicted exactly
    value, source = results.calibrated(runs[:1] + runs[2:], "per-card", 16, 1000) or (0, "")
    assert abs(value - 1000 * truth[16]) < 1e-6 and source.startswith("calibrated")
    assert results.calibrated(runs, "per-card", 64, 1000) == (1000 * truth[64], "measured")
    assert results.calibrated(runs, "pooled-layer", 16, 1000) is None


def test_table_and_plot() -> None:
    runs = [
        _run("per-card", 1, 200, 250),
        _run("per-card", 16, 900, 1000),
        _run("pooled-layer", 1, 190, 230),
        _run("pooled-layer", 16, 400, 500),
    ]
    text = table(runs)
    assert text.splitlines()[0].split()[:5] == ["layout", "users", "reqs", "tokens", "tok/s"]
    assert "0.80" in text and "0.90" in text
    chart = plot(runs)
    assert "* per-card" in chart and "o pooled-layer" in chart and "900" in chart
