"""The layouts a box can run a model in, each with its processes, memory and speed.

Kinds (DESIGN.md): ``per-card`` (one worker per card that fits), ``pooled-layer`` and
``pooled-tensor`` (one worker over all cards, ``-sm layer`` / ``-sm tensor``), ``groups:K``
(pooled-layer groups of K cards, one worker each), ``partial-offload`` (some layers on the
host), ``cpu:N`` (N CPU workers) and ``pooled-rpc`` (one ``-sm layer`` worker over another
box's cards, lent by its rpc-server, and this box's; docs/remote.md). Each process carries the
exact argv and environment.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from launcher.errors import LauncherError
from launcher.gpu.card import GpuCard
from launcher.gpu.inventory import Host
from launcher.llamacpp.args import ServerArgs
from launcher.llamacpp.probe import ServerTarget, default_flags
from launcher.model.spec import ModelSpec, name_from_model
from launcher.plan import fits, network, perf
from launcher.plan import memory as mem
from launcher.plan.fits import Basis, Calibration, GpuConstants
from launcher.plan.memory import CardMemory
from launcher.plan.perf import Stage, Throughput
from launcher.plan.split import check_split, layer_counts, tensor_shares
from launcher.plan.workload import Workload

# Free memory a card must keep after loading, for fragmentation and the driver's own needs.
MIN_HEADROOM_BYTES = 256 << 20
DEFAULT_ROUTER_PORT = 8080
RPC_PORT_OFFSET = 90  # a pooled-rpc worker reaches rpc-server at router port + this (a tunnel)


@dataclass(frozen=True)
class RpcBox:
    """Another box whose cards a pooled-rpc worker uses through llama.cpp's rpc-server, and
    the link to it (a hardware profile's host)."""

    host: str
    cards: tuple[GpuCard, ...]
    link: network.Link


@dataclass(frozen=True)
class Process:
    """One llama-server of a layout: its settings, environment additions and cards."""

    args: ServerArgs
    env: dict[str, str]
    cards: tuple[int, ...]

    @property
    def port(self) -> int:
        return self.args.port

    @property
    def slots(self) -> int:
        return self.args.slots

    @property
    def argv(self) -> tuple[str, ...]:
        return self.args.argv()

    def to_json(self) -> dict[str, object]:
        return {
            "argv": list(self.argv),
            "env": dict(self.env),
            "cards": list(self.cards),
            "port": self.port,
            "slots": self.slots,
        }


@dataclass(frozen=True)
class Layout:
    """A way to run the model here; ``problem`` says why not when it does not fit."""

    kind: str
    processes: tuple[Process, ...]
    cards: tuple[CardMemory, ...]
    host_bytes: int
    throughput: Throughput
    problem: str | None = None
    tensor_split: tuple[int, ...] = ()
    notes: tuple[str, ...] = field(default=())
    basis: Basis | None = None  # where the speed figures' constants come from

    @property
    def feasible(self) -> bool:
        return self.problem is None

    @property
    def workers(self) -> int:
        return len(self.processes)

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "feasible": self.feasible,
            "tensor_split": list(self.tensor_split),
            "processes": [p.to_json() for p in self.processes],
            "cards": [c.to_json() for c in self.cards],
            "host_bytes": self.host_bytes,
            "predicted": {
                **self.throughput.to_json(),
                "basis": self.basis.to_json() if self.basis else None,
            },
        }


@dataclass(frozen=True)
class _Ctx:
    spec: ModelSpec
    host: Host
    cards: tuple[GpuCard, ...]
    workload: Workload
    server: ServerTarget
    router_port: int
    mmproj_bytes: int
    model_arg: str
    mmproj_arg: str | None
    calibration: Calibration | None = None
    rpc: RpcBox | None = None

    def constants(self, cards: Sequence[GpuCard]) -> tuple[GpuConstants, Basis]:
        """Speed constants of a worker on ``cards`` (those of its slowest card)."""
        slowest = min(cards, key=lambda c: c.memory_bandwidth_bytes_s or 0.0)
        constants, basis = fits.constants_for(slowest, self.calibration)
        return constants, basis.for_model(self.spec)


def select_cards(host: Host, workload: Workload) -> tuple[GpuCard, ...]:
    """The usable cards that ``--cards`` / ``--exclude-cards`` leave; unknown entries raise."""
    usable = [c for c in host.cards if c.usable]

    def matches(card: GpuCard, entry: str) -> bool:
        return entry == str(card.index) or (card.uuid is not None and entry == card.uuid)

    for entry in (*workload.cards, *workload.exclude_cards):
        if not any(matches(c, entry) for c in host.cards):
            known = ", ".join(str(c.index) for c in host.cards) or "none"
            raise LauncherError(
                f"Card '{entry}' is not in this box (cards: {known}); give card "
                "indices or UUIDs from 'llama-launcher gpus'."
            )
    if workload.cards:
        chosen = [c for c in usable if any(matches(c, e) for e in workload.cards)]
    else:
        chosen = [c for c in usable if not any(matches(c, e) for e in workload.exclude_cards)]
    return tuple(chosen)


def _free(card: GpuCard) -> int:
    if card.memory_free_bytes is not None:
        return card.memory_free_bytes
    return card.memory_total_bytes - (card.memory_used_bytes or 0)


def _env(cards: Sequence[GpuCard]) -> dict[str, str]:
    ids = [c.uuid if c.uuid else str(c.index) for c in cards]
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(ids)}


def _args(ctx: _Ctx, port: int, slots: int, **placement: object) -> ServerArgs:
    """A worker's settings: the workload's, the server's defaults and ``placement`` (layers on
    the cards, split mode and split, threads)."""
    w = ctx.workload
    return ServerArgs(
        binary=ctx.server.path,
        model=ctx.model_arg,
        port=port,
        slots=slots,
        ctx_per_slot=w.ctx,
        kv_type=w.kv_type,
        defaults=default_flags(ctx.server),
        mmproj=ctx.mmproj_arg,
        alias=name_from_model(ctx.spec.path),
        flash_attn=w.flash_attn,
        **placement,  # type: ignore[arg-type]
    )


def _gpu(ctx: _Ctx, mode: str, ngl: int, split: Sequence[int] = ()) -> dict[str, object]:
    return {
        "gpu_layers": ngl,
        "split_mode": mode,
        "tensor_split": tuple(split),
        "fit_off": ctx.server.supports_fit,  # what runs is what was planned
    }


def _stages(ctx: _Ctx, cards: Sequence[GpuCard], memory: Sequence[CardMemory]) -> list[Stage]:
    spec = ctx.spec
    gpu_weights = sum(m.weights_bytes for m in memory) or 1
    matmul_params = fits.matmul_params(spec)
    nvlinked = {c.index for c in cards if c.nvlink_active_links}
    nvlinked |= {i for p in ctx.host.links if p.nvlink_links for i in (p.a, p.b)}
    stages = []
    for card, m in zip(cards, memory, strict=True):
        share = m.weights_bytes / gpu_weights
        experts = _experts_on_card(spec, m)
        stages.append(
            Stage(
                bandwidth_bytes_s=card.memory_bandwidth_bytes_s or 300e9,
                weight_bytes=max(m.weights_bytes - experts, 0),
                active_params=matmul_params * share,
                layers=len([il for il in m.layers if il < spec.n_layer]),
                link_bytes_s=card.pcie.max_bytes_s,
                nvlink=card.index in nvlinked,
                flops=fits.card_flops(card),
                tensor_flops=fits.card_tensor_flops(card),
                expert_bytes=experts,
                n_expert=spec.n_expert,
                n_expert_used=spec.n_expert_used,
            )
        )
    return stages


def _experts_on_card(spec: ModelSpec, m: CardMemory) -> int:
    """Expert weight bytes on a card: those of its layers, in the card's share of them (a
    tensor split holds a share of every layer)."""
    if not spec.expert_bytes:
        return 0
    layers = [il for il in m.layers if il < spec.n_layer]
    full = sum(mem.layer_weight_bytes(spec, il) for il in m.layers) or 1
    return int(sum(spec.expert_bytes[il] for il in layers) * min(m.weights_bytes / full, 1.0))


def _kv_read(ctx: _Ctx) -> float:
    """KV bytes one user's decode step reads, at a typical context."""
    used = min(ctx.workload.ctx, ctx.workload.prompt_tokens + 64)
    return mem.kv_bytes_per_token(ctx.spec, ctx.workload.kv_type) * used


def _layer_step(ctx: _Ctx, stages: list[Stage], constants: GpuConstants) -> Callable[[int], float]:
    """Step time of a layer-split worker as a function of its batch."""
    kv_read = _kv_read(ctx)

    def step(batch: int) -> float:
        return perf.layer_split_step(stages, batch, ctx.spec.n_embd, constants, kv_read)

    return step


def _rates(step: Callable[[int], float], batches: Sequence[int]) -> tuple[float, float]:
    """(single-user tok/s, aggregate tok/s) for workers serving ``batches`` users each."""
    single = 1.0 / step(1)
    aggregate = sum(b / step(b) for b in batches if b > 0)
    return single, aggregate


def _split_users(users: int, workers: int) -> list[int]:
    base, extra = divmod(users, workers)
    return [base + (1 if i < extra else 0) for i in range(workers)]


def _fit_problem(memory: Sequence[CardMemory]) -> str | None:
    short = [m for m in memory if m.free_after_bytes < MIN_HEADROOM_BYTES]
    if not short:
        return None
    worst = min(short, key=lambda m: m.free_after_bytes)
    need = (MIN_HEADROOM_BYTES - worst.free_after_bytes) / 2**30
    return (
        f"card {worst.card} would need {need:.1f} GiB more "
        f"({worst.total_bytes / 2**30:.1f} GiB of {worst.free_bytes / 2**30:.1f} GiB free)"
    )


# --- kinds --------------------------------------------------------------------------------


def per_card(ctx: _Ctx) -> Layout:
    """One worker per card that holds the whole model; the users split between them."""
    w = ctx.workload
    fitting: list[tuple[GpuCard, CardMemory]] = []
    skipped = []
    slots_guess = max(1, math.ceil(w.users / max(len(ctx.cards), 1)))
    for card in ctx.cards:
        (m,), _ = mem.layer_split_memory(
            ctx.spec,
            [(card.index, card.uuid, _free(card))],
            [1.0],
            w.ctx,
            slots_guess,
            w.kv_type,
            w.n_ubatch,
            extra_first_card=ctx.mmproj_bytes,
            flash_attn=w.flash_attn,
        )
        if m.free_after_bytes >= MIN_HEADROOM_BYTES:
            fitting.append((card, m))
        else:
            skipped.append(f"{card.name} (card {card.index}) is skipped: {_fit_problem([m])}")
    if not fitting:
        best = max(ctx.cards, key=_free)
        (m,), host = mem.layer_split_memory(
            ctx.spec,
            [(best.index, best.uuid, _free(best))],
            [1.0],
            w.ctx,
            slots_guess,
            w.kv_type,
            w.n_ubatch,
            flash_attn=w.flash_attn,
        )
        return Layout(
            "per-card",
            (),
            (m,),
            host,
            Throughput(0, 0, 0),
            problem="the model fits on no single card: " + (_fit_problem([m]) or ""),
        )
    users = _split_users(w.users, len(fitting))
    processes = []
    memories = []
    steps = []
    bases = []
    for i, ((card, _), slots) in enumerate(zip(fitting, users, strict=True)):
        slots = max(slots, 1)
        (m,), host = mem.layer_split_memory(
            ctx.spec,
            [(card.index, card.uuid, _free(card))],
            [1.0],
            w.ctx,
            slots,
            w.kv_type,
            w.n_ubatch,
            extra_first_card=ctx.mmproj_bytes,
            flash_attn=w.flash_attn,
        )
        memories.append(m)
        port = ctx.router_port + 1 + i
        args = _args(ctx, port, slots, **_gpu(ctx, "none", 999))
        processes.append(Process(args, _env([card]), (card.index,)))
        constants, basis = ctx.constants([card])
        bases.append(basis)
        steps.append(_layer_step(ctx, _stages(ctx, [card], [m]), constants))
    single = 1.0 / steps[0](1)
    aggregate = sum(u / step(u) for u, step in zip(users, steps, strict=True) if u > 0)
    stage0 = _stages(ctx, [fitting[0][0]], [memories[0]])
    pp = perf.prompt_tok_s(stage0, ctx.spec.n_embd, ctx.spec.n_layer, False, w.n_ubatch)
    # the users of the skipped cards moved to the others: they must still fit
    problem = _fit_problem(memories)
    return Layout(
        "per-card",
        tuple(processes),
        tuple(memories),
        host,
        Throughput(single, aggregate, pp),
        problem=f"with {users[0]} users per card, {problem}" if problem else None,
        notes=tuple(skipped),
        basis=max(bases, key=lambda b: b.error_pct),
    )


def _layer_split(
    ctx: _Ctx,
    cards: Sequence[GpuCard],
    slots: int,
    given: Sequence[float] = (),
    extra_first_card: int = 0,
) -> tuple[list[int], list[CardMemory], int]:
    """A ``-sm layer`` worker's layers per card (``given``, else balanced for headroom), its
    memory per card and on the host."""
    w = ctx.workload
    free = [_free(c) for c in cards]
    split = (
        list(layer_counts(given, len(cards), ctx.spec.n_layer))
        if given
        else mem.balanced_shares(
            ctx.spec, free, w.ctx, slots, w.kv_type, w.n_ubatch, flash_attn=w.flash_attn
        )
    )
    memory, host = mem.layer_split_memory(
        ctx.spec,
        [(c.index, c.uuid, f) for c, f in zip(cards, free, strict=True)],
        split,
        w.ctx,
        slots,
        w.kv_type,
        w.n_ubatch,
        extra_first_card=extra_first_card,
        flash_attn=w.flash_attn,
    )
    return split, memory, host


def pooled_layer(
    ctx: _Ctx,
    cards: Sequence[GpuCard] | None = None,
    port_offset: int = 0,
    users: int | None = None,
    kind: str = "pooled-layer",
) -> Layout:
    """One ``-sm layer`` worker over ``cards`` with a split that balances headroom."""
    w = ctx.workload
    cards = tuple(cards if cards is not None else ctx.cards)
    slots = max(users if users is not None else w.users, 1)
    given = w.tensor_split if len(cards) == len(ctx.cards) else ()
    split, memory, host = _layer_split(ctx, cards, slots, given, ctx.mmproj_bytes)
    port = ctx.router_port + 1 + port_offset
    args = _args(ctx, port, slots, **_gpu(ctx, "layer", 999, split))
    stages = _stages(ctx, cards, memory)
    constants, basis = ctx.constants(cards)
    single, aggregate = _rates(_layer_step(ctx, stages, constants), [slots])
    pp = perf.prompt_tok_s(stages, ctx.spec.n_embd, ctx.spec.n_layer, False, w.n_ubatch)
    return Layout(
        kind,
        (Process(args, _env(cards), tuple(c.index for c in cards)),),
        tuple(memory),
        host,
        Throughput(single, aggregate, pp),
        problem=_fit_problem(memory),
        tensor_split=tuple(split),
        basis=basis,
    )


def pooled_tensor(ctx: _Ctx) -> Layout:
    """One ``-sm tensor`` worker over all cards, shares proportional to free memory."""
    w = ctx.workload
    cards = ctx.cards
    free = [_free(c) for c in cards]
    fixed = mem.compute_buffer_bytes(ctx.spec, w.n_ubatch)
    shares = [max(f - fixed, 1) for f in free]
    scale = min(shares)
    split = (
        list(tensor_shares(w.tensor_split, len(cards)))
        if w.tensor_split
        else [max(1, round(s / scale * 10)) for s in shares]
    )
    memory, host = mem.tensor_split_memory(
        ctx.spec,
        [(c.index, c.uuid, f) for c, f in zip(cards, free, strict=True)],
        split,
        w.ctx,
        w.users,
        w.kv_type,
        w.n_ubatch,
        flash_attn=w.flash_attn,
    )
    port = ctx.router_port + 1
    args = _args(ctx, port, w.users, **_gpu(ctx, "tensor", 999, split))
    stages = _stages(ctx, cards, memory)
    n_layer = ctx.spec.n_layer
    constants, basis = ctx.constants(cards)
    kv_read = _kv_read(ctx)
    single, aggregate = _rates(
        lambda b: perf.tensor_split_step(stages, b, ctx.spec.n_embd, n_layer, constants, kv_read),
        [w.users],
    )
    pp = perf.prompt_tok_s(stages, ctx.spec.n_embd, n_layer, True, w.n_ubatch)
    return Layout(
        "pooled-tensor",
        (Process(args, _env(cards), tuple(c.index for c in cards)),),
        tuple(memory),
        host,
        Throughput(single, aggregate, pp),
        problem=_fit_problem(memory),
        tensor_split=tuple(split),
        basis=basis,
    )


def pooled_rpc(ctx: _Ctx) -> Layout:
    """One ``-sm layer`` worker over another box's cards (its rpc-server's devices, which
    llama.cpp puts first) and this box's: the first layers there, the rest and the output
    here. Each decode step sends the hidden state there and back, with the attention mask of
    the layers there, over the link (``network.rpc_step_s``)."""
    assert ctx.rpc is not None
    w = ctx.workload
    remote, local = ctx.rpc.cards, ctx.cards
    devices = (*remote, *local)
    slots = max(w.users, 1)
    split, memory, host = _layer_split(ctx, devices, slots, w.tensor_split)
    memory = [
        dataclasses.replace(m, host=ctx.rpc.host) if i < len(remote) else m
        for i, m in enumerate(memory)
    ]
    endpoint = f"127.0.0.1:{ctx.router_port + RPC_PORT_OFFSET}"
    placement = {**_gpu(ctx, "layer", 999, split), "rpc": (endpoint,)}
    args = _args(ctx, ctx.router_port + 1, slots, **placement)
    stages = _stages(ctx, devices, memory)
    constants, basis = ctx.constants(devices)
    layer_step = _layer_step(ctx, stages, constants)
    link = ctx.rpc.link
    used = min(w.ctx, w.prompt_tokens + 64)
    # without a card here the output layer is there too: the logits cross the link
    vocab = 0 if local else ctx.spec.n_vocab

    def net(batch: int) -> float:
        return network.rpc_step_s(link, ctx.spec.n_embd, batch, used * batch, vocab)

    def step(batch: int) -> float:
        return layer_step(batch) + net(batch)

    single, aggregate = _rates(step, [slots])
    pp = perf.prompt_tok_s(stages, ctx.spec.n_embd, ctx.spec.n_layer, False, w.n_ubatch)
    remote_layers = sum(split[: len(remote)])
    notes = (
        f"{remote_layers} of {ctx.spec.n_layer} layers on host {ctx.rpc.host} over RPC "
        f"({link.describe()}): each decode step adds {net(1) * 1000:.1f} ms for one user"
        + (f", {net(slots) * 1000:.1f} ms for {slots}" if slots > 1 else ""),
        f"the rpc-server on {ctx.rpc.host} has no authentication: it listens on that box's "
        "127.0.0.1 only and is reached through an SSH tunnel",
    )
    return Layout(
        "pooled-rpc",
        (Process(args, _env(local), tuple(c.index for c in local)),),
        tuple(memory),
        host,
        Throughput(single, aggregate, pp),
        problem=_fit_problem(memory),
        tensor_split=tuple(split),
        notes=notes,
        basis=basis,
    )


def groups(ctx: _Ctx, k: int) -> Layout:
    """Pooled-layer groups of ``k`` cards (in PCI order), one worker per group."""
    n = len(ctx.cards) // k
    users = _split_users(ctx.workload.users, n)
    parts = [
        pooled_layer(ctx, ctx.cards[i * k : (i + 1) * k], i, max(users[i], 1)) for i in range(n)
    ]
    problem = next((p.problem for p in parts if p.problem), None)
    single = parts[0].throughput.single_user_tok_s
    aggregate = sum(p.throughput.aggregate_tok_s for p in parts)
    return Layout(
        f"groups:{k}",
        tuple(p.processes[0] for p in parts),
        tuple(m for p in parts for m in p.cards),
        parts[0].host_bytes,
        Throughput(single, aggregate, parts[0].throughput.prompt_tok_s),
        problem=problem,
        tensor_split=parts[0].tensor_split,
        basis=parts[0].basis,
    )


def partial_offload(ctx: _Ctx) -> Layout:
    """As many layers on the cards as fit (layer split), the rest on the host CPU."""
    w = ctx.workload
    cards = ctx.cards
    free = [_free(c) for c in cards]
    best: Layout | None = None
    for ngl in range(ctx.spec.n_layer, 0, -1):
        shares = [max(f, 1) for f in free]
        memory, host = mem.layer_split_memory(
            ctx.spec,
            [(c.index, c.uuid, f) for c, f in zip(cards, free, strict=True)],
            shares,
            w.ctx,
            w.users,
            w.kv_type,
            w.n_ubatch,
            n_gpu_layers=ngl,
            flash_attn=w.flash_attn,
        )
        if _fit_problem(memory) is None:
            port = ctx.router_port + 1
            split = [len(m.layers) for m in memory]
            args = _args(ctx, port, w.users, **_gpu(ctx, "layer", ngl, split))
            on_gpu = sum(m.weights_bytes for m in memory)
            cpu_bytes = host - ctx.spec.token_embd_bytes
            # the host part streams from RAM at roughly 40 GB/s on a desktop
            host_step = cpu_bytes / 40e9
            stages = _stages(ctx, cards, memory)
            constants, basis = ctx.constants(cards)

            def step(
                b: int,
                stages: list[Stage] = stages,
                hs: float = host_step,
                c: GpuConstants = constants,
            ) -> float:
                gpu_part = perf.layer_split_step(stages, b, ctx.spec.n_embd, c)
                return gpu_part + hs * (1 + 0.1 * b)

            single, aggregate = _rates(step, [w.users])
            best = Layout(
                "partial-offload",
                (Process(args, _env(cards), tuple(c.index for c in cards)),),
                tuple(memory),
                host,
                Throughput(single, aggregate, 0.0),
                tensor_split=tuple(split),
                notes=(
                    f"{ngl} of {ctx.spec.n_layer + 1} layers on the cards "
                    f"({on_gpu / 2**30:.1f} GiB), the rest in host RAM",
                ),
                basis=basis,
            )
            break
    if best is None:
        return Layout(
            "partial-offload",
            (),
            (),
            ctx.spec.weights_bytes,
            Throughput(0, 0, 0),
            problem="not even one layer fits on the cards",
        )
    if best.host_bytes > ctx.host.info.ram_available_bytes > 0:
        return Layout(
            best.kind,
            best.processes,
            best.cards,
            best.host_bytes,
            best.throughput,
            problem=f"the host part needs {best.host_bytes / 2**30:.1f} GiB of RAM, "
            f"{ctx.host.info.ram_available_bytes / 2**30:.1f} GiB is available",
            tensor_split=best.tensor_split,
            notes=best.notes,
            basis=best.basis,
        )
    return best


def cpu_workers(ctx: _Ctx, n: int) -> Layout:
    """``n`` llama-servers on the CPU, sharing the host's cores and memory bandwidth."""
    w = ctx.workload
    users = _split_users(w.users, n)
    threads = max(1, ctx.host.info.cpu_cores // n)
    processes = []
    memory = mem.cpu_worker_bytes(
        ctx.spec,
        w.ctx,
        max(users[0], 1),
        w.kv_type,
        w.n_ubatch,
        ctx.host.info.cpu_flags,
        w.flash_attn,
        cuda_build=bool(ctx.host.cards),
    )
    for i in range(n):
        slots = max(users[i], 1)
        port = ctx.router_port + 1 + i
        args = _args(ctx, port, slots, gpu_layers=0, threads=threads)
        processes.append(Process(args, {"CUDA_VISIBLE_DEVICES": ""}, ()))
    host = memory.shared_bytes + n * memory.private_bytes
    constants, basis = fits.cpu_constants_for(threads, ctx.calibration)
    basis = basis.for_model(ctx.spec)
    # the workers share the host's memory bandwidth
    constants = dataclasses.replace(constants, host_bw=constants.host_bw / n)
    spec = ctx.spec
    stage = Stage(
        bandwidth_bytes_s=constants.host_bw,
        weight_bytes=spec.active_bytes_per_token() - _experts_read(spec, 1),
        active_params=fits.matmul_params(spec),
        layers=spec.n_layer,
        link_bytes_s=None,
        expert_bytes=sum(spec.expert_bytes),
        n_expert=spec.n_expert,
        n_expert_used=spec.n_expert_used,
    )
    kv_read = _kv_read(ctx)

    def step(b: int) -> float:
        return perf.cpu_step(stage, b, threads, constants, kv_read)

    single = 1.0 / step(1)
    aggregate = sum(u / step(u) for u in users if u > 0)
    problem = None
    avail = ctx.host.info.ram_available_bytes
    if avail and host > avail:
        problem = (
            f"needs {host / 2**30:.1f} GiB of RAM ({n} x {memory.private_bytes / 2**30:.1f} GiB "
            f"per worker + {memory.shared_bytes / 2**30:.1f} GiB of shared weights), "
            f"{avail / 2**30:.1f} GiB is available"
        )
    notes = [f"{threads} thread{'s' if threads > 1 else ''} per worker"]
    if memory.repacked_bytes:
        notes.append(
            f"each worker keeps its own repacked copy of "
            f"{memory.repacked_bytes / 2**30:.2f} GiB of the weights (llama.cpp's CPU repacking)"
        )
    return Layout(
        f"cpu:{n}",
        tuple(processes),
        (),
        host,
        Throughput(single, aggregate, 0.0),
        problem=problem,
        notes=tuple(notes),
        basis=basis,
    )


def _experts_read(spec: ModelSpec, batch: int) -> int:
    """Expert bytes counted in ``active_bytes_per_token`` (one token's experts)."""
    if not spec.n_expert or not spec.expert_bytes:
        return 0
    return int(sum(spec.expert_bytes) * spec.n_expert_used / spec.n_expert)


def build_layouts(
    spec: ModelSpec,
    host: Host,
    workload: Workload,
    server: ServerTarget,
    kind: str = "auto",
    router_port: int = DEFAULT_ROUTER_PORT,
    mmproj_bytes: int = 0,
    mmproj_path: str | None = None,
    calibration: Calibration | None = None,
    rpc: RpcBox | None = None,
) -> list[Layout]:
    """Every layout of ``kind`` (``auto``: all that apply) for ``spec`` on ``host``; with a
    tensor split in ``workload``, the pooled layouts that take it. ``rpc``: another box's
    cards that layout ``pooled-rpc`` pools with these (asked for, or ranked under auto)."""
    cards = select_cards(host, workload)
    if kind == "pooled-rpc" and (rpc is None or not rpc.cards):
        raise LauncherError(
            "Layout pooled-rpc needs another box's cards: plan with --hardware PROFILE whose "
            "second host lists its [[hosts.cards]] (and --rpc-host NAME), or give the "
            "group rpc_host = NAME in a launch profile."
        )
    ctx = _Ctx(
        spec,
        host,
        cards,
        workload,
        server,
        router_port,
        mmproj_bytes,
        str(spec.path),
        mmproj_path,
        calibration,
        rpc,
    )
    if kind == "pooled-rpc":
        return [pooled_rpc(ctx)]
    if workload.tensor_split:
        pooled = ("pooled-layer", "pooled-tensor")
        if kind not in ("auto", *pooled):
            raise LauncherError(
                f"A tensor split applies to the pooled layouts, not to {kind}; "
                "choose --layout pooled-layer or pooled-tensor."
            )
        check_split(workload.tensor_split, len(cards))
    if kind.startswith("cpu:") or (kind == "auto" and not cards):
        n_text = kind.split(":", 1)[1] if kind.startswith("cpu:") else "1"
        if not n_text.isdigit() or int(n_text) < 1:
            raise LauncherError(
                f"'{kind}' is not a layout; cpu:N needs a number of workers, e.g. cpu:2."
            )
        return [cpu_workers(ctx, int(n_text))]
    if not cards:
        raise LauncherError(
            f"Layout {kind} needs NVIDIA cards and none is usable here; use "
            "--layout cpu:N or plan with --hardware PROFILE."
        )
    out: list[Layout] = []
    multi = len(cards) > 1
    wanted = (
        {kind}
        if kind != "auto"
        else {"pooled-layer", "pooled-tensor"}
        if workload.tensor_split
        else {"per-card", "pooled-layer", "pooled-tensor", "groups", "partial-offload"}
    )
    if "per-card" in wanted:
        out.append(per_card(ctx))
    if "pooled-layer" in wanted and multi:
        out.append(pooled_layer(ctx))
    if "pooled-tensor" in wanted and multi:
        if "tensor" in server.split_modes:
            out.append(pooled_tensor(ctx))
        elif kind == "pooled-tensor":
            raise LauncherError(
                "This llama-server has no -sm tensor; rebuild it with "
                "'llama-launcher install-server --force' or pick another "
                "layout."
            )
    if kind.startswith("groups:"):
        k_text = kind.split(":", 1)[1]
        if not k_text.isdigit() or not 1 < int(k_text) < len(cards) or len(cards) % int(k_text):
            raise LauncherError(
                f"'{kind}' does not divide the {len(cards)} cards into equal "
                "groups of two or more; choose K that divides the card count."
            )
        out.append(groups(ctx, int(k_text)))
    elif "groups" in wanted:
        for k in range(2, len(cards)):
            if len(cards) % k == 0:
                out.append(groups(ctx, k))
    if kind == "auto" and rpc is not None and rpc.cards and not workload.tensor_split:
        out.append(pooled_rpc(ctx))
    if kind == "partial-offload" or (kind == "auto" and not any(layout.feasible for layout in out)):
        out.append(partial_offload(ctx))
    if not out:
        raise LauncherError(
            f"Unknown layout '{kind}'; choose auto, per-card, pooled-layer, "
            "pooled-tensor, groups:K, partial-offload, pooled-rpc or cpu:N."
        )
    return out


def with_tensor_split(
    spec: ModelSpec, layout: Layout, split: Sequence[float], workload: Workload
) -> Layout:
    """A one-worker pooled ``layout`` with a hand-made ``-ts`` (read by ``plan/split.py``'s
    rule): memory per card recomputed, the worker's split replaced. Raises one sentence when
    the split does not fit the layout."""
    mode = layout.processes[0].args.split_mode if len(layout.processes) == 1 else None
    if mode not in ("layer", "tensor") or layout.kind == "partial-offload":
        raise LauncherError(f"A tensor split applies to pooled layouts, not to {layout.kind}.")
    counts = (
        layer_counts(split, len(layout.cards), spec.n_layer)
        if mode == "layer"
        else tensor_shares(split, len(layout.cards))
    )
    process = layout.processes[0]
    memory = mem.layer_split_memory if mode == "layer" else mem.tensor_split_memory
    cards, host = memory(
        spec,
        [(c.card, c.uuid, c.free_bytes) for c in layout.cards],
        list(counts),
        workload.ctx,
        process.slots,
        workload.kv_type,
        workload.n_ubatch,
        flash_attn=workload.flash_attn,
    )
    args = process.args.replace(tensor_split=counts)
    return dataclasses.replace(
        layout,
        cards=tuple(cards),
        host_bytes=host,
        tensor_split=counts,
        problem=_fit_problem(cards),
        processes=(dataclasses.replace(process, args=args),),
    )
