"""The state of running fleets, kept under the state folder so any terminal can see them.

Each fleet's supervisor writes ``<state>/fleets/NAME.json`` (atomically, on every change and
once a second with fresh metrics) and removes it when it stops. ``status``, ``logs`` and
``down`` read these files; a file whose supervisor is gone is stale and reported as stopped.
A process is recorded with its start time (psutil's ``create_time``): a PID that the system
has given to another process since is not the fleet's, so it is never signalled nor shown
as running. State files and folders are the owner's only (0600 / 0700).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import psutil

from launcher import paths

STATES = ("starting", "healthy", "restarting", "failed", "stopped")


@dataclass
class WorkerState:
    """One worker as ``status --json`` shows it."""

    id: str  # FLEET/wN
    pid: int | None
    port: int
    url: str
    cards: list[int]
    state: str = "starting"
    restarts: int = 0
    tok_s: float = 0.0
    slots_busy: int = 0
    slots_total: int = 0
    vram_bytes: int | None = None  # memory NVML lists for this pid, summed over cards
    nvml_cards: list[int] = field(default_factory=list)  # cards NVML sees the pid on
    log: str = ""
    message: str = ""  # why it failed or is restarting
    group: str = ""  # the fleet spec's group this worker serves
    argv: list[str] = field(default_factory=list)  # the command line it was started with
    started: float | None = None  # the process's start time (psutil), with pid its identity


GROUP_STATES = ("running", "loading", "unloaded", "failed", "down")  # down: another box


@dataclass
class GroupState:
    """One model group as ``status --json`` shows it."""

    name: str
    kind: str = "generation"
    state: str = "loading"  # GROUP_STATES
    on_demand: bool = False
    aliases: list[str] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)  # FLEET/wN
    ttl_s: float | None = None  # on-demand groups unload after this long unused
    idle_s: float | None = None  # since its last request, while loaded on demand
    message: str = ""  # why it failed, or what it evicted
    tok_s: float = 0.0  # its workers' decode tokens/s, summed
    requests: int = 0  # requests for it through the router (by name, default or rule)
    queued: int = 0  # waiting for a free slot now
    overflowed: int = 0  # of its requests, served by its overflow group
    rule_routed: int = 0  # of its requests, sent to another group by its size rule


@dataclass
class FleetState:
    name: str
    supervisor_pid: int
    router: dict[str, Any] | None
    workers: list[WorkerState] = field(default_factory=list)
    groups: list[GroupState] = field(default_factory=list)
    profile: str | None = None
    model: str = ""
    layout: str = ""
    started_at: float = 0.0
    supervisor_started: float | None = None  # the supervisor's start time (psutil)
    drain_s: float = 10.0  # how long a stop lets requests in flight finish
    # the cards of the fleet's other boxes, as their agents last sent them: each a card's
    # name, total memory and latest sample (gpu.card.GpuSample's fields), and "host"
    remote_cards: list[dict[str, Any]] = field(default_factory=list)
    # the fleet's other boxes as its spec has them (spec.fleet.RemoteHost's fields), for
    # 'logs FLEET/HOST:wN'
    remote_hosts: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def fleets_dir() -> Path:
    return paths.state_dir() / "fleets"


def logs_dir(fleet: str) -> Path:
    return paths.state_dir() / "logs" / fleet


def state_path(fleet: str) -> Path:
    return fleets_dir() / f"{fleet}.json"


def private_dir(path: Path) -> Path:
    """``path`` made if missing, the owner's only (0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):
        path.chmod(0o700)
    return path


def write_state(state: FleetState) -> None:
    """Write the state file atomically (0600); raises OSError (a full or read-only disk)."""
    path = state_path(state.name)
    private_dir(path.parent)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(state.to_json(), indent=1))
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def remove_state(fleet: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        state_path(fleet).unlink()


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours still answers kill(0): look at its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def process_started(pid: int | None) -> float | None:
    """When process ``pid`` started (None when there is no such process)."""
    if not pid:
        return None
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def same_process(pid: int | None, started: float | None) -> bool:
    """Whether ``pid`` is alive and is still the process that started at ``started`` (a
    record without a start time is trusted on its PID alone)."""
    if not pid_alive(pid):
        return False
    if started is None:
        return True
    now = process_started(pid)
    return now is not None and abs(now - started) < 1.0


def supervisor_alive(state: FleetState) -> bool:
    """Whether the fleet's supervisor still runs (its PID, with its start time)."""
    return same_process(state.supervisor_pid, state.supervisor_started)


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` less keys ``cls`` does not have (a state file from a newer version)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def read_state(path: Path) -> FleetState | None:
    try:
        data = json.loads(path.read_text())
        workers = [WorkerState(**_known(WorkerState, w)) for w in data.pop("workers", [])]
        groups = [GroupState(**_known(GroupState, g)) for g in data.pop("groups", [])]
        return FleetState(workers=workers, groups=groups, **_known(FleetState, data))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def list_fleets() -> list[FleetState]:
    """Every fleet with a state file; stale ones (supervisor gone) come back as stopped."""
    out = []
    folder = fleets_dir()
    if not folder.is_dir():
        return []
    for path in sorted(folder.glob("*.json")):
        state = read_state(path)
        if state is None:
            continue
        if not supervisor_alive(state):
            for w in state.workers:
                w.state = "stopped"
                w.tok_s = 0.0
                w.slots_busy = 0
            for g in state.groups:
                g.state = "unloaded"
        out.append(state)
    return out


# --- requests to a running supervisor (``group load|unload``): files it reads every poll ---


def control_dir(fleet: str) -> Path:
    return paths.state_dir() / "control" / fleet


def post_request(fleet: str, action: str, group: str) -> None:
    """Leave ``action`` (load, unload) on ``group`` for the fleet's supervisor."""
    folder = private_dir(control_dir(fleet))
    path = folder / f"{time.time_ns()}-{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"action": action, "group": group}))
    tmp.replace(path)


def take_requests(fleet: str) -> list[tuple[str, str]]:
    """The requests left for this fleet, oldest first, removed as they are read."""
    folder = control_dir(fleet)
    out: list[tuple[str, str]] = []
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            out.append((str(data["action"]), str(data["group"])))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        with contextlib.suppress(OSError):
            path.unlink()
    return out
