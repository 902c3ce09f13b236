"""``bench``: run each layout on this box, load it through the router at each concurrency,
and set the measurement beside the planner's prediction.

For each layout: plan it, start its fleet (supervisor and router, in this process), run the
closed-loop load at each concurrency (the whole ladder ``rounds`` times), read the workers'
own token counters and the cards' power during the run, stop the fleet. The prediction beside
each row is the planner's for the same traffic (prompts included). Each row is saved as soon as
it is measured; Ctrl-C stops the fleet cleanly and keeps the rows already measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from launcher.bench import results
from launcher.bench.load import LoadSpec, requests_sent, run_load
from launcher.bench.results import BenchRun
from launcher.errors import LauncherError
from launcher.gpu.backend import GpuBackend
from launcher.gpu.card import GpuSample
from launcher.gpu.inventory import Inventory
from launcher.gpu.sampler import GpuSampler
from launcher.model.spec import ModelSpec
from launcher.plan.advisor import plan
from launcher.plan.layouts import Layout, ServerTarget, with_extra_args
from launcher.plan.perf import served_tok_s
from launcher.plan.workload import Workload
from launcher.router.server import RouterConfig
from launcher.run.metrics import parse_prometheus
from launcher.run.server_binary import inherited_settings
from launcher.run.supervisor import Supervisor, WorkerSpec

Say = Callable[[str], None]


@dataclass(frozen=True)
class BenchRequest:
    layouts: tuple[str, ...]
    users: tuple[int, ...]
    tokens: int = 128
    prompt_tokens: int = 512
    ctx: int | None = None
    requests_per_user: int = 4
    extra_args: tuple[str, ...] = ()  # a launch profile's extra llama-server flags
    staggered: bool = False  # users start spread over one predicted request cycle
    rounds: int = 1  # times each layout's ladder of concurrencies is measured, in one fleet


def _free_port() -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < 60000:
            return port
    raise LauncherError("No free port for the bench's router.")


async def _server_tokens(session: aiohttp.ClientSession, urls: list[str]) -> list[int]:
    """Each worker's own count of tokens generated so far."""
    counts = []
    for url in urls:
        async with session.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
            metrics = parse_prometheus(await r.text())
            counts.append(int(metrics.get("llamacpp:tokens_predicted_total", 0)))
    return counts


class Bench:
    """Runs a ``BenchRequest``; ``runs`` holds every finished row, even after Ctrl-C."""

    def __init__(
        self,
        spec: ModelSpec,
        inventory: Inventory,
        server: ServerTarget,
        request: BenchRequest,
        backend: GpuBackend | None,
        say: Say,
    ) -> None:
        self.spec = spec
        self.inventory = inventory
        self.server = server
        self.request = request
        self.backend = backend
        self.say = say
        self.runs: list[BenchRun] = []
        self.interrupted = False
        self.keys = results.keys_for(inventory, spec, server)
        self.prices = {c.index: c.price_usd for c in inventory.local.cards if c.price_usd}

    @property
    def ctx(self) -> int:
        return self.request.ctx or min(
            4096,
            self.spec.training_context,
            max(1024, self.request.prompt_tokens + self.request.tokens),
        )

    def _plan(self, kind: str, users: int) -> Layout:
        result = plan(
            self.spec, self.inventory, Workload(users=users, ctx=self.ctx), self.server, kind
        )
        best = result.best
        if best is None:
            raise LauncherError(f"Layout {kind} does not fit here: {result.layouts[0].reason}")
        return best.layout

    async def run(self) -> list[BenchRun]:
        """Every layout in turn. Ctrl-C cancels this task (asyncio.run does that): the fleet
        running then is stopped cleanly, and ``runs`` keeps the rows measured so far."""
        try:
            for kind in self.request.layouts:
                await self._layout(kind)
        except asyncio.CancelledError:
            self.interrupted = True
            raise
        return self.runs

    async def _layout(self, kind: str) -> None:
        top = max(self.request.users)
        layout = self._plan(kind, top)
        port = _free_port()
        specs = worker_specs(layout, port, self.request.extra_args)
        flags = server_flags(self.request.extra_args, specs[0].argv, self.server.env_options)
        if flags:
            self.say(
                f"{kind}: llama-server settings beyond the plan: {' '.join(flags)} (kept apart "
                "from the results that plan uses for the fleet up starts)"
            )
        log: list[str] = []
        sup = Supervisor(
            f"bench-{kind.replace(':', '')}",
            specs,
            say=log.append,
            layout=kind,
            model=str(self.spec.path),
            router=RouterConfig(port=port, queue_timeout_s=600),
            handle_signals=False,  # Ctrl-C cancels the bench, which stops this fleet
        )
        self.say(f"{kind}: starting {len(specs)} worker(s)")
        task = asyncio.create_task(sup.run())
        cards = sorted({c for p in layout.processes for c in p.cards})
        try:
            await sup.ready.wait()
            if task.done() or sup.router is None:
                await task
                tail = "\n".join(f"    {line}" for line in log[-8:])
                raise LauncherError(f"Layout {kind} did not start:\n{tail}")
            urls = [w.state.url for w in sup.workers]
            await self._warm_up(kind, urls)
            for n in range(self.request.rounds):
                if self.request.rounds > 1:
                    self.say(f"{kind}: round {n + 1} of {self.request.rounds}")
                for users in sorted(self.request.users):
                    await self._measure(kind, users, sup, urls, cards, flags)
        finally:
            sup.request_stop()
            await asyncio.shield(task)

    async def _warm_up(self, kind: str, urls: list[str]) -> None:
        """One short request to each worker first: a fresh llama-server's first request pays
        for its start-up (CUDA graphs, caches), which is not what the bench measures. The
        warm-up's tokens are outside the counts (the counters are read before each run)."""
        self.say(f"{kind}: warming up {len(urls)} worker(s)")
        spec = LoadSpec(tuple(urls), len(urls), len(urls), 8, self.request.prompt_tokens)
        await run_load(spec)

    async def _measure(
        self,
        kind: str,
        users: int,
        sup: Supervisor,
        urls: list[str],
        cards: list[int],
        flags: list[str],
    ) -> None:
        assert sup.router is not None
        planned = self._plan(kind, users)
        decode = planned.throughput.aggregate_tok_s
        predicted = served_tok_s(
            decode,
            planned.throughput.prompt_tok_s,
            len(planned.processes),
            users,
            self.request.prompt_tokens,
            self.request.tokens,
        )
        n = max(users * self.request.requests_per_user, 4)
        # staggered: user i starts i x (one request's predicted cycle / users) later, so that
        # the prompts arrive spread over a cycle, not together
        stagger = self.request.tokens / predicted if self.request.staggered and predicted else 0.0
        if self.request.staggered and not stagger:
            self.say(f"{kind}: no prediction to space the starts by; users start together")
        spec = LoadSpec(
            (sup.router.url,),
            users,
            n,
            self.request.tokens,
            self.request.prompt_tokens,
            stagger_s=stagger,
        )
        how = f", starts {stagger * 1000:.0f} ms apart, 2 per user untimed" if stagger else ""
        self.say(
            f"{kind}: {users} user(s), {requests_sent(spec)} requests of "
            f"{self.request.tokens} tokens{how}"
        )
        powers: list[float] = []

        def on_samples(samples: list[GpuSample], tick: float) -> None:
            watts = [s.power_draw_w for s in samples if s.power_draw_w is not None]
            if watts:
                powers.append(sum(watts))

        sampler = GpuSampler(self.backend, cards, on_samples) if self.backend and cards else None
        async with aiohttp.ClientSession() as session:
            before = await _server_tokens(session, urls)
            if sampler:
                sampler.start()
            load_task = asyncio.create_task(run_load(spec))
            try:
                result = await load_task
            except asyncio.CancelledError:
                load_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await load_task
                raise
            finally:
                if sampler:
                    sampler.stop()
            after = await _server_tokens(session, urls)
        power = statistics.mean(powers) if powers else None
        price = sum(self.prices.get(c, 0.0) for c in cards) or None
        run = BenchRun(
            layout=kind,
            users=users,
            requests=result.requests,
            tokens=result.tokens,
            aggregate_tok_s=result.aggregate_tok_s,
            per_user_tok_s_p50=result.per_user_tok_s_p50,
            ttft_ms_p50=result.ttft_ms_p50,
            latency_ms_p50=result.latency_ms_p50,
            latency_ms_p95=result.latency_ms_p95,
            latency_ms_p99=result.latency_ms_p99,
            errors=result.errors,
            predicted_aggregate_tok_s=round(predicted, 1),
            server_tokens=sum(after) - sum(before),
            worker_tokens=[a - b for a, b in zip(after, before, strict=True)],
            power_w=round(power, 1) if power else None,
            tok_s_per_w=round(result.aggregate_tok_s / power, 3) if power else None,
            usd_per_tok_s=round(price / result.aggregate_tok_s, 2)
            if price and result.aggregate_tok_s
            else None,
            predicted_decode_tok_s=round(decode, 1),
            prompt_tokens=self.request.prompt_tokens,
            answer_tokens=self.request.tokens,
            ctx=self.ctx,
            workers=len(planned.processes),
            server_flags=flags,
            server_defaults=list(self.keys.defaults),
            arrivals="staggered" if stagger else "lockstep",
            hardware_key=self.keys.hardware,
            model_key=self.keys.model,
            time=time.time(),
        )
        self.runs.append(run)
        results.append([run])  # kept at once: a crash later loses nothing measured
        share = (
            f", tokens per worker {'/'.join(map(str, run.worker_tokens))}"
            if len(run.worker_tokens) > 1
            else ""
        )
        self.say(
            f"{kind}: {users} user(s): {run.aggregate_tok_s:.1f} tok/s "
            f"(predicted {run.predicted_aggregate_tok_s:.1f}), {run.errors} errors{share}"
        )


def server_flags(
    extra_args: tuple[str, ...],
    argv: tuple[str, ...],
    env_options: tuple[tuple[str, tuple[str, ...]], ...] = (),
) -> list[str]:
    """What workers started with ``argv`` run with beyond the plan: the profile's extra flags,
    then the LLAMA_ARG_* variables they inherit and llama-server takes."""
    return [*extra_args, *inherited_settings(argv, env_options)]


def worker_specs(layout: Layout, router_port: int, extra_args: tuple[str, ...]) -> list[WorkerSpec]:
    """The layout's processes on the ports above ``router_port``, with a profile's extra
    llama-server flags appended (as ``up`` starts them)."""
    first = layout.processes[0].port
    out = []
    for p in layout.processes:
        port = p.port - first + router_port + 1
        out.append(
            WorkerSpec(with_extra_args(_with_port(p.argv, port), extra_args), p.env, port, p.cards)
        )
    return out


def _with_port(argv: tuple[str, ...], port: int) -> tuple[str, ...]:
    out = list(argv)
    out[out.index("--port") + 1] = str(port)
    return tuple(out)


def table(runs: list[BenchRun]) -> str:
    """The comparison table: measured beside predicted, per layout and concurrency."""
    head = (
        f"{'layout':<16}{'users':>6}{'reqs':>6}{'tokens':>8}{'tok/s':>9}{'predicted':>10}"
        f"{'ratio':>7}{'user p50':>9}{'ttft p50':>9}{'lat p50':>9}{'p95':>8}{'p99':>8}"
        f"{'err':>5}{'tok/s/W':>9}{'$/tok/s':>9}"
    )
    lines = [head]
    for r in runs:
        ratio = (
            r.aggregate_tok_s / r.predicted_aggregate_tok_s if r.predicted_aggregate_tok_s else 0
        )
        ttft = f"{r.ttft_ms_p50:.0f}" if r.ttft_ms_p50 is not None else "-"
        per_w = f"{r.tok_s_per_w:.2f}" if r.tok_s_per_w is not None else "-"
        usd = f"{r.usd_per_tok_s:.2f}" if r.usd_per_tok_s is not None else "-"
        lines.append(
            f"{r.layout:<16}{r.users:>6}{r.requests:>6}{r.tokens:>8}"
            f"{r.aggregate_tok_s:>9.1f}{r.predicted_aggregate_tok_s:>10.1f}{ratio:>7.2f}"
            f"{r.per_user_tok_s_p50:>9.1f}{ttft:>9}{r.latency_ms_p50:>9.0f}"
            f"{r.latency_ms_p95:>8.0f}{r.latency_ms_p99:>8.0f}{r.errors:>5}{per_w:>9}"
            f"{usd:>9}"
        )
    return "\n".join(lines)


def spread(runs: list[BenchRun]) -> list[str]:
    """For each layout and concurrency measured more than once (rounds), the aggregates and
    how far apart they are: the noise any calibrated figure carries."""
    lines = []
    for (layout, users), rows in results.by_point(runs).items():
        if len(rows) < 2:
            continue
        values = [r.aggregate_tok_s for r in rows]
        mean = statistics.mean(values)
        apart = (max(values) - min(values)) / mean * 100 if mean else 0.0
        lines.append(
            f"{layout} at {users} user(s): {' / '.join(f'{v:.1f}' for v in values)} tok/s, "
            f"mean {mean:.1f}, {apart:.1f}% apart"
        )
    return lines


def plot(runs: list[BenchRun], width: int = 60, height: int = 12) -> str:
    """Aggregate tokens/s against users, one mark per layout, in plain text."""
    if not runs:
        return ""
    layouts = sorted({r.layout for r in runs})
    marks = "*o+x#@%&"
    users = sorted({r.users for r in runs})
    top = max(r.aggregate_tok_s for r in runs) or 1.0
    grid = [[" "] * width for _ in range(height)]
    span = max(len(users) - 1, 1)
    for i, layout in enumerate(layouts):
        for r in runs:
            if r.layout != layout:
                continue
            x = round(users.index(r.users) / span * (width - 1))
            y = height - 1 - round(r.aggregate_tok_s / top * (height - 1))
            grid[y][x] = marks[i % len(marks)]
    lines = [f"{top:>9.0f} |" + "".join(grid[0])]
    lines += ["          |" + "".join(row) for row in grid[1:-1]]
    lines.append(f"{0:>9} |" + "".join(grid[-1]))
    axis = [" "] * width
    for u in users:
        label = str(u)
        x = min(round(users.index(u) / span * (width - 1)), width - len(label))
        axis[x : x + len(label)] = label
    lines.append("          +" + "-" * width)
    lines.append("    users  " + "".join(axis))
    lines.append(
        "  "
        + "   ".join(f"{marks[i % len(marks)]} {name}" for i, name in enumerate(layouts))
        + "   (aggregate tok/s)"
    )
    return "\n".join(lines)
