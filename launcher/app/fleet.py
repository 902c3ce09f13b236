"""Fleet specs from every front end, and the fleets they start.

``group_from_layout`` is the one conversion of a planned ``Layout`` into the workers a
supervisor runs; the TUI's Launch, ``up MODEL``, ``up PROFILE``, ``profile save`` and
``bench`` all go through it, so what starts is what the plan showed. A launch profile may leave
cards, split, users and ctx out: ``prepare_up`` plans those once, says what it chose, and
hands the supervisor the planned spec (a detached one gets it as a file). ``--replan`` plans a
whole spec again and says what changed.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from launcher import paths
from launcher.app import hardware, planning, remote, server
from launcher.errors import LauncherError
from launcher.gpu.inventory import Inventory
from launcher.llamacpp.args import ServerArgs
from launcher.llamacpp.probe import ServerTarget
from launcher.model.spec import ModelSpec, read_model_spec
from launcher.plan.box import BoxPlan, ModelRequest, Placement, plan_box
from launcher.plan.layouts import Layout, select_cards, with_tensor_split
from launcher.plan.split import parse_split
from launcher.plan.workload import Workload
from launcher.profiles import launch
from launcher.run import daemon, fleet_state
from launcher.run import remote as remote_run

# the state of a running fleet, as status and the Dashboard show it
from launcher.run.fleet_state import FleetState as FleetState
from launcher.run.fleet_state import WorkerState as WorkerState
from launcher.run.supervisor import Supervisor, free_port, port_free, router_setup, run_supervisor
from launcher.spec.fleet import (
    DEFAULT_ROUTER_PORT,
    DEFAULT_SETTINGS,
    FleetSpec,
    GroupSpec,
    RemoteHost,
    RouterSpec,
    ServerSettings,
    WorkerSpec,
    check_name,
    name_from_model,
    unique_name,
)

Say = Callable[[str], None]


# --- specs from plans -------------------------------------------------------------------------


def _with_settings(args: ServerArgs, settings: ServerSettings, group: GroupSpec) -> ServerArgs:
    """A planned worker with the group's own llama-server settings, its kind's endpoint, and
    the group's name as the model name it answers with."""
    if not settings.flash_attn and args.kv_type != "f16":
        raise LauncherError(
            f"A {args.kv_type} KV cache needs flash attention; set "
            'server.flash_attn = true or kv_type = "f16".'
        )
    return args.replace(
        flash_attn=settings.flash_attn,
        extra=settings.extra_args,
        alias=group.name,
        embeddings=group.kind == "embedding",
        reranking=group.kind == "rerank",
    )


def group_from_layout(
    model: ModelSpec,
    layout: Layout,
    workload: Workload,
    inventory: Inventory,
    *,
    name: str | None = None,
    settings: ServerSettings = DEFAULT_SETTINGS,
    base: GroupSpec | None = None,
) -> GroupSpec:
    """The planned group that runs ``layout`` exactly: its workers, and the cards (UUID and
    PCI bus id), split, users and context a launch profile keeps. ``base`` carries a
    profile's group fields the plan does not decide (aliases, kind)."""
    if not layout.feasible:
        raise LauncherError(f"Layout {layout.kind} does not fit: {layout.problem}.")
    by_index = {c.index: c for c in inventory.local.cards}
    used = [by_index[i] for p in layout.processes for i in p.cards if i in by_index]
    settings = replace(settings, kv_type=workload.kv_type)
    group = base or GroupSpec(name=name_from_model(model.path), model=str(model.path))
    group = replace(group, name=name or group.name)
    workers = tuple(
        WorkerSpec(_with_settings(p.args, settings, group), dict(p.env), p.cards)
        for p in layout.processes
    )
    return replace(
        group,
        model=str(model.path),
        layout=layout.kind,
        cards=tuple(c.uuid or str(c.index) for c in used),
        pci_bus_ids=tuple(c.pci_bus_id or "" for c in used),
        tensor_split=layout.tensor_split,
        users=workload.users,
        ctx=workload.ctx,
        goal=workload.goal,
        server=settings,
        workers=workers,
    )


def spec_for_layout(
    model: ModelSpec,
    layout: Layout,
    workload: Workload,
    inventory: Inventory,
    *,
    name: str | None = None,
    router_port: int = DEFAULT_ROUTER_PORT,
    launch: bool = True,
) -> FleetSpec:
    """A fleet of one group that runs ``layout`` as planned: the Plan screen's Launch, or
    (``launch=False``) its "Save as profile", which may be for a hardware profile's cards and
    then names that hardware."""
    profile = _profile_of(inventory, launch)
    group = group_from_layout(model, layout, workload, inventory)
    return FleetSpec(
        check_name(name or group.name, "fleet" if launch else "profile"),
        (group,),
        RouterSpec(port=router_port),
        hardware=profile,
    )


def _profile_of(inventory: Inventory, launch: bool) -> str | None:
    """The hardware profile a plan is for (None: this box); a launch needs this box."""
    profile = None if inventory.source == "nvml" else inventory.source.split(":", 1)[-1]
    if launch and profile is not None:
        raise LauncherError(
            f"This plan is for hardware profile {profile}, whose cards are not in this box; "
            "pick 'This box' on the Hardware screen and plan again to launch, or save it as a "
            "launch profile."
        )
    return profile


def router_port(preferred: int = DEFAULT_ROUTER_PORT) -> int:
    """``preferred`` when it is free, else a free port from 18080 on (what the TUI plans
    and launches with, so that the command shown is the command run)."""
    return preferred if port_free(preferred) else free_port(set(), 18080)


# --- planning a spec ----------------------------------------------------------------------------


@dataclass(frozen=True)
class UpRequest:
    """``up TARGET`` and its options; None leaves the profile's value (or the default)."""

    target: str  # a .gguf model or a launch profile (name or path)
    layout: str | None = None
    cards: tuple[str, ...] = ()
    users: tuple[int, ...] = ()  # one value for every group, or one per group
    ctx: tuple[int, ...] = ()
    kv_type: str | None = None
    goal: str | None = None
    port: int | None = None
    name: str | None = None
    replan: bool = False
    llama_server: str | None = None
    more_models: tuple[str, ...] = ()  # ``up A.gguf B.gguf ...``: a fleet of several models
    tensor_split: str | None = None  # as typed (plan/split.py); one group only
    flash_attn: bool | None = None


@dataclass(frozen=True)
class PreparedFleet:
    """A planned spec and the lines that say what was planned or changed."""

    spec: FleetSpec
    lines: tuple[str, ...]


def is_model_path(target: str) -> bool:
    return target.endswith(".gguf")


def requested_spec(request: UpRequest) -> FleetSpec:
    """The fleet spec ``request`` names, with its options applied, not yet planned. A layout
    or cards given on the command line apply to a one-group fleet; with several groups they
    constrain the box plan (``prepare_up``)."""
    targets = (request.target, *request.more_models)
    if all(is_model_path(t) for t in targets):
        groups: list[GroupSpec] = []
        for t in targets:
            model = str(Path(t).expanduser().resolve())
            name = unique_name(name_from_model(model), [g.name for g in groups])
            groups.append(GroupSpec(name=name, model=model))
        spec = FleetSpec(groups[0].name, tuple(groups))
    elif request.more_models:
        raise LauncherError(
            "Give 'up' one launch profile, or one or more .gguf models; to add models to a "
            "profile, add [[groups]] to it."
        )
    else:
        spec = launch.load_launch_profile(launch.resolve(request.target))
    count = len(spec.groups)
    users = planning.per_model(request.users, count, "--users")
    ctxs = planning.per_model(request.ctx, count, "--ctx")
    changed = []
    for group, u, c in zip(spec.groups, users, ctxs, strict=True):
        if count == 1 and request.layout:
            group = replace(group, layout=request.layout, cards=(), pci_bus_ids=(), tensor_split=())
        elif request.layout and group.layout == "auto":
            group = replace(group, layout=request.layout)
        if count == 1 and request.cards:
            group = replace(group, cards=request.cards, pci_bus_ids=(), tensor_split=())
        if request.tensor_split:
            if count > 1:
                raise LauncherError(
                    "--tensor-split applies to a fleet of one model; give each group its "
                    "tensor_split in the launch profile."
                )
            group = replace(group, tensor_split=parse_split(request.tensor_split))
        changed.append(
            replace(
                group,
                users=u or group.users,
                ctx=c or group.ctx,
                goal=request.goal or group.goal,
                server=replace(
                    group.server,
                    kv_type=request.kv_type or group.server.kv_type,
                    flash_attn=group.server.flash_attn
                    if request.flash_attn is None
                    else request.flash_attn,
                ),
            )
        )
    router = replace(spec.router, port=request.port or spec.router.port)
    return replace(
        spec,
        name=check_name(request.name or spec.name),
        groups=tuple(changed),
        router=router,
    )


def prepare_up(request: UpRequest) -> PreparedFleet:
    """The spec ``up`` runs: the profile or model with the options, planned once."""
    spec = requested_spec(request)
    box_cards = request.cards if len(spec.groups) > 1 else ()
    return plan_spec(
        spec, llama_server=request.llama_server, replan=request.replan, box_cards=box_cards
    )


def plan_spec(
    spec: FleetSpec,
    *,
    llama_server: str | None,
    replan: bool,
    box_cards: tuple[str, ...] = (),
) -> PreparedFleet:
    """Plan every group of ``spec`` on this box: what a group gives (layout, cards, split,
    users, ctx) is used as given; what it leaves out is planned, and said. ``replan`` keeps
    only each group's layout kind and settings and says what changed. Several groups share
    the box as the box planner places them (``plan.box``), on ``box_cards`` when given;
    workers get the ports above the router's in the order of the groups."""
    problems = spec.problems()
    if problems:
        raise LauncherError(f"Fleet '{spec.name}': {' '.join(problems)}")
    remote_hosts, remote_lines = remote.hosts_for(spec)
    local = replace(spec, groups=spec.local_groups)
    lines: list[str] = []
    groups: list[GroupSpec] = []
    if local.groups:
        box = hardware.inventory()
        option = llama_server or local.groups[0].server.llama_server
        target = server.required_target(option)
        pooled = [g for g in local.groups if g.rpc_host]
        if pooled and len(local.groups) > 1 and not all(g.cards for g in pooled):
            raise LauncherError(
                f"Group {pooled[0].name} pools host {pooled[0].rpc_host}'s cards over RPC "
                "beside other groups on this box: give it cards = [...] in the profile, so "
                "that the others are planned on the rest."
            )
        with_rpc = remote.with_hosts_of(box, spec.hardware) if pooled else box
        for group in pooled:
            planned, said = _plan_group(group, with_rpc, target, local, replan)
            groups.append(planned)
            lines += said
        rest = replace(local, groups=tuple(g for g in local.groups if not g.rpc_host))
        box = _without_cards(box, [c for g in groups for c in g.cards])
        if len(rest.groups) > 1:
            planned_box, said_box = _plan_box(rest, box, target, replan, box_cards)
            groups += planned_box
            lines += said_box
        else:
            for group in rest.groups:
                planned, said = _plan_group(group, box, target, rest, replan)
                groups.append(planned)
                lines += said
    numbered = {g.name: g for g in _number_ports(groups, spec.router.port)}
    ordered = tuple(numbered.get(g.name, g) for g in spec.groups)
    planned_spec = replace(spec, groups=ordered, remote_hosts=remote_hosts)
    return PreparedFleet(planned_spec, (*lines, *remote_lines))


def _without_cards(box: Inventory, taken: list[str]) -> Inventory:
    """``box`` less the cards (UUIDs or indices) a pooled-rpc group took."""
    if not taken:
        return box
    left = tuple(c for c in box.local.cards if c.uuid not in taken and str(c.index) not in taken)
    return replace(box, hosts=(replace(box.local, cards=left), *box.hosts[1:]))


def _plan_box(
    spec: FleetSpec,
    box: Inventory,
    target: ServerTarget,
    replan: bool,
    box_cards: tuple[str, ...] = (),
) -> tuple[list[GroupSpec], list[str]]:
    """Several groups on this box, placed by the box planner: a group's given cards are kept
    (unless ``replan``), the others go where the plan puts them; groups that cannot be
    resident beside the others load on demand, and one that fits nowhere stops ``up``."""
    requests: list[ModelRequest] = []
    models: dict[str, ModelSpec] = {}
    for group in spec.groups:
        model = read_model_spec(Path(group.model).expanduser())
        models[group.name] = model
        cards = () if replan else _cards_here(group, box, spec.name)
        workload = planning.model_workload(
            model,
            box.local,
            group.users,
            group.ctx,
            kv_type=group.server.kv_type,
            goal=group.goal,
            cards=cards or box_cards,
            flash_attn=group.server.flash_attn,
        )
        requests.append(
            ModelRequest(
                group.name,
                model,
                workload,
                group.layout,
                fixed_cards=bool(cards),
                on_demand=group.on_demand,
            )
        )
    goal = spec.groups[0].goal
    result = plan_box(requests, box, target, goal, spec.router.port, planning.calibration_for(box))
    best = result.best
    if best is None or best.missing:
        raise LauncherError(
            "The groups do not fit on this box together: "
            + " ".join(best.missing if best else ("nothing fits",))
        )
    lines = [f"Box plan: {best.reason}"]
    groups = []
    for group, request in zip(spec.groups, requests, strict=True):
        placed = best.placement(group.name)
        assert placed is not None
        layout = placed.layout
        if group.tensor_split and not replan and group.tensor_split != layout.tensor_split:
            layout = with_tensor_split(
                models[group.name], layout, group.tensor_split, request.workload
            )
        planned = group_from_placement(placed, box, base=group, layout=layout)
        if placed.on_demand and not group.on_demand:
            lines.append(f"Group {group.name} loads on demand: it does not fit beside the others.")
        if replan:
            lines += _changes(group, planned)
        groups.append(planned)
    return groups, lines


def group_from_placement(
    placed: Placement,
    inventory: Inventory,
    *,
    base: GroupSpec | None = None,
    layout: Layout | None = None,
) -> GroupSpec:
    """The group that runs one model of a box plan (``group_from_layout``), on demand and
    exclusive as the plan says (a profile's own exclusions win)."""
    request = placed.request
    group = group_from_layout(
        request.spec,
        layout or placed.layout,
        request.workload,
        inventory,
        name=placed.name,
        base=base,
        settings=base.server if base else DEFAULT_SETTINGS,
    )
    return replace(
        group,
        on_demand=placed.on_demand or group.on_demand,
        exclusive_with=group.exclusive_with or placed.exclusive_with,
    )


def spec_for_box(
    plan: BoxPlan,
    inventory: Inventory,
    *,
    name: str | None = None,
    router_port: int = DEFAULT_ROUTER_PORT,
    launch: bool = True,
) -> FleetSpec:
    """A fleet of the box plan's groups, as planned: the Plan screen's Launch of several
    models, or (``launch=False``) its "Save as profile"."""
    profile = _profile_of(inventory, launch)
    groups = [group_from_placement(p, inventory) for p in plan.placements]
    if not groups:
        raise LauncherError("This box plan places no model; plan again with fewer users.")
    return FleetSpec(
        check_name(name or groups[0].name, "fleet" if launch else "profile"),
        _number_ports(groups, router_port),
        RouterSpec(port=router_port),
        hardware=profile,
    )


def _number_ports(groups: list[GroupSpec], router_port: int) -> tuple[GroupSpec, ...]:
    """Every worker of the fleet on its own port: router port + 1, + 2 ... in group order."""
    count = sum(len(g.workers) for g in groups)
    if router_port + count > 65535:
        raise LauncherError(
            f"Router port {router_port} leaves no room for the {count} worker port(s) above "
            f"it; choose a port up to {65535 - count}."
        )
    out = []
    port = router_port
    for g in groups:
        workers = []
        for w in g.workers:
            port += 1
            workers.append(w.with_port(port))
        out.append(replace(g, workers=tuple(workers)))
    return tuple(out)


def _plan_group(
    group: GroupSpec, box: Inventory, target: ServerTarget, spec: FleetSpec, replan: bool
) -> tuple[GroupSpec, list[str]]:
    model = read_model_spec(Path(group.model).expanduser())
    cards = () if replan else _cards_here(group, box, spec.name)
    port = spec.router.port
    kind = group.layout
    usable = [c for c in box.local.cards if c.usable]
    if kind == "auto" and not usable:
        kind = "cpu:1"
    workload = planning.default_workload(
        model,
        box.local,
        users=group.users,
        ctx=group.ctx,
        kv_type=group.server.kv_type,
        goal=group.goal,
        cards=cards,
        flash_attn=group.server.flash_attn,
        tensor_split=() if replan else group.tensor_split,
    )
    mmproj = Path(group.server.mmproj).expanduser() if group.server.mmproj else None
    outcome = planning.plan_with(
        model,
        box,
        workload,
        target,
        kind,
        router_port=port,
        mmproj=mmproj,
        rpc_host=group.rpc_host,
    )
    best = outcome.plan.best
    if best is None:
        raise LauncherError(
            "Nothing fits on this box: "
            + " ".join(outcome.plan.advice or (outcome.plan.layouts[0].reason,))
        )
    layout = best.layout
    planned = group_from_layout(model, layout, workload, box, base=group, settings=group.server)
    lines = [f"Group {group.name}: {layout.kind}, {len(planned.workers)} worker(s). {best.reason}"]
    lines += [f"{n[0].upper()}{n[1:]}." for n in layout.notes if layout.kind == "pooled-rpc"]
    if replan:
        lines += _changes(group, planned)
    elif not (group.cards or kind.startswith("cpu:")) or group.users is None or group.ctx is None:
        lines.append(
            f"Planned for this box: cards {', '.join(planned.cards) or 'none (CPU)'}, "
            f"{planned.users} user(s) of {planned.ctx} tokens"
            + (
                f", split {','.join(map(str, planned.tensor_split))}"
                if planned.tensor_split
                else ""
            )
            + "."
        )
    if group.server.extra_args:
        lines.append(
            f"Extra llama-server flags from the profile: {' '.join(group.server.extra_args)}"
        )
    return planned, lines


def _changes(before: GroupSpec, after: GroupSpec) -> list[str]:
    """What ``--replan`` changed in a group, one line each."""
    out = []
    for key in ("layout", "cards", "tensor_split", "users", "ctx"):
        old, new = getattr(before, key), getattr(after, key)
        if old not in ((), None) and old != new:
            show = ",".join(map(str, x)) if isinstance(x := old, tuple) else str(x)
            now = ",".join(map(str, new)) if isinstance(new, tuple) else str(new)
            out.append(f"Replanned {before.name}: {key} {show} -> {now}.")
    if not out and before.cards:
        out.append(f"Replanned {before.name}: nothing changed.")
    return out


def _cards_here(group: GroupSpec, box: Inventory, fleet: str) -> tuple[str, ...]:
    """The group's cards as they are in this box (UUID, else PCI bus id); raises when one
    is gone, with the command that plans for the cards here."""
    if not group.cards:
        return ()
    cards = box.local.cards
    by_uuid = {c.uuid: c for c in cards if c.uuid}
    by_bus = {c.pci_bus_id: c for c in cards if c.pci_bus_id}
    out, missing = [], []
    for i, wanted in enumerate(group.cards):
        if wanted in by_uuid or wanted.isdigit():
            out.append(wanted)
            continue
        bus = group.pci_bus_ids[i] if i < len(group.pci_bus_ids) else None
        if bus and bus in by_bus:
            out.append(by_bus[bus].uuid or str(by_bus[bus].index))
        else:
            missing.append(wanted)
    if missing:
        raise LauncherError(
            f"Profile '{fleet}' uses card(s) {', '.join(missing)} that are not in this box "
            "(replaced, moved or off the bus); run 'llama-launcher up "
            f"{fleet} --replan' to plan for the cards here, or save the profile again."
        )
    return tuple(out)


# --- running -------------------------------------------------------------------------------------


def start(spec: FleetSpec, *, detach: bool, say: Say) -> int:
    """Run a planned ``spec``: in the foreground until Ctrl-C or SIGTERM (worker output on
    stdout), or detached (returns once every worker is healthy). 0 on success."""
    if spec.router.enabled:
        router_setup(spec.router)  # a missing API key is said before anything starts
    if detach:
        return daemon.start_detached(spec, say)
    return run_supervisor(Supervisor(spec, echo=True, say=say))


def launch_detached(spec: FleetSpec, say: Say) -> int:
    """The TUI's Launch: ``spec`` in the background, as planned."""
    return start(spec, detach=True, say=say)


def stop(name: str | None, say: Say) -> str:
    """Stop a fleet (the only one running when ``name`` is None); returns its name."""
    return daemon.stop_fleet(name, say)


GROUP_ACTIONS = ("load", "unload")


def group_action(fleet: str, group: str, action: str, say: Say, timeout_s: float = 900.0) -> str:
    """``group load|unload FLEET GROUP``: ask the fleet's supervisor, wait until the group is
    running (loaded) or unloaded, saying what happens; returns its final state. Raises one
    sentence for an unknown fleet or group, or a load that failed."""
    state = next((f for f in fleet_state.list_fleets() if f.name == fleet), None)
    if state is None or not fleet_state.supervisor_alive(state):
        running = ", ".join(f.name for f in fleets() if fleet_state.supervisor_alive(f))
        raise LauncherError(f"No fleet named '{fleet}' is running (running: {running or 'none'}).")
    names = [g.name for g in state.groups]
    if group not in names:
        raise LauncherError(
            f"Fleet {fleet} has no group '{group}'; its groups: {', '.join(names)}."
        )
    initial = next(g.state for g in state.groups if g.name == group)
    fleet_state.post_request(fleet, action, group)
    deadline = time.monotonic() + timeout_s
    shown, changed = "", False
    while time.monotonic() < deadline:
        now = fleet_state.read_state(fleet_state.state_path(fleet))
        current = next((g for g in now.groups if g.name == group), None) if now else None
        if current is None:
            raise LauncherError(f"Fleet {fleet} stopped before {group} was {action}ed.")
        changed = changed or current.state != initial
        if current.state != shown:
            shown = current.state
            say(f"{fleet}/{group}: {shown}")
        if action == "unload" and current.state == "unloaded":
            return current.state
        if action == "load" and current.state == "running":
            return current.state
        if action == "load" and current.state == "failed" and changed:
            raise LauncherError(
                f"Group {group} did not load: {current.message}; 'llama-launcher logs "
                f"{current.workers[0] if current.workers else fleet}' shows why."
            )
        time.sleep(0.25)
    raise LauncherError(f"Group {group} was not {action}ed after {timeout_s:.0f} s.")


def restart_worker(worker_id: str) -> None:
    """Stop worker ``FLEET/wN``; its supervisor starts it again."""
    daemon.restart_worker(worker_id)


def fleets() -> list[FleetState]:
    """Every fleet with a state file; stale ones come back as stopped."""
    return fleet_state.list_fleets()


def remote_log(worker_id: str, follow: bool) -> Iterator[str] | None:
    """The lines of ``FLEET/HOST:wN``, a worker on the fleet's other box ``HOST``, read over
    SSH; None when ``worker_id`` names a worker here."""
    fleet, _, worker = worker_id.partition("/")
    host_name, colon, remote_worker = worker.partition(":")
    if not colon:
        return None
    state = fleet_state.read_state(fleet_state.state_path(check_name(fleet)))
    if state is None:
        raise LauncherError(f"Fleet {fleet} is not running; 'llama-launcher status' lists fleets.")
    hosts = {h["name"]: h for h in state.remote_hosts}
    if host_name not in hosts:
        raise LauncherError(
            f"Fleet {fleet} has no host {host_name!r} (its other boxes: "
            f"{', '.join(hosts) or 'none'})."
        )
    host = RemoteHost(**hosts[host_name])
    return remote_run.log_lines(
        host, remote_run.remote_fleet(fleet, host_name), remote_worker or "w0", follow
    )


def log_path(worker_id: str) -> Path:
    """The log of worker ``FLEET/wN`` (or ``FLEET/supervisor``, a detached fleet's
    supervisor and router); raises with the logs there are."""
    fleet, _, worker = worker_id.partition("/")
    if not worker:
        raise LauncherError(
            "Name a worker as FLEET/wN, FLEET/supervisor or FLEET/HOST:wN (a worker on another "
            "box), e.g. 'llama-launcher logs mymodel/w0'."
        )
    folder = fleet_state.logs_dir(check_name(fleet))
    path = folder / f"{worker}.log"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.log"))
        state = fleet_state.read_state(fleet_state.state_path(fleet))
        elsewhere = [h["name"] for h in state.remote_hosts] if state else []
        raise LauncherError(
            f"No log for {worker_id}; workers with logs: "
            f"{', '.join(f'{fleet}/{k}' for k in known) or 'none'}"
            + "".join(f"; on host {h}: {fleet}/{h}:wN" for h in elsewhere)
            + "."
        )
    return path


# --- profiles ------------------------------------------------------------------------------------


def save_profile(
    name: str, request: planning.PlanRequest, *, force: bool = False
) -> tuple[Path, FleetSpec]:
    """``profile save``: plan ``request`` on this box (not for a hardware profile, whose
    cards are planned by ``up`` on the box that has them) and save it as launch profile
    ``name``."""
    model = str(request.model.expanduser().resolve())
    cards = request.cards
    if request.exclude_cards and not request.hardware:
        box = hardware.inventory()
        excluded = Workload(exclude_cards=request.exclude_cards)
        cards = tuple(c.uuid or str(c.index) for c in select_cards(box.local, excluded))
    group = GroupSpec(
        name=name_from_model(model),
        model=model,
        layout=request.layout,
        cards=cards,
        users=request.users,
        ctx=request.ctx,
        goal=request.goal,
        tensor_split=parse_split(request.tensor_split) if request.tensor_split else (),
        server=ServerSettings(
            kv_type=request.kv_type,
            flash_attn=request.flash_attn,
            llama_server=request.llama_server,
            mmproj=str(request.mmproj) if request.mmproj else None,
        ),
    )
    spec = FleetSpec(
        check_name(name, "profile"),
        (group,),
        RouterSpec(port=request.router_port),
        hardware=request.hardware,
    )
    if not request.hardware:
        spec = plan_spec(spec, llama_server=request.llama_server, replan=False).spec
    return launch.save_launch_profile(spec, force=force), spec


def save_box_profile(
    name: str, request: planning.BoxRequest, *, force: bool = False
) -> tuple[Path, FleetSpec]:
    """``profile save NAME --model A --model B ...``: the box plan of several models on this
    box (for a hardware profile: the request, planned by ``up`` on the box that has it),
    saved as launch profile ``name`` with one group per model."""
    count = len(request.models)
    users = planning.per_model(request.users, count, "--users")
    ctxs = planning.per_model(request.ctx, count, "--ctx")
    groups: list[GroupSpec] = []
    for path, u, c in zip(request.models, users, ctxs, strict=True):
        model = str(path.expanduser().resolve())
        groups.append(
            GroupSpec(
                name=unique_name(name_from_model(model), [g.name for g in groups]),
                model=model,
                layout=request.layout,
                users=u,
                ctx=c,
                goal=request.goal,
                server=ServerSettings(
                    kv_type=request.kv_type,
                    flash_attn=request.flash_attn,
                    llama_server=request.llama_server,
                ),
            )
        )
    spec = FleetSpec(
        check_name(name, "profile"),
        tuple(groups),
        RouterSpec(port=request.router_port),
        hardware=request.hardware,
    )
    if not request.hardware:
        box_cards = request.cards
        if request.exclude_cards:
            box = hardware.inventory()
            excluded = Workload(exclude_cards=request.exclude_cards)
            box_cards = tuple(c.uuid or str(c.index) for c in select_cards(box.local, excluded))
        spec = plan_spec(
            spec, llama_server=request.llama_server, replan=False, box_cards=box_cards
        ).spec
    return launch.save_launch_profile(spec, force=force), spec


def save_planned(spec: FleetSpec) -> Path:
    """Save a fleet spec (``spec_for_layout(..., launch=False)``) as a new launch profile."""
    return launch.save_launch_profile(spec)


def load_profile(target: str) -> FleetSpec:
    """A launch profile by name or path, validated."""
    return launch.load_launch_profile(launch.resolve(target))


def profile_text(target: str) -> tuple[Path, str]:
    """A launch profile's path and text, after checking that it loads."""
    path = launch.resolve(target)
    launch.load_launch_profile(path)
    return path, path.read_text()


def profiles() -> list[tuple[str, Path, str]]:
    return launch.list_profiles()


def config_relative(path: Path) -> str:
    """A profile's path as the TUI lists it: under the config folder, else whole."""
    try:
        return str(path.resolve().relative_to(paths.config_dir().resolve()))
    except ValueError:
        return str(path)


def profile_models(path: Path) -> str:
    """A launch profile's groups in a few words ("chat, small, embed*": * on demand), or why
    it cannot be read."""
    try:
        spec = launch.load_launch_profile(path)
    except LauncherError:
        return "(cannot be read)"
    return ", ".join(g.name + ("*" if g.on_demand else "") for g in spec.groups)


def write_systemd_unit(profile: str, force: bool = False) -> Path:
    """A systemd user unit that runs ``up PROFILE``; refuses to replace one without ``force``."""
    path = launch.resolve(profile).resolve()
    spec = launch.load_launch_profile(path)
    home = os.environ.get(paths.HOME_ENV)
    base = (
        Path(home) / "config"
        if home
        else Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    )
    unit = base / "systemd" / "user" / f"llama-launcher-{spec.name}.service"
    if unit.exists() and not force:
        raise LauncherError(f"{unit} already exists; pass --force to replace it.")
    command = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "launcher", "up", str(path)))
    env_line = f"Environment={paths.HOME_ENV}={home}\n" if home else ""
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(
        "[Unit]\n"
        f"Description=llama-launcher fleet {spec.name}\n"
        "After=network-online.target\n\n"
        "[Service]\n"
        f"ExecStart={command}\n"
        f"{env_line}"
        "Restart=on-failure\nRestartSec=5\nKillSignal=SIGTERM\nTimeoutStopSec=30\n\n"
        "[Install]\nWantedBy=default.target\n"
    )
    return unit


def delete_profile(path: Path) -> None:
    """Delete one of the user's launch or hardware profiles (never a shipped example)."""
    if paths.config_dir() not in path.resolve().parents:
        raise LauncherError(f"{path} is not one of your profiles; shipped examples stay.")
    path.unlink(missing_ok=True)
