"""Shared fixtures: a private LLAMA_LAUNCHER_HOME per test, the real llama-server, tiny models.

The llama-server build is found once, before any test changes the environment: from
``$LLAMA_SERVER`` or the user's cache, where ``scripts/test`` installs it. Every test then runs
with its own ``LLAMA_LAUNCHER_HOME`` so it can never touch a real fleet or profile.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.model import synthetic

from .sshbox import SshBox

_REAL_SERVER: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _REAL_SERVER
    env = os.environ.get("LLAMA_SERVER")
    if env:
        _REAL_SERVER = Path(env)
        return
    from launcher.run.install import installations

    found = installations()
    _REAL_SERVER = found[0].server if found else None


@pytest.fixture(autouse=True)
def launcher_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh LLAMA_LAUNCHER_HOME for this test; no LLAMA_SERVER unless a test sets one.
    A fleet the test leaves running in it (a test that failed half-way) is stopped after."""
    home = tmp_path / "launcher-home"
    monkeypatch.setenv("LLAMA_LAUNCHER_HOME", str(home))
    monkeypatch.delenv("LLAMA_SERVER", raising=False)
    yield home
    from launcher.run import daemon, fleet_state  # deferred: most tests never start a fleet

    for fleet in fleet_state.list_fleets():
        if fleet_state.pid_alive(fleet.supervisor_pid):
            daemon.stop_fleet(fleet.name, lambda line: None)


@pytest.fixture(scope="session")
def llama_server() -> Path:
    """The real llama-server binary that ``scripts/test`` built."""
    if _REAL_SERVER is None or not _REAL_SERVER.is_file():
        pytest.fail(
            "No llama-server build found: run the tests through scripts/test, which builds "
            "one first, or set LLAMA_SERVER."
        )
    return _REAL_SERVER


@pytest.fixture(scope="session")
def vocab_dir(llama_server: Path) -> Path:
    """llama.cpp's ggml-vocab-*.gguf files, kept beside the build."""
    return llama_server.parent.parent / "models"


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Iterator[object]:
    """Writes (and caches for the session) tiny synthetic models: ``make(arch, parts=1)``."""
    root = tmp_path_factory.mktemp("models")
    made: dict[tuple[str, str, int, bool], Path] = {}

    def make(arch: str = "llama", size: str = "tiny", parts: int = 1, sparse: bool = False) -> Path:
        key = (arch, size, parts, sparse)
        if key not in made:
            shape = synthetic.shape_for(arch, size)
            out = root / f"{arch}-{size}-{parts}{'-sparse' if sparse else ''}.gguf"
            written = synthetic.write_model(
                out,
                shape,
                vocab_dir / synthetic.vocab_file_name(shape),
                parts=parts,
                sparse=sparse,
            )
            made[key] = written[0]
        return made[key]

    yield make


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m launcher ARGS`` as a user runs it, with ``env`` added to the environment."""
    import sys

    return subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_llama_server(
    llama_server: Path, model: Path, log: Path, slots: int = 2, ctx: int = 1024
) -> tuple[subprocess.Popen[bytes], str]:
    """A real llama-server on 127.0.0.1 (``slots`` x ``ctx``), healthy; returns it and its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(llama_server),
                "-m",
                str(model),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "-c",
                str(ctx * slots),
                "-np",
                str(slots),
                "-t",
                "1",
                "--metrics",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_healthy(url, proc)
    except BaseException:
        stop_process(proc)
        raise
    return proc, url


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Poll ``url``/health until 200; fail with the log if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"llama-server exited with {proc.returncode} while loading")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"llama-server at {url} was not healthy after {timeout} s")


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SshBox]:
    """The second box (its cards: four H100s, a fixed GPU backend), and the launcher's ssh
    set up to use its key."""
    from tests import gpu_boxes, sshbox

    cards = gpu_boxes.save(gpu_boxes.four_h100_backend(), tmp_path / "second-cards.json")
    with sshbox.sshd(tmp_path / "sshd", {"LLAMA_LAUNCHER_GPU_BACKEND": cards}) as running:
        for key, value in sshbox.environ(running).items():
            monkeypatch.setenv(key, value)
        yield running
