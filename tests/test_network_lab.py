"""The network lab (run/netlab.py): two namespaces joined by a veth pair, tbf and a delay
proxy, measuring the RPC decode cost and the routing overhead beside the plan
(launcher.benchmarks.network; figures in docs/remote.md)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher.app import netlab
from launcher.errors import LauncherError
from launcher.run import netlab as lab_run


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_the_lab_measures_rpc_and_routing_beside_the_plan(
    llama_server: Path, model_factory: Callable[..., Path]
) -> None:
    try:
        lab_run.Lab.create(1.0, tag="probe").remove()
    except LauncherError as err:
        pytest.skip(f"network namespaces are refused here: {err}")
    before = _namespaces()
    cases = (netlab.LinkCase("1gbe", 1.0, 1.0), netlab.LinkCase("10gbe", 10.0, 1.0))
    rows = netlab.run_lab(
        str(llama_server), model_factory("llama"), cases, users=(1,), answers=(50,), tokens=16
    )
    assert [(r.link, r.what) for r in rows] == [
        (link, what)
        for link in ("1gbe", "10gbe")
        for what in ("rpc step, 1 user(s)", "route, 50 tokens")
    ]
    for row in rows:
        # the proxy holds each direction half the delay: the round trip has it all
        assert row.rtt_ms >= 1.0
        assert row.predicted_ms > 0
    # the step's bytes (the logits back) take ten times as long on the slower link
    rpc = {r.link: r for r in rows if r.what.startswith("rpc")}
    assert rpc["1gbe"].predicted_ms > rpc["10gbe"].predicted_ms
    assert _namespaces() == before  # the lab took its namespaces away
