"""``plan --verify``: ask llama.cpp's own ``llama-fit-params`` for its per-device estimate.

It runs with the same flags as the planned llama-server (minus the server-only ones) and
``--fit-print on``, which prints one line per device: ``NAME model context compute`` in MiB,
then ``Host ...``.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import LauncherError

_SERVER_ONLY_WITH_VALUE = {
    "--host",
    "--port",
    "-np",
    "--parallel",
    "-ctk",
    "-ctv",
    "--cache-ram",
    "--alias",
    "--pooling",
}
_SERVER_ONLY = {"--metrics", "--embeddings", "--reranking"}


@dataclass(frozen=True)
class DeviceEstimate:
    """llama.cpp's estimate for one device, MiB."""

    device: str
    model_mib: int
    context_mib: int
    compute_mib: int


def fit_params_argv(fit_params: Path, server_argv: tuple[str, ...]) -> list[str]:
    """The llama-fit-params command for a planned llama-server command line."""
    out = [str(fit_params)]
    args = list(server_argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _SERVER_ONLY_WITH_VALUE:
            # -np and cache types do matter to the estimate: keep them in their common form
            if arg in ("-np", "--parallel", "-ctk", "-ctv"):
                out += [arg, args[i + 1]]
            i += 2
            continue
        if arg not in _SERVER_ONLY:
            out.append(arg)
        i += 1
    return [*out, "--fit-print", "on"]


def parse_fit_print(text: str) -> list[DeviceEstimate]:
    """The device lines of ``--fit-print on`` output."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and all(p.isdigit() for p in parts[1:]):
            out.append(DeviceEstimate(parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
    return out


def run_fit_params(
    fit_params: Path, server_argv: tuple[str, ...], env: dict[str, str]
) -> list[DeviceEstimate]:
    """Run llama-fit-params for one planned process; raises with its last output on failure."""
    argv = fit_params_argv(fit_params, server_argv)
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env={**os.environ, **env},
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise LauncherError(f"llama-fit-params could not run ({err}).") from err
    estimates = parse_fit_print(done.stdout)
    if done.returncode != 0 or not estimates:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise LauncherError(f"llama-fit-params failed (exit {done.returncode}): {tail}")
    return estimates
