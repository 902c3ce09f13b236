"""A real sshd on 127.0.0.1 standing in for a second box (tests of docs/remote.md).

It runs as this user with its own host key, a key generated for the test, and a client
config the launcher's ssh uses through ``LLAMA_LAUNCHER_SSH_OPTIONS=-F FILE``. Needs the
OpenSSH server (``.ci/run`` installs it from the OS packages); without it the tests that use
it skip, saying so.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def available() -> bool:
    return Path(SSHD).is_file() and shutil.which("ssh") is not None


@dataclass(frozen=True)
class SshBox:
    port: int
    user: str
    client_config: Path

    @property
    def target(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    @property
    def options(self) -> str:
        return f"-F {self.client_config}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def sshd(folder: Path, env: dict[str, str] | None = None) -> Iterator[SshBox]:
    """Start sshd on a free port of 127.0.0.1 for the duration; ``env``: what the second
    box's sessions have in their environment (its cards, as a fixed GPU backend)."""
    folder.mkdir(parents=True, exist_ok=True)
    host_key = folder / "host_ed25519"
    user_key = folder / "id_ed25519"
    for key in (host_key, user_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    authorized = folder / "authorized_keys"
    authorized.write_text(user_key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    port = _free_port()
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {authorized}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {folder / 'sshd.pid'}\nPermitRootLogin prohibit-password\n"
        "AllowTcpForwarding yes\nLogLevel ERROR\n"
        "SetEnv PATH=/usr/local/bin:/usr/bin:/bin"
        + "".join(f" {k}={v}" for k, v in (env or {}).items())
        + "\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    client = folder / "ssh_config"
    client.write_text(
        f"Host 127.0.0.1\n  IdentityFile {user_key}\n  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
    )
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "sshd.log", "wb"),  # noqa: SIM115
    )
    try:
        box = SshBox(port, getpass.getuser(), client)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = subprocess.run(
                ["ssh", "-F", str(client), "-p", str(port), f"{box.user}@127.0.0.1", "true"],
                capture_output=True,
                check=False,
                timeout=10,
            )
            if probe.returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"sshd did not accept the test key: {probe.stderr!r}")
        yield box
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def environ(box: SshBox) -> dict[str, str]:
    """What the launcher's ssh needs to use the test's key and config."""
    return {"LLAMA_LAUNCHER_SSH_OPTIONS": box.options, "HOME": os.environ.get("HOME", "/root")}
