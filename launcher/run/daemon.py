"""Fleets in the background: start a supervisor detached, stop one or restart one of its
workers from any terminal.

A detached fleet is planned once in the foreground; its spec is written to
``<state>/specs/NAME.json`` and the daemon (``python -m launcher.run.daemon SPEC``) runs
exactly that spec.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from launcher import paths
from launcher.errors import LauncherError
from launcher.run import fleet_state
from launcher.run.supervisor import Supervisor, run_supervisor
from launcher.spec.fleet import FleetSpec

Say = Callable[[str], None]
START_TIMEOUT_S = 900.0
LOG_KEEP_BYTES = 10 << 20  # the supervisor's log is rotated when a fleet starts past this
STOP_TIMEOUT_S = 20.0  # beyond the fleet's drain: the router's close and the workers' grace


def _running(name: str) -> fleet_state.FleetState | None:
    state = fleet_state.read_state(fleet_state.state_path(name))
    if state and fleet_state.supervisor_alive(state):
        return state
    return None


def _tail(path: os.PathLike[str] | str, start: int = 0, n: int = 12) -> str:
    """The last ``n`` lines of ``path`` written after byte ``start`` (this run's, not the
    earlier runs' the log also holds)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(f"    {line}" for line in lines[-n:])


def spec_path(fleet: str) -> Path:
    """Where a detached fleet's spec is handed to its daemon."""
    return paths.state_dir() / "specs" / f"{fleet}.json"


def start_detached(spec: FleetSpec, say: Say) -> int:
    """Run ``spec`` in a background supervisor; wait until every worker of the groups that
    are not on demand is healthy and the router listens.

    Returns 0 when they are, 1 when the fleet failed to start (with the end of
    the supervisor's log).
    """
    fleet = spec.name
    existing = _running(fleet)
    if existing:
        raise LauncherError(
            f"Fleet '{fleet}' is already running (supervisor pid "
            f"{existing.supervisor_pid}); stop it with 'llama-launcher down "
            f"{fleet}' first."
        )
    log_path = fleet_state.logs_dir(fleet) / "supervisor.log"
    handed = spec_path(fleet)
    try:
        fleet_state.private_dir(log_path.parent)
        if log_path.exists() and log_path.stat().st_size > LOG_KEEP_BYTES:  # one older kept
            log_path.replace(log_path.with_suffix(".log.1"))
        fleet_state.remove_state(fleet)
        fleet_state.private_dir(handed.parent)
        handed.write_text(json.dumps(spec.to_json(), indent=1))
        handed.chmod(0o600)  # remote members' URLs; never keys (those stay in the environment)
        log = open(log_path, "ab")  # noqa: SIM115 - closed below, once the daemon has it
    except OSError as err:
        raise LauncherError(
            f"Cannot write the fleet's files under {paths.state_dir()} ({err.strerror}); "
            f"make it writable, free space, or set {paths.HOME_ENV} to another folder."
        ) from err
    with log:
        start = log.tell()
        proc = subprocess.Popen(
            [sys.executable, "-m", "launcher.run.daemon", str(handed)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    say(
        f"Supervisor of fleet {fleet} started in the background (pid {proc.pid}); its log: "
        f"{log_path}"
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    shown: dict[str, str] = {}
    while time.monotonic() < deadline:
        code = proc.poll()
        state = fleet_state.read_state(fleet_state.state_path(fleet))
        if state is not None:
            resident = (
                {w for g in state.groups if not g.on_demand for w in g.workers}
                if state.groups
                else {w.id for w in state.workers}
            )
            for w in state.workers:
                if w.id in resident and shown.get(w.id) != w.state:
                    shown[w.id] = w.state
                    say(f"{w.id}: {w.state}{f' ({w.message})' if w.message else ''}")
            states = {w.state for w in state.workers if w.id in resident}
            serving = state.router is not None or not spec.router.enabled
            # groups on another box: started there (or marked down) before we say "up"
            remote = [g for g in state.groups if not g.workers and not g.on_demand]
            for g in remote:
                if g.state != "loading" and shown.get(g.name) != g.state:
                    shown[g.name] = g.state
                    say(f"{g.name}: {g.state}{f' ({g.message})' if g.message else ''}")
            settled = all(g.state != "loading" for g in remote)
            # every group not on demand healthy (all on demand: none to wait for), and the
            # router listening, before we say "up"
            if states <= {"healthy"} and serving and settled:
                where = f" on {state.router['url']}" if state.router else ""
                say(
                    f"Fleet {fleet} is up{where}; 'llama-launcher status' shows it, "
                    f"'llama-launcher down {fleet}' stops it."
                )
                return 0
        if code is not None:
            say(f"Fleet {fleet} did not start; the end of {log_path}:\n{_tail(log_path, start)}")
            return 1
        time.sleep(0.25)
    say(f"Fleet {fleet} was not up after {START_TIMEOUT_S:.0f} s; stopping it.")
    stop_fleet(fleet, say)
    return 1


def stop_fleet(name: str | None, say: Say) -> str:
    """Ask a fleet's supervisor to stop (SIGTERM, then SIGKILL); returns the fleet's name."""
    fleets = fleet_state.list_fleets()
    running = [f for f in fleets if fleet_state.supervisor_alive(f)]
    if name is None:
        if len(running) == 1:
            name = running[0].name
        elif not running:
            for stale in fleets:
                fleet_state.remove_state(stale.name)
            raise LauncherError("No fleet is running.")
        else:
            raise LauncherError(
                "Several fleets are running: "
                f"{', '.join(f.name for f in running)}; name the one to stop."
            )
    state = next((f for f in fleets if f.name == name), None)
    if state is None:
        names = ", ".join(f.name for f in running) or "none"
        raise LauncherError(f"No fleet named '{name}' is running (running: {names}).")
    pid = state.supervisor_pid
    if not fleet_state.supervisor_alive(state):
        fleet_state.remove_state(name)
        say(f"Fleet {name} was not running (its supervisor had gone); cleared its state.")
        return name
    os.kill(pid, signal.SIGTERM)
    # the drain, the router's close, the workers' grace, and a margin
    timeout = state.drain_s + STOP_TIMEOUT_S
    if state.drain_s > 1:
        say(f"Stopping fleet {name}: requests in flight have up to {state.drain_s:g} s to finish.")
    deadline = time.monotonic() + timeout
    while fleet_state.supervisor_alive(state) and time.monotonic() < deadline:
        time.sleep(0.1)
    if fleet_state.supervisor_alive(state):
        say(
            f"Supervisor {pid} did not stop in {timeout:.0f} s; killing it (its workers "
            "die with it)."
        )
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        fleet_state.remove_state(name)
    return name


def restart_worker(worker_id: str) -> None:
    """Stop worker ``FLEET/wN``; its supervisor starts it again (it counts as a restart)."""
    fleet, _, _ = worker_id.partition("/")
    state = fleet_state.read_state(fleet_state.state_path(fleet))
    worker = next((w for w in state.workers if w.id == worker_id), None) if state else None
    if (
        worker is None
        or worker.pid is None
        or not fleet_state.same_process(worker.pid, worker.started)
    ):
        raise LauncherError(f"No running worker {worker_id}; 'llama-launcher status' lists them.")
    with contextlib.suppress(ProcessLookupError):
        os.kill(worker.pid, signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    """The detached supervisor: run the fleet spec in the file named by the first argument."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        spec = FleetSpec.from_json(json.loads(Path(args[0]).read_text()))
        own_log = fleet_state.logs_dir(spec.name) / "supervisor.log"
        return run_supervisor(Supervisor(spec, own_log=own_log))
    except LauncherError as err:
        print(f"llama-launcher: {err}", flush=True)
        return err.exit_code
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        print(
            f"llama-launcher: the fleet spec could not be read ({err}); start the fleet "
            "again with 'llama-launcher up'.",
            flush=True,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
