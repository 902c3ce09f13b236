"""Fleets in the background: start a supervisor detached, and stop one from any terminal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from launcher.errors import LauncherError
from launcher.run import fleet_state

Say = Callable[[str], None]
START_TIMEOUT_S = 900.0
STOP_TIMEOUT_S = 30.0


def _running(name: str) -> fleet_state.FleetState | None:
    state = fleet_state.read_state(fleet_state.state_path(name))
    if state and fleet_state.pid_alive(state.supervisor_pid):
        return state
    return None


def _tail(path: os.PathLike[str] | str, n: int = 12) -> str:
    try:
        with open(path, "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(f"    {line}" for line in lines[-n:])


def start_detached(fleet: str, argv: list[str], say: Say) -> int:
    """Run ``llama-launcher ARGV`` as a daemon supervising ``fleet``; wait until it is up.

    Returns 0 when every worker is healthy, 1 when the fleet failed to start (with the end of
    the supervisor's log).
    """
    existing = _running(fleet)
    if existing:
        raise LauncherError(
            f"Fleet '{fleet}' is already running (supervisor pid "
            f"{existing.supervisor_pid}); stop it with 'llama-launcher down "
            f"{fleet}' first."
        )
    log_dir = fleet_state.logs_dir(fleet)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "supervisor.log"
    fleet_state.remove_state(fleet)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "launcher", *argv],
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
            for w in state.workers:
                if shown.get(w.id) != w.state:
                    shown[w.id] = w.state
                    say(f"{w.id}: {w.state}{f' ({w.message})' if w.message else ''}")
            states = {w.state for w in state.workers}
            if states == {"healthy"}:
                say(
                    f"Fleet {fleet} is up; 'llama-launcher status' shows it, "
                    f"'llama-launcher down {fleet}' stops it."
                )
                return 0
        if code is not None:
            say(f"Fleet {fleet} did not start; the end of {log_path}:\n{_tail(log_path)}")
            return 1
        time.sleep(0.25)
    say(f"Fleet {fleet} was not up after {START_TIMEOUT_S:.0f} s; stopping it.")
    stop_fleet(fleet, say)
    return 1


def stop_fleet(name: str | None, say: Say) -> str:
    """Ask a fleet's supervisor to stop (SIGTERM, then SIGKILL); returns the fleet's name."""
    fleets = fleet_state.list_fleets()
    running = [f for f in fleets if fleet_state.pid_alive(f.supervisor_pid)]
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
    if not fleet_state.pid_alive(pid):
        fleet_state.remove_state(name)
        say(f"Fleet {name} was not running (its supervisor had gone); cleared its state.")
        return name
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while fleet_state.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if fleet_state.pid_alive(pid):
        say(
            f"Supervisor {pid} did not stop in {STOP_TIMEOUT_S:.0f} s; killing it (its workers "
            "die with it)."
        )
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        fleet_state.remove_state(name)
    return name
