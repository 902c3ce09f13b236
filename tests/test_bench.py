"""bench: real CPU llama-servers measured through the router, rows kept on Ctrl-C, calibration."""

from __future__ import annotations

import asyncio
import dataclasses
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
import pytest

from launcher.app.bench import server_flags
from launcher.app.fleet import group_from_layout
from launcher.bench import results
from launcher.bench.load import LoadSpec, requests_sent, run_load
from launcher.bench.report import plot, table
from launcher.bench.results import BenchRun, Keys
from launcher.gpu.host import HostInfo
from launcher.gpu.inventory import Host, Inventory
from launcher.llamacpp.args import PROMPT_CACHE_OFF, ServerArgs
from launcher.model.spec import read_model_spec
from launcher.plan.layouts import Layout, Process
from launcher.plan.perf import Throughput, served_tok_s
from launcher.plan.workload import Workload
from launcher.spec.fleet import ServerSettings, WorkerSpec
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
    # progress says which point of how many, and about how long is left
    assert "(point 1 of 4, about " in result.stderr and "(point 4 of 4, about " in result.stderr
    runs = json.loads(result.stdout)["runs"]
    assert all(r["busy"] == "" for r in runs)  # nothing else ran on the box
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
        assert sum(r["worker_tokens"]) == r["tokens"] and r["workers"] == len(r["worker_tokens"])
        assert r["predicted_aggregate_tok_s"] > 0 and r["aggregate_tok_s"] > 0
        for key in (
            "per_user_tok_s_p50",
            "ttft_ms_p50",
            "latency_ms_p50",
            "latency_ms_p95",
            "latency_ms_p99",
        ):
            assert key in r
    assert [len(r["worker_tokens"]) for r in runs] == [1, 1, 2, 2]
    assert min(runs[3]["worker_tokens"]) > 0  # 2 users on cpu:2: the router used both
    assert json.loads(out.read_text()) == json.loads(result.stdout)
    assert json.loads(result.stdout)["calibration_check"] == []  # two points: no inner one
    # the workers ran with llama.cpp's RAM prompt cache off, as the rows record
    assert all(r["server_defaults"] == ["--cache-ram", "0"] for r in runs)
    log = (launcher_home / "state/logs/bench-cpu2/w1.log").read_text()
    assert "--cache-idle-slots requires --cache-ram, disabling" in log
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
    assert (
        "tok/s for 2 user(s) (measured, 32-token prompts, 16-token answers, from "
        "'llama-launcher bench')" in shown.stdout
    )
    # a variable the workers would take from this shell is a setting these rows did not run
    # with; one the planned command line overrides is not
    for variable, measured in (("LLAMA_ARG_TIMEOUT", False), ("LLAMA_ARG_CTX_SIZE", True)):
        shown = run_cli(
            "plan", str(model), "--layout", "cpu:2", "--users", "2",
            env={**bench_env(llama_server, launcher_home), variable: "900"},
        )  # fmt: skip
        assert ("(measured" in shown.stdout) == measured, variable
        taken = f"Workers started from this shell also take {variable}=900; bench results"
        assert (taken in shown.stdout) != measured, variable
    # rows an older launcher wrote (prompt cache on, no server_defaults) are named, not used
    older = [json.loads(line) for line in stored]
    for row in older:
        del row["server_defaults"]
    (launcher_home / "state/bench/results.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in older)
    )
    shown = run_cli(
        "plan", str(model), "--layout", "cpu:2", "--users", "2",
        env=bench_env(llama_server, launcher_home),
    )  # fmt: skip
    assert "(measured" not in shown.stdout
    assert (
        "Note: 4 bench result(s) of this model here were measured with llama.cpp's RAM prompt "
        "cache on, which the launcher now turns off, so they are not used; run 'llama-launcher "
        "bench' again to calibrate." in shown.stdout
    )


def test_rounds_measure_the_ladder_again_and_plan_uses_their_mean(
    model_factory: Callable[..., Path], llama_server: Path, launcher_home: Path
) -> None:
    model = model_factory("llama")
    env = bench_env(llama_server, launcher_home)
    args = ("bench", str(model), "--layouts", "cpu:1", "--users", "1,2")
    small = ("--tokens", "8", "--prompt-tokens", "32")
    bad = run_cli(*args, "--rounds", "0", *small, env=env)
    assert bad.returncode != 0 and "--rounds must be 1 or more." in bad.stderr
    result = run_cli(*args, "--rounds", "2", *small, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "cpu:1: round 2 of 2" in result.stderr
    rows = [json.loads(line) for line in (launcher_home / "state/bench/results.jsonl").open()]
    assert [r["users"] for r in rows] == [1, 2, 1, 2]  # the ladder, then the ladder again
    assert all(r["server_tokens"] == r["tokens"] for r in rows)
    assert "Rounds (plan uses their mean):" in result.stdout
    two = [r["aggregate_tok_s"] for r in rows if r["users"] == 2]
    mean = sum(two) / 2
    assert f"cpu:1 at 2 user(s): {two[0]:.1f} / {two[1]:.1f} tok/s, mean {mean:.1f}" in (
        result.stdout
    )
    shown = run_cli("plan", str(model), "--layout", "cpu:1", "--users", "2", env=env)
    assert f"On this box: {mean:.0f} tok/s for 2 user(s) (measured" in shown.stdout
    assert not servers_of(model)


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
    stored = (launcher_home / "state/bench/results.jsonl").read_text().splitlines()
    assert len(stored) == len(rows)
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
    # 8 workers: 64 users are 8 per worker, all on one side of the kernel change
    value, source = results.calibrated(runs[:1] + runs[2:], "per-card", 16, 1000, 0, 8) or (0, "")
    assert abs(value - 1000 * truth[16]) < 1e-6 and source.startswith("calibrated")
    assert results.calibrated(runs, "per-card", 64, 1000) == (1000 * truth[64], "measured")
    assert results.calibrated(runs, "pooled-layer", 16, 1000) is None


def test_calibration_interpolates_between_measured_points_and_is_flat_beyond() -> None:
    runs = [_run("pooled-layer", u, r * 1000, 1000) for u, r in ((1, 0.9), (4, 0.7), (64, 0.8))]
    fix = results.correction(runs, "pooled-layer")
    assert fix is not None and fix.points == (1, 4, 64)
    assert fix.factor(2) == pytest.approx(0.8)  # halfway between 1 and 4 in ln(users)
    assert fix.factor(16) == pytest.approx(0.75)
    assert fix.factor(128) == pytest.approx(0.8) and fix.factor(1) == pytest.approx(0.9)


def test_calibration_does_not_interpolate_across_the_decode_kernel_change() -> None:
    # llama.cpp decodes up to 8 tokens per worker with MMVQ, more with MMQ: a 70B layer split
    # on 4x H100 measured 1.05, 1.20 and 1.78 x the prediction at 1, 4 and 16 users
    ratios = ((1, 1.05), (4, 1.20), (16, 1.78))
    runs = [
        dataclasses.replace(_run("pooled-layer", u, r * 100, 100), workers=1) for u, r in ratios
    ]
    fix = results.correction(runs, "pooled-layer")
    assert fix is not None and fix.workers == 1
    assert fix.factor(8) == pytest.approx(1.20)  # from 1 and 4 only: flat beyond 4
    assert fix.factor(2) == pytest.approx(1.125)  # halfway between 1 and 4 in ln(users)
    assert fix.factor(12) == pytest.approx(1.78) and fix.factor(64) == pytest.approx(1.78)
    # per-card over 4 workers: 32 users are 8 per worker, still the small side
    per_card = [dataclasses.replace(r, layout="per-card", workers=4) for r in runs]
    wide = results.correction(per_card, "per-card")
    assert wide is not None and wide.factor(32) == pytest.approx(1.78)  # only 1..16 there
    assert wide.factor(36) == pytest.approx(1.78)
    # no measured point on that side: the nearest measured one
    small = results.correction(runs[:2], "pooled-layer")
    assert small is not None and small.factor(16) == pytest.approx(1.20)
    # rows without a worker count (older files) interpolate across, as before
    old = results.correction([dataclasses.replace(r, workers=0) for r in runs], "pooled-layer")
    assert old is not None and old.factor(8) == pytest.approx(1.20 + 0.58 / 2)


def test_plan_says_when_a_calibrated_figure_lies_beyond_the_measured_points() -> None:
    # on 4x H100 the held-out checks beyond the last measured point of a side (8B per-card at
    # 32 users from 1, 4, 16) missed by up to 19.5%; between measured points they held
    runs = [
        dataclasses.replace(_run("per-card", u, r * 1000, 1000), workers=4)
        for u, r in ((1, 0.8), (4, 0.8), (16, 0.6))
    ]
    _, inside = results.calibrated(runs, "per-card", 8, 1000, 0, 4) or (0, "")
    assert inside == "calibrated on 3 measured point(s)"
    _, beyond = results.calibrated(runs, "per-card", 32, 1000, 0, 4) or (0, "")
    assert beyond == (
        "calibrated on 3 measured point(s); outside the 1 to 16 user(s) measured at up to 8 per "
        "worker, so less sure: 'bench --users 32' measures it"
    )
    # 64 users are 16 per worker, a side with no measurement: the other side's points serve
    _, other = results.calibrated(runs, "per-card", 64, 1000, 0, 4) or (0, "")
    assert "outside the 1 to 16 user(s) measured at up to 8 per worker" in other
    fix = results.correction(runs, "per-card")
    assert fix is not None and fix.inside(2) and fix.inside(16) and not fix.inside(17)


def test_holdout_check_predicts_each_inner_point_from_the_others() -> None:
    runs = [_run("per-card", u, r * 1000, 1000) for u, r in ((1, 0.9), (16, 0.6), (64, 0.7))]
    runs.append(_run("pooled-layer", 1, 100, 100))
    [check] = results.holdout_check(runs)  # the ends are never held out
    assert (check.layout, check.users, check.fitted_on) == ("per-card", 16, (1, 64))
    assert check.calibrated == pytest.approx(1000 * (0.9 - 0.2 * 4 / 6))
    assert check.error_pct == pytest.approx((0.9 - 0.2 * 4 / 6) / 0.6 * 100 - 100)
    assert check.uncalibrated_error_pct == pytest.approx(1 / 0.6 * 100 - 100)
    assert "at 16 user(s), calibrated on users 1, 64" in check.line()


def test_served_prediction_lets_prompts_take_their_turn() -> None:
    # 4 users, 100 tok/s decoding together, 1000 prompt tok/s per worker, 2 workers:
    # 4 x 128 answer tokens take 5.12 s, 4 x 512 prompt tokens 1.024 s on two workers
    got = served_tok_s(100, 1000, 2, 4, 512, 128)
    assert got == pytest.approx(512 / (5.12 + 1.024))
    assert served_tok_s(100, 1000, 2, 4, 0, 128) == pytest.approx(100)
    assert served_tok_s(0, 1000, 2, 4, 512, 128) == 0


def test_plan_calibrates_the_prediction_for_the_traffic_the_bench_ran() -> None:
    run = dataclasses.replace(
        _run("per-card", 1, 150, 200), prompt_tokens=512, answer_tokens=128, time=1.0
    )
    value, source = results.calibrated([run], "per-card", 8, 400, 1000, 4) or (0, "")
    assert value == pytest.approx(served_tok_s(400, 1000, 4, 8, 512, 128) * 0.75)
    assert source == (
        "calibrated on 1 measured point(s), 512-token prompts, 128-token answers; outside the 1 "
        "user(s) measured at up to 8 per worker, so less sure: 'bench --users 8' measures it"
    )
    assert results.calibrated([run], "per-card", 1, 400, 1000, 4) == (
        150,
        "measured, 512-token prompts, 128-token answers",
    )


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


def test_bench_of_a_profile_starts_workers_with_its_extra_flags(
    model_factory: Callable[..., Path],
) -> None:
    # `bench PROFILE` measures the fleet `up PROFILE` would start (both build it with
    # app.fleet.group_from_layout); a profile that turns the RAM prompt cache back on replaces
    # the launcher's --cache-ram 0 instead of repeating it
    procs = tuple(
        Process(ServerArgs("llama-server", "m.gguf", 8081 + i, 4, 256, defaults=PROMPT_CACHE_OFF,
                           gpu_layers=0), {}, (i,))
        for i in range(2)
    )  # fmt: skip
    layout = Layout("per-card", procs, (), 0, Throughput(1.0, 1.0, 1.0))
    spec = read_model_spec(model_factory("llama"))

    def workers(*extra: str) -> tuple[WorkerSpec, ...]:
        settings = ServerSettings(extra_args=extra)
        box = Inventory((Host(HostInfo("box", 0, 0, 2), ()),), "nvml")
        return group_from_layout(spec, layout, Workload(users=8, ctx=256), box,
                                 settings=settings).workers  # fmt: skip

    first, second = workers("--temp", "0.7")
    assert [first.port, second.port] == [8081, 8082] and first.cards == (0,)
    assert second.args.argv() == (
        "llama-server", "-m", "m.gguf", "--host", "127.0.0.1", "--port", "8082", "-c", "1024",
        "-np", "4", "-fa", "on", "--metrics", "-ctk", "f16", "-ctv", "f16", "--cache-ram", "0",
        "-ngl", "0", "--alias", "llama-tiny-1", "--temp", "0.7",
    )  # fmt: skip
    assert workers("--cache-ram", "8192")[0].args.argv()[-4:] == (
        "--alias", "llama-tiny-1", "--cache-ram", "8192",
    )  # fmt: skip
    argv = workers("--cache-ram=8192")[0].args.argv()
    assert "--cache-ram" not in argv and argv[-1] == "--cache-ram=8192"


def test_runs_with_other_server_settings_do_not_calibrate_the_default_fleet(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # on 4x H100 the 8B per-card fleet served 1.4-1.6x more at 64 users with the prompt cache
    # off than on: rows measured with it on (written before the launcher turned it off, or
    # with a profile's --cache-ram) must not correct what plan says about the fleet `up` starts
    monkeypatch.setenv("LLAMA_LAUNCHER_HOME", str(tmp_path))
    off = ("--cache-ram", "0")
    plain = dataclasses.replace(
        _run("per-card", 64, 2700, 2800), hardware_key="h", model_key="m", server_defaults=list(off)
    )
    before = dataclasses.replace(plain, aggregate_tok_s=1600, server_defaults=[])
    cache_on = dataclasses.replace(
        plain, aggregate_tok_s=1700, server_flags=["--cache-ram", "8192"]
    )
    results.append([plain, before, cache_on])
    assert [r.aggregate_tok_s for r in results.load(Keys("h", "m", off))] == [2700]
    assert [r.aggregate_tok_s for r in results.load(Keys("h", "m", ()))] == [
        1600
    ]  # an older server
    assert [
        r.aggregate_tok_s for r in results.load(Keys("h", "m", off), cache_on.server_flags)
    ] == [1700]
    monkeypatch.setenv("LLAMA_ARG_THREADS", "8")
    argv = ("llama-server", "-c", "4096", "--cache-ram", "0", "--temp", "0.7")
    assert server_flags(("--temp", "0.7"), argv) == ["--temp", "0.7", "LLAMA_ARG_THREADS=8"]
    # what llama-server ignores is not a setting: an option on the command line wins over its
    # variable, a variable it has no option for does nothing, a dropped one is not inherited
    monkeypatch.setenv("LLAMA_ARG_CTX_SIZE", "8192")
    monkeypatch.setenv("LLAMA_ARG_CACHE_RAM", "8192")
    monkeypatch.setenv("LLAMA_ARG_NO_SUCH_OPTION", "1")
    monkeypatch.setenv("LLAMA_ARG_API_KEY_FILE", "/keys")
    options = (
        ("LLAMA_ARG_CACHE_RAM", ("-cram", "--cache-ram")),
        ("LLAMA_ARG_CTX_SIZE", ("-c", "--ctx-size")),
        ("LLAMA_ARG_THREADS", ("-t", "--threads")),
    )
    assert server_flags(("--temp", "0.7"), argv, options) == [
        "--temp",
        "0.7",
        "LLAMA_ARG_THREADS=8",
    ]
    assert server_flags((), ("llama-server", "--cache-ram=64", "-t", "2"), options) == [
        "LLAMA_ARG_CTX_SIZE=8192"
    ]
    # without the --help probe every variable counts
    assert server_flags((), argv) == [
        "LLAMA_ARG_CACHE_RAM=8192",
        "LLAMA_ARG_CTX_SIZE=8192",
        "LLAMA_ARG_NO_SUCH_OPTION=1",
        "LLAMA_ARG_THREADS=8",
    ]
    staggered = dataclasses.replace(plain, aggregate_tok_s=1900, arrivals="staggered")
    results.append([staggered])  # a load measured differently is kept apart too
    assert [r.aggregate_tok_s for r in results.load(Keys("h", "m", off))] == [2700]
    assert [r.aggregate_tok_s for r in results.load(Keys("h", "m", off), arrivals="staggered")] == [
        1900
    ]


def test_bench_of_a_profile_records_its_extra_flags(
    model_factory: Callable[..., Path], llama_server: Path, launcher_home: Path, tmp_path: Path
) -> None:
    profile = tmp_path / "cache.toml"
    profile.write_text(
        f'format = 1\nname = "cache"\nmodel = "{model_factory("llama")}"\n'
        '[layout]\nkind = "cpu:1"\n[server]\nextra_args = ["--cache-ram", "64"]\n'
    )
    env = {
        **bench_env(llama_server, launcher_home),
        "LLAMA_ARG_CACHE_RAM": "4096",  # the profile's --cache-ram wins over it
        "LLAMA_ARG_TIMEOUT": "900",  # taken: a setting of the run
        "LLAMA_ARG_NO_SUCH_OPTION": "1",  # no llama-server option: nothing
        "LLAMA_API_KEY": "router-key",  # not passed on: the workers would answer 401
    }
    result = run_cli(
        "bench", str(profile), "--users", "1", "--tokens", "8", "--prompt-tokens", "16", "--json",
        env=env,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    flags = "--cache-ram 64 LLAMA_ARG_TIMEOUT=900"
    assert f"cpu:1: llama-server settings beyond the plan: {flags} (kept apart" in result.stderr
    [row] = json.loads(result.stdout)["runs"]
    assert row["layout"] == "cpu:1" and row["server_flags"] == flags.split()
    assert row["errors"] == 0
    # the profile's value replaced the launcher's: the prompt cache ran, no repeated flag
    log = (launcher_home / "state/logs/bench-cpu1/w0.log").read_text()
    assert "--cache-idle-slots requires --cache-ram" not in log
    assert "specified multiple times" not in log
    assert row["server_tokens"] == row["tokens"] == 4 * 8


def test_staggered_bench_counts_every_request_and_stays_out_of_plan(
    model_factory: Callable[..., Path], llama_server: Path, launcher_home: Path
) -> None:
    model = model_factory("llama")
    env = bench_env(llama_server, launcher_home)
    result = run_cli(
        "bench", str(model), "--layouts", "cpu:1", "--users", "2", "--tokens", "8",
        "--prompt-tokens", "16", "--staggered", "--json",
        env=env,
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "starts" in result.stderr and "ms apart" in result.stderr
    [row] = json.loads(result.stdout)["runs"]
    assert row["arrivals"] == "staggered" and row["errors"] == 0
    # each user: its 4 timed requests, plus one before and one after them
    assert row["requests"] == 2 * (4 + 2)
    assert row["server_tokens"] == row["tokens"] == row["requests"] * 8
    assert row["aggregate_tok_s"] > 0
    shown = run_cli("plan", str(model), "--layout", "cpu:1", "--users", "2", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "from 'llama-launcher bench'" not in shown.stdout  # plan uses lockstep rows only


async def test_staggered_load_spreads_the_starts_and_times_only_the_full_load() -> None:
    # a stand-in for llama-server that streams 10 tokens, 5 ms apart, to every request
    from aiohttp import web

    arrived: dict[int, float] = {}

    async def completion(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        arrived[int(body["prompt"].split(":")[0].split()[1])] = time.monotonic()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(10):
            await asyncio.sleep(0.005)
            await resp.write(b'data: {"content": "x"}\n\n')
        await resp.write(b'data: {"content": "", "stop": true, "tokens_predicted": 10}\n\n')
        return resp

    app = web.Application()
    app.router.add_post("/completion", completion)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        url = (f"http://127.0.0.1:{port}",)
        lockstep = await run_load(LoadSpec(url, 3, 6, 10, 8))
        assert lockstep.requests == 6 and lockstep.tokens == 60
        by_wall = lockstep.tokens / lockstep.wall_s
        assert lockstep.aggregate_tok_s == pytest.approx(by_wall, rel=0.02)
        arrived.clear()
        spread = LoadSpec(url, 3, 6, 10, 8, stagger_s=0.15)
        staggered = await run_load(spread)
    finally:
        await runner.cleanup()
    # each of the 3 users: its share of 2 timed requests, one before and one after them
    assert staggered.requests == 12 == requests_sent(spread)
    assert staggered.tokens == 120 and staggered.errors == 0
    assert sorted(arrived) == list(range(12))
    # (arrivals seen by the server: a few ms of connection time either way)
    assert arrived[4] - arrived[0] > 0.13 and arrived[8] - arrived[0] > 0.28
    # the offsets do not dilute the aggregate as they do tokens over wall time
    assert staggered.aggregate_tok_s > staggered.tokens / staggered.wall_s


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_other_processes_cpu_marks_a_row_busy_and_plan_leaves_it_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import multiprocessing

    from launcher.bench.busy import OtherLoad, busy_reason

    spinner = multiprocessing.Process(target=_spin, args=(1.5,))
    meter = OtherLoad((os.getpid(),)).start()
    spinner.start()
    spinner.join()
    others = meter.stop()
    assert others > 0.6 and busy_reason(others).startswith("other processes used")
    quiet = OtherLoad((os.getpid(),)).start()
    time.sleep(0.5)
    assert busy_reason(quiet.stop()) == ""
    monkeypatch.setenv("LLAMA_LAUNCHER_HOME", str(tmp_path))
    off = ("--cache-ram", "0")
    row = dataclasses.replace(
        _run("per-card", 4, 900, 1000), hardware_key="h", model_key="m", server_defaults=list(off)
    )
    results.append([row, dataclasses.replace(row, users=8, busy=busy_reason(others))])
    assert [r.users for r in results.load(Keys("h", "m", off))] == [4]
