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
import os
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from launcher.app import fleet, hardware, server
from launcher.bench import results
from launcher.bench.busy import OtherLoad, busy_reason
from launcher.bench.load import LoadResult, LoadSpec, requests_sent, run_load
from launcher.bench.results import BenchRun, HoldoutCheck
from launcher.errors import LauncherError
from launcher.gpu.backend import GpuBackend, open_backend
from launcher.gpu.card import GpuSample
from launcher.gpu.inventory import Inventory
from launcher.gpu.sampler import GpuSampler
from launcher.llamacpp.args import inherited_settings
from launcher.llamacpp.probe import ServerTarget
from launcher.llamacpp.wire import parse_prometheus
from launcher.model.spec import ModelSpec, read_model_spec
from launcher.plan.advisor import plan
from launcher.plan.layouts import Layout
from launcher.plan.perf import served_tok_s
from launcher.plan.workload import Workload
from launcher.run.supervisor import Supervisor, env_key
from launcher.spec.fleet import FleetSpec, RouterSpec, ServerSettings

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
    keep_busy: bool = False  # calibrate on rows measured while other work used the CPU


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
        # what is left: the points still to measure, each with its predicted seconds, scaled
        # by how long the measured ones took against their prediction; fleet starts as measured
        self._left: list[tuple[str, int, float]] = []
        self._measured_s = 0.0
        self._predicted_s = 0.0
        self._starts_s: list[float] = []
        self.current = ""  # the layout being measured
        self.points = 0  # points to measure in all

    @property
    def ctx(self) -> int:
        return self.request.ctx or min(
            4096,
            self.spec.training_context,
            max(1024, self.request.prompt_tokens + self.request.tokens),
        )

    def _plan(self, kind: str, users: int, router_port: int = 8080) -> Layout:
        result = plan(
            self.spec,
            self.inventory,
            Workload(users=users, ctx=self.ctx),
            self.server,
            kind,
            router_port=router_port,
        )
        best = result.best
        if best is None:
            raise LauncherError(f"Layout {kind} does not fit here: {result.layouts[0].reason}")
        return best.layout

    def _seconds(self, kind: str, users: int) -> float:
        """The planner's guess of how long one point takes (its requests at the predicted
        aggregate, prompts included); 0 when the layout does not fit."""
        try:
            planned = self._plan(kind, users)
        except LauncherError:
            return 0.0
        t = planned.throughput
        served = served_tok_s(
            t.aggregate_tok_s,
            t.prompt_tok_s,
            len(planned.processes),
            users,
            self.request.prompt_tokens,
            self.request.tokens,
        )
        n = max(users * self.request.requests_per_user, 4)
        return n * self.request.tokens / served if served > 0 else 0.0

    def time_left_s(self) -> float:
        """Seconds the points not yet measured should take, and the fleets still to start."""
        scale = self._measured_s / self._predicted_s if self._predicted_s > 0 else 1.0
        points = sum(s for _, _, s in self._left) * scale
        kinds_left = len({k for k, _, _ in self._left} - {self.current}) if self._left else 0
        start = statistics.mean(self._starts_s) if self._starts_s else 0.0
        return points + kinds_left * start

    async def run(self) -> list[BenchRun]:
        """Every layout in turn. Ctrl-C cancels this task (asyncio.run does that): the fleet
        running then is stopped cleanly, and ``runs`` keeps the rows measured so far."""
        self._left = [
            (kind, users, self._seconds(kind, users))
            for kind in self.request.layouts
            for _ in range(self.request.rounds)
            for users in sorted(self.request.users)
        ]
        self.points = len(self._left)
        try:
            for kind in self.request.layouts:
                await self._layout(kind)
        except asyncio.CancelledError:
            self.interrupted = True
            raise
        return self.runs

    async def _layout(self, kind: str) -> None:
        top = max(self.request.users)
        port = _free_port()
        layout = self._plan(kind, top, port)
        settings = ServerSettings(extra_args=self.request.extra_args)
        workload = Workload(users=top, ctx=self.ctx)
        group = fleet.group_from_layout(
            self.spec, layout, workload, self.inventory, settings=settings
        )
        spec = FleetSpec(f"bench-{kind.replace(':', '')}", (group,), RouterSpec(port=port))
        flags = server_flags(
            self.request.extra_args, group.workers[0].args.argv(), self.server.env_options
        )
        if flags:
            self.say(
                f"{kind}: llama-server settings beyond the plan: {' '.join(flags)} (kept apart "
                "from the results that plan uses for the fleet up starts)"
            )
        log: list[str] = []
        sup = Supervisor(
            spec,
            say=log.append,
            handle_signals=False,  # Ctrl-C cancels the bench, which stops this fleet
            queue_timeout_s=600,
        )
        self.say(f"{kind}: starting {len(group.workers)} worker(s)")
        self.current = kind
        started = time.monotonic()
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
            self._starts_s.append(time.monotonic() - started)
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
        point = self.points - len(self._left) + 1
        self.say(
            f"{kind}: {users} user(s), {requests_sent(spec)} requests of "
            f"{self.request.tokens} tokens{how} (point {point} of {self.points}, about "
            f"{_duration(self.time_left_s())} left)"
        )
        _, _, guess = self._left.pop(0)
        powers: list[float] = []

        def on_samples(samples: list[GpuSample], tick: float) -> None:
            watts = [s.power_draw_w for s in samples if s.power_draw_w is not None]
            if watts:
                powers.append(sum(watts))

        sampler = GpuSampler(self.backend, cards, on_samples) if self.backend and cards else None
        pids = [os.getpid(), *(w.state.pid for w in sup.workers if w.state.pid)]
        others = OtherLoad(tuple(pids))
        async with aiohttp.ClientSession() as session:
            before = await _server_tokens(session, urls)
            others.start()
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
            other_cores = others.stop()
            after = await _server_tokens(session, urls)
        if guess > 0:
            self._measured_s += result.wall_s
            self._predicted_s += guess
        busy = busy_reason(other_cores)
        if busy:
            self.say(
                f"{kind}: {users} user(s): the box was busy ({busy}); "
                + (
                    "kept for calibration, as --keep-busy asks."
                    if self.request.keep_busy
                    else "plan will not calibrate on this row; run bench again on an idle box."
                )
            )
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
            busy="" if self.request.keep_busy else busy,
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


def _numbers(values: tuple[int, ...], what: str) -> tuple[int, ...]:
    if not values or min(values) < 1:
        raise LauncherError(f"{what} must be numbers of 1 or more, e.g. 1,8,32.")
    return values


@dataclass(frozen=True)
class BenchOptions:
    """``bench TARGET`` and its options."""

    target: str  # a .gguf model or a launch profile
    layouts: tuple[str, ...] = ()  # default: per-card and pooled-layer, or the profile's
    users: tuple[int, ...] = (1, 8, 32)
    tokens: int = 128
    prompt_tokens: int = 512
    ctx: int | None = None
    requests_per_user: int = 4
    staggered: bool = False
    rounds: int = 1
    keep_busy: bool = False
    llama_server: str | None = None
    group: str | None = None  # a launch profile's group (None: its first)


def groups_to_bench(target: str, group: str | None) -> tuple[str | None, ...]:
    """The groups ``bench TARGET`` measures, one after the other: a model's none, a launch
    profile's ``group`` (checked) or, when none is named, every group of it."""
    if fleet.is_model_path(target):
        if group is not None:
            raise LauncherError("--group names a group of a launch profile, not of a model.")
        return (None,)
    names = [g.name for g in fleet.load_profile(target).groups]
    if group is None:
        return tuple(names)
    if group not in names:
        raise LauncherError(
            f"Profile {target} has no group '{group}'; its groups: {', '.join(names)}."
        )
    return (group,)


def prepare(options: BenchOptions, say: Say) -> tuple[Bench, GpuBackend | None]:
    """The bench to run on this box (and the GPU backend it reads power from, to close)."""
    if fleet.is_model_path(options.target):
        model = Path(options.target).expanduser()
        default_layout = None
        extra_args: tuple[str, ...] = ()
    else:
        profile = fleet.load_profile(options.target)
        group = next((g for g in profile.groups if g.name == options.group), profile.groups[0])
        model = Path(group.model).expanduser()
        default_layout = group.layout
        extra_args = group.server.extra_args
    spec = read_model_spec(model)
    inventory = hardware.inventory()
    target = server.required_target(options.llama_server)
    usable = [c for c in inventory.local.cards if c.usable]
    if options.layouts:
        layouts = options.layouts
    elif default_layout and default_layout != "auto":
        layouts = (default_layout,)
    else:
        layouts = (
            ("per-card", "pooled-layer")
            if len(usable) > 1
            else (("per-card",) if usable else ("cpu:1",))
        )
    if options.requests_per_user < 1:
        raise LauncherError("--requests-per-user must be 1 or more.")
    if options.rounds < 1:
        raise LauncherError("--rounds must be 1 or more.")
    request = BenchRequest(
        layouts,
        _numbers(options.users, "--users"),
        options.tokens,
        options.prompt_tokens,
        options.ctx,
        options.requests_per_user,
        extra_args,
        options.staggered,
        options.rounds,
        options.keep_busy,
    )
    backend = open_backend() if usable else None
    return Bench(spec, inventory, target, request, backend, say), backend


@dataclass(frozen=True)
class BenchOutcome:
    runs: list[BenchRun]
    interrupted: bool
    checks: list[HoldoutCheck]

    def to_json(self) -> dict[str, object]:
        """DESIGN.md's ``bench --json``, with the calibration check."""
        return {
            "runs": [
                {k: v for k, v in r.row().items() if k not in ("hardware_key", "model_key", "time")}
                for r in self.runs
            ],
            "calibration_check": [c.row() for c in self.checks],
        }


def run(bench: Bench, backend: GpuBackend | None) -> BenchOutcome:
    """Run ``bench``; Ctrl-C stops the fleet running then and keeps the finished rows."""
    try:
        asyncio.run(bench.run())
    except KeyboardInterrupt:
        bench.interrupted = True
    finally:
        if backend is not None:
            backend.close()
    return BenchOutcome(bench.runs, bench.interrupted, results.holdout_check(bench.runs))


def results_path() -> Path:
    return results.results_path()


def load(spec: LoadSpec) -> LoadResult:
    """``load``: closed-loop requests against one or more servers (or the router)."""
    return asyncio.run(run_load(spec))


def api_key(var: str | None) -> str | None:
    """The Bearer key in ``$var`` for ``load`` (None when no variable is named)."""
    return env_key(var, "API key")


def _duration(seconds: float) -> str:
    """``1 min 5 s``, ``40 s``."""
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60} s" if whole >= 60 else f"{whole} s"
