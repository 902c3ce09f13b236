"""Plan a model on this box or a hardware profile: the default workload, the ranked layouts,
this box's bench calibration beside them, and the notes ``plan`` prints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from launcher.app import hardware, measure, server
from launcher.bench import results
from launcher.errors import LauncherError
from launcher.gpu.inventory import Host, Inventory
from launcher.llamacpp.probe import ServerTarget
from launcher.model.spec import ModelSpec, read_mmproj_bytes, read_model_spec
from launcher.plan.advisor import Plan, plan
from launcher.plan.box import BoxResult, ModelRequest, plan_box
from launcher.plan.fits import Calibration
from launcher.plan.layouts import DEFAULT_ROUTER_PORT, select_cards
from launcher.plan.split import parse_split
from launcher.plan.workload import DEFAULT_CTX, DEFAULT_USERS_PER_WORKER, Workload
from launcher.run.verify import DeviceEstimate, run_fit_params
from launcher.spec.fleet import name_from_model, unique_name


def default_users(host: Host, cards: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> int:
    """Users when none are given: 4 per card the plan may use (4 on a box without one)."""
    chosen = select_cards(host, Workload(cards=cards, exclude_cards=exclude))
    return DEFAULT_USERS_PER_WORKER * max(1, len(chosen))


def default_workload(
    model: ModelSpec,
    host: Host,
    *,
    users: int | None = None,
    ctx: int | None = None,
    kv_type: str = "f16",
    goal: str = "throughput",
    cards: tuple[str, ...] = (),
    exclude_cards: tuple[str, ...] = (),
    flash_attn: bool = True,
    tensor_split: tuple[float, ...] = (),
) -> Workload:
    """The workload the user asked for, with the defaults filled in (DESIGN.md): 4 users per
    card the plan may use (per CPU worker on a box without one), and a context of 4096 or the
    model's training context if that is smaller. The one place this rule lives."""
    return Workload(
        users=users or default_users(host, cards, exclude_cards),
        ctx=ctx or min(DEFAULT_CTX, model.training_context),
        kv_type=kv_type,
        goal=goal,
        cards=cards,
        exclude_cards=exclude_cards,
        flash_attn=flash_attn,
        tensor_split=tensor_split,
    )


@dataclass(frozen=True)
class PlanRequest:
    """What ``plan`` (and the Plan screen) asks for."""

    model: Path
    hardware: str | None = None  # a hardware profile; None: this box
    users: int | None = None
    ctx: int | None = None
    kv_type: str = "f16"
    goal: str = "throughput"
    layout: str = "auto"
    cards: tuple[str, ...] = ()
    exclude_cards: tuple[str, ...] = ()
    mmproj: Path | None = None
    llama_server: str | None = None
    router_port: int = DEFAULT_ROUTER_PORT  # workers listen on the ports above it
    flash_attn: bool = True
    tensor_split: str | None = None  # as typed: plan/split.py reads it
    measure: bool = False  # run the micro-benchmark first (plan --measure)
    rpc_host: str | None = None  # the host whose cards layout pooled-rpc lends


@dataclass(frozen=True)
class PlanOutcome:
    """A plan and what is known beside it: the hardware, the server it is for, this box's
    bench results (measured or calibrated aggregate per layout kind) and notes to print."""

    plan: Plan
    inventory: Inventory
    server: ServerTarget
    server_note: str
    measured: dict[str, tuple[float, str]] = field(default_factory=dict)
    flags_note: str | None = None  # this shell gives workers settings beyond the plan
    stale_note: str | None = None  # bench rows of this model were measured otherwise
    runs: tuple[results.BenchRun, ...] = ()  # this box's bench rows for the model

    @property
    def notes(self) -> tuple[str, ...]:
        """The sentences ``plan`` prints after the layouts."""
        return tuple(
            n for n in (self.flags_note, self.stale_note and f"Note: {self.stale_note}") if n
        )

    @property
    def averaged_runs(self) -> list[results.BenchRun]:
        """The bench rows, rounds of one point averaged (what the plot shows)."""
        return results.averaged(list(self.runs))

    def to_json(self) -> dict[str, object]:
        """DESIGN.md's ``plan --json``, with ``measured`` on layouts that have bench results."""
        data = self.plan.to_json()
        data["hardware"] = self.inventory.source
        layouts = data["layouts"]
        assert isinstance(layouts, list)
        for entry in layouts:
            if entry["kind"] in self.measured:
                value, source = self.measured[entry["kind"]]
                entry["measured"] = {"aggregate_tok_s": round(value, 1), "source": source}
        return data


def plan_with(
    model: ModelSpec,
    inventory: Inventory,
    workload: Workload,
    target: ServerTarget,
    layout: str = "auto",
    *,
    server_note: str = "",
    router_port: int = DEFAULT_ROUTER_PORT,
    mmproj: Path | None = None,
    rpc_host: str | None = None,
) -> PlanOutcome:
    """Plan ``model`` for ``workload`` and set this box's bench results beside it; on this
    box, with the constants ``plan --measure`` measured here, if it was run."""
    mmproj_bytes = read_mmproj_bytes(mmproj) if mmproj else 0
    result = plan(
        model,
        inventory,
        workload,
        target,
        layout,
        router_port=router_port,
        mmproj_bytes=mmproj_bytes,
        mmproj_path=str(mmproj) if mmproj else None,
        calibration=calibration_for(inventory),
        rpc_host=rpc_host or default_rpc_host(inventory, layout),
    )
    keys = results.keys_for(inventory, model, target)
    flags = results.inherited_flags(result, target)
    runs = results.load(keys, flags)
    return PlanOutcome(
        result,
        inventory,
        target,
        server_note,
        _measured(result, runs),
        results.inherited_note(flags) if flags else None,
        None if runs else results.stale_note(keys, flags),
        tuple(runs),
    )


def default_rpc_host(inventory: Inventory, layout: str) -> str | None:
    """For ``--layout pooled-rpc`` without a host named: the first other host with cards."""
    if layout != "pooled-rpc":
        return None
    return next((h.name for h in inventory.hosts[1:] if h.cards), None)


def calibration_for(inventory: Inventory) -> Calibration | None:
    """What ``plan --measure`` measured, when ``inventory`` is this box (not a profile)."""
    return measure.load_calibration() if inventory.source == "nvml" else None


def measure_here(
    box: Inventory, say: measure.Say, llama_server: str | None = None
) -> measure.Measurement:
    """``plan --measure`` and the Plan screen's Measure: this box's decode constants, kept
    for later plans (``app/measure.py``)."""
    required = server.required_target(llama_server)
    return measure.measure(
        list(box.local.cards), box.local.info.cpu_cores, llama_server, required, say
    )


def plan_model(request: PlanRequest, say: measure.Say | None = None) -> PlanOutcome:
    """``plan``: read the model, take the hardware, fill in the workload, rank the layouts
    (with ``measure``, after measuring this host's constants; ``say`` shows the progress)."""
    model = read_model_spec(request.model)
    box = hardware.inventory(request.hardware)
    target, note = server.target(request.llama_server, box)
    if request.measure:
        if request.hardware:
            raise LauncherError(
                "--measure measures this box; plan for a hardware profile without it."
            )
        measure_here(box, say or (lambda _: None), request.llama_server)
    workload = default_workload(
        model,
        box.local,
        users=request.users,
        ctx=request.ctx,
        kv_type=request.kv_type,
        goal=request.goal,
        cards=request.cards,
        exclude_cards=request.exclude_cards,
        flash_attn=request.flash_attn,
        tensor_split=parse_split(request.tensor_split) if request.tensor_split else (),
    )
    return plan_with(
        model,
        box,
        workload,
        target,
        request.layout,
        server_note=note,
        router_port=request.router_port,
        mmproj=request.mmproj,
        rpc_host=request.rpc_host,
    )


def _measured(result: Plan, runs: list[results.BenchRun]) -> dict[str, tuple[float, str]]:
    """This box's bench ``runs`` for the plan's layouts: measured or calibrated aggregates."""
    out = {}
    for r in result.layouts:
        t = r.layout.throughput
        fixed = results.calibrated(
            runs,
            r.layout.kind,
            result.workload.users,
            t.aggregate_tok_s,
            t.prompt_tok_s,
            len(r.layout.processes),
        )
        if fixed is not None:
            out[r.layout.kind] = fixed
    return out


@dataclass(frozen=True)
class CardCheck:
    """The planner's and llama.cpp's estimate for one card (MiB)."""

    card: int
    device: str
    ours: tuple[int, int, int]  # weights, KV, compute + CUDA
    theirs: tuple[int, int, int]


@dataclass(frozen=True)
class Verification:
    kind: str
    cards: tuple[CardCheck, ...]
    host: tuple[DeviceEstimate, ...]
    host_planned_bytes: int


def verify(outcome: PlanOutcome, llama_server: str | None) -> Verification:
    """``plan --verify``: llama.cpp's own per-card estimate of the best layout on this box."""
    best = outcome.plan.best
    if best is None:
        raise LauncherError("Nothing fits, so there is nothing to verify.")
    if outcome.inventory.source != "nvml":
        raise LauncherError("--verify checks this box; drop --hardware to use it.")
    fit = server.fit_params_tool(llama_server)
    checks: list[CardCheck] = []
    hosts: list[DeviceEstimate] = []
    for p in best.layout.processes:
        estimates = run_fit_params(fit, p.argv, p.env)
        cards = [c for c in best.layout.cards if c.card in p.cards]
        for est, card in zip([e for e in estimates if e.device != "Host"], cards, strict=False):
            checks.append(
                CardCheck(
                    card.card,
                    est.device,
                    (card.weights_bytes >> 20, card.kv_bytes >> 20, card.compute_bytes >> 20),
                    (est.model_mib, est.context_mib, est.compute_mib),
                )
            )
        hosts += [e for e in estimates if e.device == "Host"]
    return Verification(best.layout.kind, tuple(checks), tuple(hosts), best.layout.host_bytes)


# --- several models: the box planner ------------------------------------------------------------


def per_model(values: tuple[int, ...], count: int, option: str) -> list[int | None]:
    """``--users 8,32,4``: one value for every model, or one per model (none: defaults)."""
    if not values:
        return [None] * count
    if len(values) == 1:
        return [values[0]] * count
    if len(values) != count:
        raise LauncherError(
            f"{option} has {len(values)} values for {count} models; give one value for all, "
            "or one per model in the order of the models."
        )
    return list(values)


@dataclass(frozen=True)
class BoxRequest:
    """``plan A.gguf B.gguf ...``: several models on one box; ``users`` and ``ctx`` hold one
    value for all or one per model; layout, cards, KV type and goal constrain the whole
    plan."""

    models: tuple[Path, ...]
    users: tuple[int, ...] = ()
    ctx: tuple[int, ...] = ()
    hardware: str | None = None
    kv_type: str = "f16"
    goal: str = "throughput"
    layout: str = "auto"
    cards: tuple[str, ...] = ()
    exclude_cards: tuple[str, ...] = ()
    llama_server: str | None = None
    router_port: int = DEFAULT_ROUTER_PORT
    flash_attn: bool = True


@dataclass(frozen=True)
class BoxOutcome:
    """A box plan and the hardware and server it is for."""

    result: BoxResult
    inventory: Inventory
    server: ServerTarget
    server_note: str

    def to_json(self) -> dict[str, object]:
        data = self.result.to_json()
        data["hardware"] = self.inventory.source
        return data


def model_workload(
    model: ModelSpec,
    host: Host,
    users: int | None,
    ctx: int | None,
    *,
    kv_type: str = "f16",
    goal: str = "throughput",
    cards: tuple[str, ...] = (),
    exclude_cards: tuple[str, ...] = (),
    flash_attn: bool = True,
) -> Workload:
    """One model's workload in a box of several: as ``default_workload``, but with no users
    given a model gets 4 (one worker's worth), not 4 per card: the cards are shared."""
    return default_workload(
        model,
        host,
        users=users or DEFAULT_USERS_PER_WORKER,
        ctx=ctx,
        kv_type=kv_type,
        goal=goal,
        cards=cards,
        exclude_cards=exclude_cards,
        flash_attn=flash_attn,
    )


def plan_models(request: BoxRequest) -> BoxOutcome:
    """``plan`` with several models: read them, take the hardware, place them on the box."""
    box = hardware.inventory(request.hardware)
    target, note = server.target(request.llama_server, box)
    count = len(request.models)
    users = per_model(request.users, count, "--users")
    ctxs = per_model(request.ctx, count, "--ctx")
    models = [
        (read_model_spec(path), u, c)
        for path, u, c in zip(request.models, users, ctxs, strict=True)
    ]
    result = plan_models_on(
        models,
        box,
        target,
        kv_type=request.kv_type,
        goal=request.goal,
        layout=request.layout,
        cards=request.cards,
        exclude_cards=request.exclude_cards,
        router_port=request.router_port,
        flash_attn=request.flash_attn,
    )
    return BoxOutcome(result, box, target, note)


def plan_models_on(
    models: Sequence[tuple[ModelSpec, int | None, int | None]],
    box: Inventory,
    target: ServerTarget,
    *,
    kv_type: str = "f16",
    goal: str = "throughput",
    layout: str = "auto",
    cards: tuple[str, ...] = (),
    exclude_cards: tuple[str, ...] = (),
    router_port: int = DEFAULT_ROUTER_PORT,
    flash_attn: bool = True,
) -> BoxResult:
    """The box plans of (model, users, ctx) on ``box``: each model a group named after its
    file (``-2`` on a clash); the CLI's ``plan A B`` and the Plan screen's box."""
    requests: list[ModelRequest] = []
    for model, u, c in models:
        name = unique_name(name_from_model(model.path), [r.name for r in requests])
        workload = model_workload(
            model,
            box.local,
            u,
            c,
            kv_type=kv_type,
            goal=goal,
            cards=cards,
            exclude_cards=exclude_cards,
            flash_attn=flash_attn,
        )
        requests.append(ModelRequest(name, model, workload, layout))
    return plan_box(requests, box, target, goal, router_port, calibration_for(box))
