"""``net-test``: round trip and bandwidth to another box, through SSH (the path a fleet's
tunnel takes, encryption included).

Round trip: one byte out and back through ``ssh HOST exec cat``, many times, the median.
Bandwidth: a stream of bytes into ``ssh HOST 'exec cat > /dev/null'``, timed until the far
end has read them all (ssh exits). Nothing is installed or left on the other box.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from launcher.errors import LauncherError
from launcher.run.remote import ssh_base
from launcher.spec.fleet import RemoteHost

CHUNK = 1 << 20


@dataclass(frozen=True)
class LinkFigures:
    round_trip_ms: float
    mbit_s: float
    sent_bytes: int
    seconds: float

    @property
    def gbit(self) -> float:
        return self.mbit_s / 1000


def _ssh(host: RemoteHost, command: str) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            [*ssh_base(host), command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as err:
        raise LauncherError(
            f"Cannot run ssh ({err.strerror}); install the OpenSSH client."
        ) from err


def _failed(proc: subprocess.Popen[bytes], what: str) -> LauncherError:
    proc.kill()
    err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    proc.wait()
    return LauncherError(f"{what} failed{f' ({err.splitlines()[-1]})' if err else ''}.")


def measure(
    host: RemoteHost,
    round_trips: int = 20,
    send_bytes: int = 64 << 20,
    progress: Callable[[str], None] | None = None,
) -> LinkFigures:
    """Round trip and bandwidth to ``host``; one sentence when ssh cannot get there."""
    say = progress or (lambda _: None)
    say(f"Round trips to {host.name} through ssh ({round_trips})...")
    echo = _ssh(host, "exec cat")
    assert echo.stdin is not None and echo.stdout is not None
    times = []
    try:
        for _ in range(round_trips + 1):  # the first one includes the session's start
            start = time.perf_counter()
            echo.stdin.write(b"x")
            echo.stdin.flush()
            if echo.stdout.read(1) != b"x":
                raise _failed(echo, f"The SSH session to {host.ssh}")
            times.append(time.perf_counter() - start)
    except (BrokenPipeError, OSError):
        raise _failed(echo, f"The SSH session to {host.ssh}") from None
    finally:
        if echo.poll() is None:
            echo.stdin.close()
            echo.wait(timeout=10)
    rtt = statistics.median(times[1:]) * 1000
    setup = max(times[0] - statistics.median(times[1:]), 0.0)  # starting a session
    say(f"Sending {send_bytes >> 20} MiB to {host.name} through ssh...")
    sink = _ssh(host, "exec cat > /dev/null")
    assert sink.stdin is not None
    block = os.urandom(CHUNK)  # random: ssh compression (if on) gains nothing
    start = time.perf_counter()
    try:
        sent = 0
        while sent < send_bytes:
            sink.stdin.write(block)
            sent += len(block)
        sink.stdin.close()
    except (BrokenPipeError, OSError):
        raise _failed(sink, f"Sending to {host.ssh}") from None
    if sink.wait(timeout=600) != 0:
        raise _failed(sink, f"Sending to {host.ssh}")
    seconds = max(time.perf_counter() - start - setup, 1e-6)
    return LinkFigures(rtt, sent * 8 / seconds / 1e6, sent, seconds)
