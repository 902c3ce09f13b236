"""llama.cpp's rpc-server: this box's devices lent to a llama-server on another box (layout
``pooled-rpc``, docs/remote.md).

rpc-server has no authentication, so it listens on 127.0.0.1 only; the main box reaches it
through its SSH tunnel. It is started by ``llama-launcher agent`` (the far end of the fleet's
SSH session) and stopped with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from collections import deque
from pathlib import Path

from launcher.errors import LauncherError
from launcher.run.router_host import die_with_parent

READY_TIMEOUT_S = 60.0


def rpc_server_beside(llama_server: str) -> Path:
    """The rpc-server of the same build as ``llama_server``; one sentence when it lacks one."""
    path = Path(llama_server).with_name("rpc-server")
    if path.is_file():
        return path
    legacy = Path(llama_server).with_name("ggml-rpc-server")  # a llama.cpp build tree's name
    if legacy.is_file():
        return legacy
    raise LauncherError(
        f"There is no rpc-server beside {llama_server}; run 'llama-launcher install-server' on "
        "this box (it builds llama.cpp with RPC and adds rpc-server to a build that lacks it)."
    )


class RpcServer:
    """One rpc-server on 127.0.0.1:``port`` lending this box's devices (all, or ``devices``
    as rpc-server names them: CUDA0,CUDA1)."""

    def __init__(self, binary: Path, port: int, devices: tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.port = port
        self.devices = devices
        self.proc: asyncio.subprocess.Process | None = None
        self.tail: deque[str] = deque(maxlen=20)  # its last lines, for a failure's reason
        self._reader: asyncio.Task[None] | None = None

    @property
    def argv(self) -> list[str]:
        argv = [str(self.binary), "-H", "127.0.0.1", "-p", str(self.port)]
        if self.devices:
            argv += ["-d", ",".join(self.devices)]
        return argv

    async def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start it and wait until it accepts connections; raises with its last line when it
        exits first."""
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "GGML_RPC_NO_RDMA": "1"},
                preexec_fn=die_with_parent,  # an agent killed with -9 takes it along
            )
        except OSError as err:
            raise LauncherError(f"rpc-server could not start ({err.strerror}).") from err
        self._reader = asyncio.create_task(self._read())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                await asyncio.wait([self._reader], timeout=2)
                said = self.tail[-1] if self.tail else f"exit code {self.proc.returncode}"
                raise LauncherError(f"rpc-server stopped at once: {said}.")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()  # rpc-server drops a client that says no hello, and waits on
            return
        await self.stop()
        raise LauncherError(f"rpc-server did not start within {timeout_s:.0f} s.")

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.tail.append(line)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()


class LentDevices:
    """An rpc-server on this box's 127.0.0.1 lending the cards of ``env`` (CUDA_VISIBLE_DEVICES),
    for as long as the ``with`` lasts: a second box on loopback, for measuring pooled-rpc on
    one machine (``launcher.benchmarks.speed_holdout``)."""

    def __init__(self, binary: Path, port: int, env: dict[str, str], log: Path) -> None:
        self.argv = [str(binary), "-H", "127.0.0.1", "-p", str(port)]
        self.port = port
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LentDevices:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env, "GGML_RPC_NO_RDMA": "1"},
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LauncherError(f"rpc-server stopped at once; see {self.log}.")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.2)
        self.__exit__()
        raise LauncherError(f"rpc-server did not listen within {READY_TIMEOUT_S:.0f} s.")

    def __exit__(self, *_: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
