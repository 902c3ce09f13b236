"""One short llama-server run that measures decode: start it, let ``users`` clients each ask
for ``tokens`` tokens at once, read llama-server's own timings, stop it.

The building block of ``plan --measure`` (``app/measure.py``). The server is started in its
own process group and always stopped (and waited for) before this returns, so nothing is left
behind, whatever happens to the requests.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import LauncherError
from launcher.llamacpp.args import ServerArgs
from launcher.run.supervisor import free_port

HOST = "127.0.0.1"


@dataclass(frozen=True)
class DecodeRate:
    """What ``users`` streams of ``tokens`` tokens measured."""

    users: int
    tokens: int  # answer tokens over all users
    aggregate_tok_s: float  # all tokens over the slowest stream's decode time
    single_tok_s: float  # the slowest stream's own rate


def _request(port: int, path: str, body: dict[str, object] | None, timeout: float) -> object:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        if body is None:
            conn.request("GET", path)
        else:
            conn.request(
                "POST", path, json.dumps(body), headers={"Content-Type": "application/json"}
            )
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise OSError(f"{path} answered {response.status}")
        return json.loads(data) if data else None
    finally:
        conn.close()


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise LauncherError(
                "llama-server stopped while loading the measuring model"
                + (f" ({tail[0].strip()})" if tail else "")
                + f"; its log is {log}."
            )
        try:
            _request(port, "/health", None, 2.0)
            return
        except (OSError, ValueError):
            time.sleep(0.2)
    raise LauncherError(
        f"llama-server did not load the measuring model within {timeout_s:.0f} s; its log is {log}."
    )


def _completion(port: int, tokens: int, timeout: float) -> tuple[int, float]:
    body = {
        "prompt": "Count slowly:",
        "n_predict": tokens,
        "ignore_eos": True,
        "temperature": 0,
        "cache_prompt": False,
    }
    answer = _request(port, "/completion", body, timeout)
    assert isinstance(answer, dict)
    timings = answer["timings"]
    return int(timings["predicted_n"]), float(timings["predicted_ms"])


def measure_decode(
    args: ServerArgs,
    env: dict[str, str],
    batches: Sequence[int],
    tokens: int,
    log: Path,
    load_timeout_s: float = 120.0,
    on_loaded: Callable[[int], None] | None = None,
) -> list[DecodeRate]:
    """Start a llama-server with ``args`` (on a free port of 127.0.0.1) and measure decode at
    each number of users in ``batches``; the server always stops before this returns.
    ``on_loaded(pid)`` runs once the model is loaded (to read memory, say)."""
    port = free_port(set(), 18700)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        try:
            proc = subprocess.Popen(
                args.replace(host=HOST, port=port).argv(),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,
            )
        except OSError as err:
            raise LauncherError(
                f"Cannot start {args.binary} ({err.strerror}); install it with "
                "'llama-launcher install-server' or give --llama-server PATH."
            ) from err
    try:
        _wait_healthy(proc, port, load_timeout_s, log)
        _completion(port, 4, 60.0)  # warm-up: first-call allocations
        if on_loaded is not None:
            on_loaded(proc.pid)
        rates = []
        for users in batches:
            with concurrent.futures.ThreadPoolExecutor(users) as pool:
                done = list(pool.map(lambda _: _completion(port, tokens, 300.0), range(users)))
            slowest_ms = max(ms for _, ms in done) or 1.0
            total = sum(n for n, _ in done)
            rates.append(
                DecodeRate(
                    users,
                    total,
                    total / slowest_ms * 1000.0,
                    min(n / ms * 1000.0 for n, ms in done if ms > 0),
                )
            )
        return rates
    except OSError as err:
        raise LauncherError(
            f"The measuring llama-server failed ({err}); its log is {log}."
        ) from err
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
