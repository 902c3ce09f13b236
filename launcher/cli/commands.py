"""The command handlers: each turns its parsed options into a typed request, calls the use
case in ``launcher.app`` and renders the result (``render``). Nothing here plans, spawns or
reads a file of its own."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from launcher.app import (
    agent,
    bench,
    export,
    fleet,
    hardware,
    models,
    planning,
    remote,
    route,
    server,
)
from launcher.bench import report, results
from launcher.bench.load import LoadSpec
from launcher.cli import render
from launcher.cli.render import Progress, say
from launcher.errors import LauncherError
from launcher.plan.workload import parse_card_list
from launcher.spec.fleet import DEFAULT_ROUTER_PORT


def cmd_install_server(args: argparse.Namespace) -> int:
    request = server.InstallRequest(
        llama_cpp_python_version=args.llama_cpp_python_version,
        source=Path(args.source) if args.source else None,
        backend=args.backend,
        force=args.force,
        jobs=args.jobs,
    )
    inst, built = server.install_server(request, say)
    if not built:
        print(f"llama-server {inst.version} ({inst.backend}) is already installed: {inst.server}")
        print("Pass --force to rebuild it.")
    else:
        print(f"Installed llama-server {inst.version} ({inst.backend}): {inst.server}")
    return 0


def cmd_make_model(args: argparse.Namespace) -> int:
    out = Path(args.out)
    progress = Progress(f"writing {out.name}")
    written = models.make_model(
        out,
        args.arch,
        args.shape,
        vocab=Path(args.vocab) if args.vocab else None,
        ctx=args.ctx,
        parts=args.split,
        sparse=args.sparse,
        force=args.force,
        llama_server=args.llama_server,
        progress=None if args.sparse else progress,
    )
    seconds = progress.finish()
    size = sum(p.stat().st_size for p in written)
    kind = "sparse" if args.sparse else "dense"
    print(
        f"Wrote synthetic {models.describe(args.arch, args.shape)} ({kind}, "
        f"{size / 2**30:.2f} GiB) in {seconds:.1f} s:"
    )
    for p in written:
        print(f"  {p}")
    return 0


def cmd_gpus(args: argparse.Namespace) -> int:
    inventory = hardware.inventory(args.hardware)
    if args.json:
        print(json.dumps(hardware.inventory_json(inventory), indent=2))
    else:
        render.print_inventory(inventory, hardware.findings(inventory))
    return 0


def cmd_hardware_save(args: argparse.Namespace) -> int:
    path, n = hardware.save_this_box(args.name, force=args.force)
    print(
        f"Saved this box ({n} card{'s' if n != 1 else ''}) as hardware profile "
        f"'{args.name}': {path}"
    )
    return 0


def cmd_hardware_list(args: argparse.Namespace) -> int:
    for name, path, origin in hardware.profiles():
        print(f"{name:<28} {origin:<8} {path}")
    return 0


def _one(values: tuple[int, ...] | None, option: str) -> int | None:
    """The value of ``--users``/``--ctx`` for one model."""
    if not values:
        return None
    if len(values) > 1:
        raise LauncherError(f"{option} has {len(values)} values for one model; give one.")
    return values[0]


def _plan_request(args: argparse.Namespace, model: str) -> planning.PlanRequest:
    """The plan options (``parser._plan_options``) as a request."""
    return planning.PlanRequest(
        model=Path(model),
        hardware=args.hardware,
        users=_one(args.users, "--users"),
        ctx=_one(args.ctx, "--ctx"),
        kv_type=args.kv_type,
        goal=args.goal,
        layout=args.layout,
        cards=parse_card_list(args.cards),
        exclude_cards=parse_card_list(args.exclude_cards),
        mmproj=Path(args.mmproj) if args.mmproj else None,
        llama_server=args.llama_server,
        router_port=args.port or DEFAULT_ROUTER_PORT,
        flash_attn=args.flash_attn != "off",
        tensor_split=args.tensor_split,
        measure=getattr(args, "measure", False),
        rpc_host=getattr(args, "rpc_host", None),
    )


def _box_request(args: argparse.Namespace, paths: list[str]) -> planning.BoxRequest:
    """The plan options for several models as a box request."""
    if args.mmproj:
        raise LauncherError("--mmproj applies to one model; give it in a launch profile.")
    if args.tensor_split:
        raise LauncherError(
            "--tensor-split applies to one model; give each group its tensor_split in a "
            "launch profile."
        )
    return planning.BoxRequest(
        models=tuple(Path(m) for m in paths),
        users=args.users or (),
        ctx=args.ctx or (),
        hardware=args.hardware,
        kv_type=args.kv_type,
        goal=args.goal,
        layout=args.layout,
        cards=parse_card_list(args.cards),
        exclude_cards=parse_card_list(args.exclude_cards),
        llama_server=args.llama_server,
        router_port=args.port or DEFAULT_ROUTER_PORT,
        flash_attn=args.flash_attn != "off",
    )


def cmd_plan(args: argparse.Namespace) -> int:
    if not args.models:
        raise models.no_model_given("plan")
    if len(args.models) > 1:
        if args.verify:
            raise LauncherError("--verify checks one model; plan it alone with --verify.")
        box = planning.plan_models(_box_request(args, args.models))
        if args.json:
            print(json.dumps(box.to_json(), indent=2))
        else:
            render.print_box_plan(box)
        best = box.result.best
        return 0 if best is not None and not best.missing else 3
    outcome = planning.plan_model(
        _plan_request(args, args.models[0]), say=lambda line: print(line, file=sys.stderr)
    )
    if args.json:
        print(json.dumps(outcome.to_json(), indent=2))
    else:
        render.print_plan(outcome)
    if args.verify:
        render.print_verification(planning.verify(outcome, args.llama_server))
        return 0
    return 0 if outcome.plan.best is not None else 3


def cmd_up(args: argparse.Namespace) -> int:
    if not args.targets:
        raise models.no_model_given("up")
    prepared = fleet.prepare_up(
        fleet.UpRequest(
            target=args.targets[0],
            more_models=tuple(args.targets[1:]),
            layout=args.layout,
            cards=parse_card_list(args.cards),
            users=args.users or (),
            ctx=args.ctx or (),
            kv_type=args.kv_type,
            goal=args.goal,
            port=args.port,
            name=args.name,
            replan=args.replan,
            llama_server=args.llama_server,
            tensor_split=args.tensor_split,
            flash_attn=None if args.flash_attn is None else args.flash_attn == "on",
        )
    )
    print(f"Fleet {prepared.spec.name}:")
    for line in prepared.lines:
        print(f"  {line}")
    sys.stdout.flush()
    return fleet.start(prepared.spec, detach=args.detach, say=say)


def cmd_net_test(args: argparse.Namespace) -> int:
    result = remote.net_test(args.host, args.hardware, say)
    f = result.figures
    print(
        f"Link to {result.host.name} ({result.host.ssh}) through ssh: {f.round_trip_ms:.2f} ms "
        f"round trip, {f.mbit_s:.0f} Mbit/s ({f.sent_bytes >> 20} MiB in {f.seconds:.2f} s): "
        f'link = "{result.link}".'
    )
    if result.written is not None:
        print(f'Wrote link = "{result.link}" for host {result.host.name} into {result.written}.')
    elif result.note:
        print(f"Note: {result.note}.")
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    return agent.serve(sys.stdin, sys.stdout)


def cmd_route(args: argparse.Namespace) -> int:
    return route.serve(
        route.RouteRequest(
            tuple(args.urls),
            args.host,
            args.port,
            args.api_key_env,
            args.upstream_key_env,
            args.max_queue,
            args.queue_timeout,
            args.affinity,
        ),
        say,
    )


def cmd_down(args: argparse.Namespace) -> int:
    stopped = fleet.stop(args.fleet, say)
    print(f"Fleet {stopped} stopped.")
    return 0


def cmd_group(args: argparse.Namespace) -> int:
    state = fleet.group_action(args.fleet, args.group, args.action, say)
    print(f"Group {args.group} of fleet {args.fleet} is {state}.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    fleets = fleet.fleets()
    if args.json:
        print(json.dumps({"fleets": [f.to_json() for f in fleets]}, indent=2))
    else:
        render.print_status(fleets)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    remote = fleet.remote_log(args.worker, args.follow)
    if remote is not None:  # a worker on another box, over ssh
        for text in remote:
            sys.stdout.write(text)
            sys.stdout.flush()
        return 0
    path = fleet.log_path(args.worker)
    with path.open("rb") as f:
        sys.stdout.write(f.read().decode(errors="replace"))
        sys.stdout.flush()
        while args.follow:
            line = f.readline()
            if line:
                sys.stdout.write(line.decode(errors="replace"))
                sys.stdout.flush()
            else:
                time.sleep(0.25)
    return 0


def cmd_profile_save(args: argparse.Namespace) -> int:
    if len(args.model) > 1:
        path, spec = fleet.save_box_profile(
            args.name, _box_request(args, args.model), force=args.force
        )
    else:
        path, spec = fleet.save_profile(
            args.name, _plan_request(args, args.model[0]), force=args.force
        )
    groups = ", ".join(f"{g.name} ({g.layout})" for g in spec.groups)
    print(f"Saved launch profile '{args.name}', {groups}: {path}")
    return 0


def cmd_profile_export(args: argparse.Namespace) -> int:
    text = export.export(args.name, args.format)
    if args.output:
        path = export.write_export(text, Path(args.output), force=args.force)
        print(f"Wrote {args.format} config of profile {args.name}: {path}")
    else:
        print(text, end="")
    return 0


def cmd_profile_list(args: argparse.Namespace) -> int:
    for kind, items in (("launch", fleet.profiles()), ("hardware", hardware.profiles())):
        for name, path, origin in items:
            print(f"{kind:<9}{name:<28} {origin:<8} {path}")
    return 0


def cmd_profile_show(args: argparse.Namespace) -> int:
    path, text = fleet.profile_text(args.name)
    print(f"# {path}")
    print(text, end="")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    spec = LoadSpec(
        tuple(args.url),
        args.concurrency,
        args.requests,
        args.tokens,
        args.prompt_tokens,
        args.api,
        bench.api_key(args.api_key_env),
        args.model,
    )
    if not args.json:
        say(
            f"{spec.requests} requests, {spec.concurrency} at a time, {spec.max_tokens} tokens "
            f"each, against {', '.join(spec.urls)} ({spec.api})"
        )
    result = bench.load(spec)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        render.print_load(result)
    if result.errors and result.errors == result.requests:
        raise LauncherError(
            f"All {result.requests} requests failed ({result.error_samples[0]}); "
            "check that the server is running at that URL.",
            exit_code=1,
        )
    return 0


def cmd_systemd(args: argparse.Namespace) -> int:
    unit = fleet.write_systemd_unit(args.profile, force=args.force)
    print(f"Wrote {unit}")
    print(
        f"Enable it with: systemctl --user daemon-reload && systemctl --user enable --now "
        f"{unit.name}"
    )
    print("To keep it running after you log out: loginctl enable-linger $USER")
    return 0


def _numbers(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise LauncherError(f"{what} must be numbers separated by commas, e.g. 1,8,32.") from err


def _bench_one(args: argparse.Namespace, group: str | None) -> bench.BenchOutcome:
    """One bench: a model, or one group of a launch profile."""
    options = bench.BenchOptions(
        target=args.target,
        layouts=tuple(k.strip() for k in (args.layouts or "").split(",") if k.strip()),
        users=_numbers(args.users, "--users"),
        tokens=args.tokens,
        prompt_tokens=args.prompt_tokens,
        ctx=args.ctx,
        requests_per_user=args.requests_per_user,
        staggered=args.staggered,
        rounds=args.rounds,
        keep_busy=args.keep_busy,
        llama_server=args.llama_server,
        group=group,
    )
    runner, backend = bench.prepare(options, say)
    request = runner.request
    say(
        f"Bench of {runner.spec.name}{f' (group {group})' if group else ''}: layouts "
        f"{', '.join(request.layouts)}; users "
        f"{', '.join(map(str, request.users))}; {request.tokens} tokens after "
        f"{request.prompt_tokens}-token prompts"
        + ("; users start staggered" if request.staggered else "")
        + (f"; {request.rounds} rounds" if request.rounds > 1 else "")
    )
    if request.staggered:
        say(
            "Staggered load: kept apart from the lockstep results that plan uses; the aggregate "
            "counts the requests sent while every user was busy"
        )
    outcome = bench.run(runner, backend)
    if outcome.runs:
        say(f"Results kept in {bench.results_path()}")
    if outcome.interrupted:
        say(f"Interrupted: {len(outcome.runs)} finished row(s) kept.")
    return outcome


def cmd_bench(args: argparse.Namespace) -> int:
    if not args.target:
        raise models.no_model_given("bench")
    runs: list[results.BenchRun] = []
    checks: list[results.HoldoutCheck] = []
    interrupted = False
    for group in bench.groups_to_bench(args.target, args.group):
        outcome = _bench_one(args, group)
        runs += outcome.runs
        checks += outcome.checks
        if outcome.interrupted:
            interrupted = True
            break
    outcome = bench.BenchOutcome(runs, interrupted, checks)
    data = outcome.to_json()
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=2) + "\n")
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(report.table(runs))
        if rounds := report.spread(runs):
            print("\nRounds (plan uses their mean):")
            for line in rounds:
                print(f"  {line}")
        if len({r.users for r in runs}) > 1:
            print()
            print(report.plot(results.averaged(runs)))
        if outcome.checks:
            print("\nCalibration check (each inner point predicted from the others):")
            for c in outcome.checks:
                print(f"  {c.line()}")
    return 130 if outcome.interrupted else 0


def cmd_tui(args: argparse.Namespace) -> int:
    # deferred: Textual loads only when the TUI opens, not for every command
    from launcher.tui.app import LauncherApp

    model = getattr(args, "model", None)
    LauncherApp(model=Path(model).expanduser() if model else None).run()
    return 0


def cmd_main(args: argparse.Namespace) -> int:
    """No command: the TUI on a terminal, else (piped, scripted) the printed overview."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        return cmd_tui(args)
    return cmd_overview(args)


def cmd_overview(args: argparse.Namespace) -> int:
    """Print this box (host, cards, findings) and the llama-server that would run."""
    box = hardware.inventory()
    render.print_inventory(box, hardware.findings(box))
    try:
        found = server.facts(args.llama_server)
        caps = found.capabilities
        print(
            f"\nllama-server: {found.binary.path} (from {found.binary.origin}), version "
            f"{caps.version}{f' commit {caps.commit}' if caps.commit else ''}, "
            f"split modes {', '.join(caps.split_modes) or 'none'}"
        )
    except LauncherError as err:
        print(f"\nllama-server: {err}")
    return 0
