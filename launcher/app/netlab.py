"""The network in the plan against a network: routing overhead and the RPC decode cost
measured between two network namespaces (``run/netlab.py``), beside ``plan/network.py``'s
prediction for the same link (docs/remote.md, "The network in the plan").

Each link case is a rate (``tbf``) and a delay (the proxy). The round trip the workload sees
is measured through the proxy and given to the prediction, as ``net-test`` gives it to a
profile; the rate is the case's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from launcher.model.spec import ModelSpec, read_model_spec
from launcher.plan import network
from launcher.run import netlab, rpc
from launcher.run.rpc import rpc_server_beside

Say = Callable[[str], None]
ECHO_PORT, RPC_PORT, SERVER_PORT = 7000, 50052, 8090
PROXY_OFFSET = 1  # the proxy in namespace a listens one port above its target in b
PROMPT_TOKENS = 6  # "The quick brown fox" and the start token, about


@dataclass(frozen=True)
class LinkCase:
    name: str
    gbit: float
    delay_ms: float  # added round trip


@dataclass(frozen=True)
class LabRow:
    link: str
    what: str  # "rpc step, 8 users", "route, 500 tokens"
    rtt_ms: float  # measured through the proxy
    measured_ms: float  # what it added
    predicted_ms: float
    gbit: float = 0.0
    bytes: float = 0.0  # what crossed the link that the time waited for

    def point(self) -> network.NetPoint:
        """This row as a point of fits.toml's ``[network]``."""
        kind = "rpc" if self.what.startswith("rpc") else "route"
        return network.NetPoint(
            kind,
            f"{self.link}: {self.what}",
            self.gbit,
            round(self.rtt_ms, 4),
            self.bytes,
            round(self.measured_ms, 3),
        )

    @property
    def error_pct(self) -> float:
        return (self.predicted_ms - self.measured_ms) / self.measured_ms * 100

    def to_json(self) -> dict[str, object]:
        return {
            "link": self.link,
            "what": self.what,
            "gbit": self.gbit,
            "bytes": self.bytes,
            "rtt_ms": round(self.rtt_ms, 3),
            "measured_ms": round(self.measured_ms, 3),
            "predicted_ms": round(self.predicted_ms, 3),
        }


CASES = (
    LinkCase("1gbe", 1.0, 0.3),
    LinkCase("10gbe", 10.0, 0.15),
    LinkCase("far", 10.0, 3.0),  # the round trip term alone
    LinkCase("slow", 0.1, 0.3),  # the bytes term alone
)


def run_lab(
    llama_server: str,
    model: Path,
    cases: tuple[LinkCase, ...] = CASES,
    users: tuple[int, ...] = (1, 8),
    answers: tuple[int, ...] = (50, 500),
    tokens: int = 64,
    say: Say = lambda _: None,
) -> list[LabRow]:
    """Every case: the RPC decode cost at each of ``users`` and the routing overhead at each
    of ``answers`` tokens, measured and predicted."""
    spec = read_model_spec(model)
    rpc_server = str(rpc_server_beside(llama_server))
    rows: list[LabRow] = []
    for case in cases:
        say(f"{case.name}: {case.gbit:g} Gbit/s, +{case.delay_ms:g} ms round trip")
        with netlab.Lab.create(case.gbit) as lab:
            rows += _case(lab, case, spec, llama_server, rpc_server, users, answers, tokens, say)
    return rows


def _case(
    lab: netlab.Lab,
    case: LinkCase,
    spec: ModelSpec,
    llama_server: str,
    rpc_server: str,
    users: tuple[int, ...],
    answers: tuple[int, ...],
    tokens: int,
    say: Say,
) -> list[LabRow]:
    lab.start(lab.b, netlab.tool_argv("echo", str(ECHO_PORT)), wait_for=b"listening")
    lab.proxy(here(ECHO_PORT), ECHO_PORT, case.delay_ms)
    rtt = float(lab.tool(lab.a, "rtt", "127.0.0.1", str(here(ECHO_PORT)))["rtt_ms"])
    link = network.Link(case.gbit, rtt)
    say(f"  round trip through the proxy: {rtt:.3f} ms")
    rows = []
    # RPC: every layer and the output on the second box's CPU (the main box has no card), so
    # each step sends the hidden state there and gets the logits back
    lab.start(lab.b, [rpc_server, "-H", "0.0.0.0", "-p", str(RPC_PORT), "-t", "1"])
    lab.proxy(here(RPC_PORT), RPC_PORT, case.delay_ms)
    for n in users:
        base = [llama_server, "-m", str(spec.path), "-c", str(n * 512), "-np", str(n), "-nr"]
        base += ["-t", "1", "--port", str(SERVER_PORT)]
        local = lab.tool(lab.a, "decode", str(SERVER_PORT), str(n), str(tokens), *base, "-ngl", "0")
        pooled = lab.tool(
            lab.a,
            "decode",
            str(SERVER_PORT),
            str(n),
            str(tokens),
            *base,
            "--rpc",
            f"127.0.0.1:{here(RPC_PORT)}",
            "-ngl",
            "999",
        )
        added = float(pooled["ms_per_token"]) - float(local["ms_per_token"])
        cells = n * (PROMPT_TOKENS + tokens // 2)
        predicted = network.rpc_step_s(link, spec.n_embd, n, cells, spec.n_vocab, False) * 1000
        step_bytes = network.rpc_step_bytes(spec.n_embd, n, cells, spec.n_vocab)
        say(f"  RPC, {n} user(s): +{added:.2f} ms per step (predicted {predicted:.2f})")
        what = f"rpc step, {n} user(s)"
        rows.append(LabRow(case.name, what, rtt, added, predicted, case.gbit, step_bytes))
    # routing: the model served on the second box, asked from there and from here
    lab.start(
        lab.b,
        [
            llama_server,
            "-m",
            str(spec.path),
            "--host",
            "0.0.0.0",
            "--port",
            str(SERVER_PORT),
            "-c",
            "2048",
            "-np",
            "1",
            "-t",
            "1",
        ],
    )
    lab.proxy(here(SERVER_PORT), SERVER_PORT, case.delay_ms)
    lab.tool(lab.b, "wait", f"http://127.0.0.1:{SERVER_PORT}")
    for n in answers:
        direct, routed = [], []
        for _ in range(3):
            direct.append(lab.tool(lab.b, "complete", f"http://127.0.0.1:{SERVER_PORT}", str(n)))
            routed.append(
                lab.tool(lab.a, "complete", f"http://127.0.0.1:{here(SERVER_PORT)}", str(n))
            )
        # the decode itself varies run to run: compare wall time less llama-server's own
        d = sum(r["wall_s"] * 1000 - _server_ms(r) for r in direct) / len(direct)
        r = sum(r["wall_s"] * 1000 - _server_ms(r) for r in routed) / len(routed)
        predicted = network.route_overhead_s(link, PROMPT_TOKENS) * 1000
        say(f"  route, {n} tokens: +{r - d:.2f} ms (predicted {predicted:.2f})")
        sent = network.route_bytes(PROMPT_TOKENS)
        what = f"route, {n} tokens"
        rows.append(LabRow(case.name, what, rtt, r - d, predicted, case.gbit, sent))
    return rows


def fit(rows: list[LabRow]) -> dict[str, float]:
    """The ``[network]`` constants these rows give (``network.fit_rpc``, ``fit_route``)."""
    rpc = [r.point() for r in rows if r.what.startswith("rpc")]
    route = [r.point() for r in rows if r.what.startswith("route")]
    k, fixed, efficiency = network.fit_rpc(rpc)
    route_k, route_fixed = network.fit_route(route, efficiency)
    return {
        "efficiency": efficiency,
        "rpc_round_trips": k,
        "rpc_fixed_s": fixed,
        "route_round_trips": route_k,
        "route_fixed_s": route_fixed,
    }


def here(port: int) -> int:
    """The port in namespace a whose proxy reaches ``port`` in b."""
    return port + PROXY_OFFSET


def _server_ms(timings: dict[str, float]) -> float:
    return float(timings.get("prompt_ms", 0.0)) + float(timings.get("predicted_ms", 0.0))


def loopback_link() -> network.Link:
    """This machine's loopback as the link to a "second box" on its other cards."""
    rtt_ms, gbit = netlab.loopback_figures()
    return network.Link(gbit, rtt_ms)


def lend_devices(llama_server: str, port: int, env: dict[str, str], log: Path) -> rpc.LentDevices:
    """An rpc-server of ``llama_server``'s build on 127.0.0.1:``port`` lending the cards
    ``env`` makes visible (``with`` it)."""
    return rpc.LentDevices(rpc_server_beside(llama_server), port, env, log)
