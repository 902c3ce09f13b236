"""A second box on this one, for measuring what crosses a network: two network namespaces
joined by a veth pair (traffic only between them), the rate limited with ``tc``'s ``tbf``
qdisc, and the delay added by an asyncio TCP proxy (``delay_proxy``; kernels without
``netem`` cannot add it). Used by ``launcher.benchmarks.network`` and its test.

Needs root (or CAP_NET_ADMIN) and iproute2; ``Lab.create`` raises one sentence where
namespaces are refused. Addresses are 10.213.0.1 and .2 inside the lab's own namespaces only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from launcher.errors import LauncherError

ADDRESS_A = "10.213.0.1"
ADDRESS_B = "10.213.0.2"
SLEEP_MIN_S = 50e-6  # a chunk due sooner than this goes now (a thread's sleep costs about that)


def _run(*argv: str) -> None:
    """A setup command (ip, tc); one sentence with what it said when it fails."""
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LauncherError(f"'{' '.join(argv)}' failed: {done.stderr.strip()}")


def _ip(*args: str) -> None:
    _run("ip", *args)


def _env() -> dict[str, str]:
    """This environment, with this package importable by a program run in a namespace."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


@dataclass
class Lab:
    """Namespaces ``a`` (the main box) and ``b`` (the second box), joined by a veth pair
    limited to ``gbit`` each way."""

    a: str
    b: str
    gbit: float

    @classmethod
    def create(cls, gbit: float, tag: str | None = None) -> Lab:
        if shutil.which("ip") is None or shutil.which("tc") is None:
            raise LauncherError("The network lab needs iproute2 (ip and tc).")
        tag = tag or str(os.getpid())
        lab = cls(f"lla-{tag}", f"llb-{tag}", gbit)
        try:
            _ip("netns", "add", lab.a)
        except LauncherError as err:
            raise LauncherError(f"Network namespaces are refused here ({err}).") from err
        try:
            _ip("netns", "add", lab.b)
            peer = ["peer", "name", f"vb{tag}", "netns", lab.b]
            _ip("link", "add", f"va{tag}", "netns", lab.a, "type", "veth", *peer)
            for ns, dev, addr in ((lab.a, f"va{tag}", ADDRESS_A), (lab.b, f"vb{tag}", ADDRESS_B)):
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                lab.limit(ns, dev, gbit)
        except LauncherError:
            lab.remove()
            raise
        return lab

    @staticmethod
    def limit(ns: str, dev: str, gbit: float) -> None:
        """``tbf`` at ``gbit`` on ``dev``: a burst of a few packets at line rate, a queue of
        a few ms."""
        rate = f"{gbit * 1000:.0f}mbit"
        burst = max(int(gbit * 1e9 / 8 / 1000), 16 * 1514)  # about 1 ms of traffic
        tbf = ["tbf", "rate", rate, "burst", str(burst), "latency", "20ms"]
        _ip("netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", *tbf)

    def proxy(self, listen_port: int, target_port: int, delay_ms: float) -> None:
        """A delay proxy in ``a`` on 127.0.0.1:``listen_port`` to ``b``'s ``target_port``,
        each direction held ``delay_ms / 2``; returns once it listens."""
        argv = tool_argv("proxy", str(listen_port), ADDRESS_B, str(target_port), str(delay_ms))
        self.start(self.a, argv, wait_for=b"listening")

    def start(self, ns: str, argv: Sequence[str], wait_for: bytes | None = None) -> None:
        """A long-running process in ``ns``, stopped by ``remove``; with ``wait_for``, once
        its first line has it."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdout=subprocess.PIPE if wait_for else subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_env(),
        )
        if wait_for is not None:
            assert proc.stdout is not None
            if wait_for not in proc.stdout.readline():
                proc.kill()
                raise LauncherError(f"{argv[0]} did not start in the lab.")

    def tool(self, ns: str, *args: str, timeout_s: float = 600) -> dict[str, Any]:
        """One of this module's modes run in ``ns``; what it printed, as JSON."""
        try:
            done = subprocess.run(
                ["ip", "netns", "exec", ns, *tool_argv(*args)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
                env=_env(),
            )
        except subprocess.TimeoutExpired as err:
            raise LauncherError(f"The lab's {args[0]} took over {timeout_s:.0f} s.") from err
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            raise LauncherError(f"The lab's {args[0]} failed: {tail[0]}")
        data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return data

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *_: object) -> None:
        self.remove()

    def remove(self) -> None:
        for ns in (self.a, self.b):
            pids = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def loopback_figures(megabytes: int = 512) -> tuple[float, float]:
    """This box's loopback as a link: (round trip in ms, Gbit/s), for a second box on
    loopback (an rpc-server on this machine's other card)."""
    import socket
    import threading

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def echo() -> None:
            conn, _ = server.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while data := conn.recv(1):
                    conn.sendall(data)

        def sink() -> None:
            conn, _ = server.accept()
            with conn:
                while conn.recv(1 << 20):
                    pass

        thread = threading.Thread(target=echo, daemon=True)
        thread.start()
        rtt = _round_trip_ms("127.0.0.1", port)
        thread.join(5)
        thread = threading.Thread(target=sink, daemon=True)
        thread.start()
        chunk = b"\0" * (1 << 20)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            started = time.perf_counter()
            for _ in range(megabytes):
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
            thread.join(60)  # the sink has read it all
            seconds = time.perf_counter() - started
    return rtt, megabytes * (1 << 20) * 8 / seconds / 1e9


def tool_argv(mode: str, *args: str) -> list[str]:
    """This module run as a program in a namespace: ``mode`` and its arguments."""
    return [sys.executable, "-m", "launcher.run.netlab", mode, *args]


# --- the delay proxy ---------------------------------------------------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk written ``delay_s`` after it arrived, in
    order (a link's one-way delay)."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > SLEEP_MIN_S:
                # the event loop's timers wake in whole milliseconds (epoll): a thread's
                # sleep keeps a LAN's fraction of a millisecond
                await loop.run_in_executor(None, time.sleep, wait)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    sender = asyncio.create_task(send())
    try:
        while True:
            data = await reader.read(1 << 20)
            queue.put_nowait((time.monotonic() + delay_s, data))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()
    finally:
        with contextlib.suppress(OSError):
            writer.close()


async def delay_proxy(listen_port: int, host: str, port: int, delay_ms: float) -> None:
    one_way = delay_ms / 2000

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        for w in (writer, up_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                import socket

                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(_pipe(reader, up_writer, one_way), _pipe(up_reader, writer, one_way))

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


# --- what runs inside a namespace (python -m launcher.run.netlab MODE ...) -----------------


async def _echo(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "0.0.0.0", port)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


def _round_trip_ms(host: str, port: int, n: int = 200) -> float:
    """The median round trip of one byte over a TCP connection to an echo server."""
    import socket
    import statistics

    with socket.create_connection((host, port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            sock.sendall(b"x")
            sock.recv(1)
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _wait_healthy(
    url: str, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 120
) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LauncherError(f"llama-server exited ({proc.returncode}) before it was healthy.")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise LauncherError(f"llama-server was not healthy within {timeout_s:.0f} s.")


def _complete(url: str, tokens: int, stream: bool = False) -> dict[str, float]:
    """One greedy completion of ``tokens`` tokens: its wall time and llama-server's timings."""
    import json
    import urllib.request

    body = {
        "prompt": "The quick brown fox",
        "n_predict": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }
    req = urllib.request.Request(
        f"{url}/completion",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    t = time.perf_counter()
    timings: dict[str, float] = {}
    with urllib.request.urlopen(req, timeout=300) as resp:
        if stream:
            for raw in resp:
                line = raw.decode().strip()
                if line.startswith("data: ") and '"timings"' in line:
                    timings = json.loads(line[6:]).get("timings", {})
        else:
            timings = json.loads(resp.read()).get("timings", {})
    return {"wall_s": time.perf_counter() - t, **timings}


def _decode(argv: list[str], port: int, users: int, tokens: int) -> dict[str, object]:
    """Start llama-server (``argv``) here, run ``users`` completions at once ``tokens`` long
    (after one to warm up), and say the mean time per token each one saw."""
    import concurrent.futures

    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        _complete(url, 8)
        with concurrent.futures.ThreadPoolExecutor(users) as pool:
            runs = list(pool.map(lambda _: _complete(url, tokens), range(users)))
    finally:
        proc.terminate()
        proc.wait()
    per_token = [float(r["predicted_per_token_ms"]) for r in runs]
    return {"ms_per_token": sum(per_token) / len(per_token), "runs": per_token}


def main(args: list[str]) -> None:
    import json

    mode = args[0]
    if mode == "proxy":
        listen, host, target, delay = args[1:5]
        asyncio.run(delay_proxy(int(listen), host, int(target), float(delay)))
    elif mode == "echo":
        asyncio.run(_echo(int(args[1])))
    elif mode == "rtt":
        print(json.dumps({"rtt_ms": _round_trip_ms(args[1], int(args[2]))}), flush=True)
    elif mode == "decode":
        port, users, tokens = int(args[1]), int(args[2]), int(args[3])
        print(json.dumps(_decode(args[4:], port, users, tokens)), flush=True)
    elif mode == "wait":
        _wait_healthy(args[1])
        print(json.dumps({"healthy": True}), flush=True)
    elif mode == "complete":
        url, tokens = args[1], int(args[2])
        print(json.dumps(_complete(url, tokens, stream=True)), flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
