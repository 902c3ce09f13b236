"""Finding the llama-server to run, and what it supports.

Order: the ``--llama-server`` option, ``$LLAMA_SERVER``, the launch profile, ``PATH``, the
cache of builds made by ``install-server``. What a binary supports (version, split modes,
``--fit``, its flags) is probed once per binary and cached, keyed by path, size and mtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from launcher import paths
from launcher.errors import LauncherError
from launcher.plan.layouts import ServerTarget
from launcher.run.install import installations

ENV_VAR = "LLAMA_SERVER"
INSTALL_HINT = (
    "run 'llama-launcher install-server' to build one (about 5 minutes on 2 cores), "
    "or pass --llama-server PATH"
)

# Variables llama-server reads that change how the router reaches a worker: an API key
# (LLAMA_API_KEY is also the usual name of the router's own key: a worker that took it
# answered the router 401), TLS, a path prefix, the /slots endpoint. The router is the fleet's
# one door and workers listen on 127.0.0.1 only, so workers do not inherit these.
WORKER_ENV_DROPPED = frozenset(
    {
        "LLAMA_API_KEY",
        "LLAMA_ARG_API_KEY_FILE",
        "LLAMA_ARG_SSL_KEY_FILE",
        "LLAMA_ARG_SSL_CERT_FILE",
        "LLAMA_ARG_API_PREFIX",
        "LLAMA_ARG_ENDPOINT_SLOTS",
    }
)


@dataclass(frozen=True)
class ServerBinary:
    """A llama-server executable and where the choice came from."""

    path: Path
    origin: str  # option, env, profile, PATH or cache

    @property
    def bin_dir(self) -> Path:
        return self.path.parent

    def sibling(self, tool: str) -> Path | None:
        """``llama-bench`` or ``llama-fit-params`` from the same build, if present."""
        candidate = self.bin_dir / tool
        return candidate if candidate.is_file() else None


@dataclass(frozen=True)
class ServerCapabilities:
    """What ``llama-server --version`` and ``--help`` report."""

    version: str
    build_number: int | None
    commit: str | None
    split_modes: tuple[str, ...]
    supports_fit: bool
    flags: tuple[str, ...]
    # LLAMA_ARG_* variable -> the options it stands for ("(env: ...)" in --help)
    env_options: tuple[tuple[str, tuple[str, ...]], ...]

    def supports(self, flag: str) -> bool:
        return flag in self.flags


def _usable(path: Path, origin: str) -> ServerBinary:
    if not path.is_file():
        raise LauncherError(f"{path} (from {origin}) does not exist; fix it or {INSTALL_HINT}.")
    if not os.access(path, os.X_OK):
        raise LauncherError(f"{path} (from {origin}) is not executable; run 'chmod +x {path}'.")
    return ServerBinary(path.resolve(), origin)


def find_server(option: str | None = None, profile: str | None = None) -> ServerBinary:
    """The llama-server to use, in the documented order; raises with the install command."""
    if option:
        return _usable(Path(option).expanduser(), "--llama-server")
    env = os.environ.get(ENV_VAR)
    if env:
        return _usable(Path(env).expanduser(), f"${ENV_VAR}")
    if profile:
        return _usable(Path(profile).expanduser(), "the launch profile")
    on_path = shutil.which("llama-server")
    if on_path:
        return ServerBinary(Path(on_path).resolve(), "PATH")
    for inst in installations():
        return ServerBinary(inst.server, "cache")
    raise LauncherError(f"No llama-server found; {INSTALL_HINT}.")


def vocab_dirs(server: ServerBinary | None) -> list[Path]:
    """Folders holding llama.cpp's ``ggml-vocab-*.gguf``: beside ``server``, then the cache."""
    dirs = []
    if server is not None:
        dirs.append(server.bin_dir.parent / "models")
    dirs += [inst.models_dir for inst in installations()]
    return [d for d in dirs if d.is_dir()]


def find_vocab(name: str, server: ServerBinary | None) -> Path:
    """The vocabulary file ``name``; raises with the install command when none is cached."""
    for d in vocab_dirs(server):
        if (d / name).is_file():
            return d / name
    raise LauncherError(
        f"The tokenizer vocabulary {name} is not in the llama.cpp cache; run "
        "'llama-launcher install-server' first (it keeps llama.cpp's vocabularies), or pass "
        "--vocab FILE."
    )


_VERSION = re.compile(r"version:\s*(\S+)(?:\s*\(build (\d+), commit ([0-9a-f]+)\))?")
_SPLIT = re.compile(r"--split-mode\s+\{([a-z,]+)\}")
# the option column ends where a run of spaces is followed by the description text
_OPTION_COLUMN = re.compile(r"\s{2,}(?=[^-\s])")
_FLAG = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")
_ENV = re.compile(r"\(env: (LLAMA_ARG_\w+)\)")


def parse_capabilities(version_text: str, help_text: str) -> ServerCapabilities:
    """Read a ``ServerCapabilities`` out of llama-server's ``--version`` and ``--help``."""
    match = _VERSION.search(version_text)
    version = match.group(1) if match else "unknown"
    build = int(match.group(2)) if match and match.group(2) else None
    commit = match.group(3) if match and match.group(3) else None
    split = _SPLIT.search(help_text)
    modes = tuple(split.group(1).split(",")) if split else ()
    flags: set[str] = set()
    env_options: dict[str, tuple[str, ...]] = {}
    option: tuple[str, ...] = ()  # the flags of the option whose description this line is in
    for line in help_text.splitlines():
        if line[:1] == "-":
            column = _OPTION_COLUMN.split(line, maxsplit=1)[0]
            option = tuple(m.group(1) for m in _FLAG.finditer(column))
            flags.update(option)
        for env in _ENV.finditer(line):
            env_options[env.group(1)] = option
    return ServerCapabilities(
        version,
        build,
        commit,
        modes,
        "--fit" in flags,
        tuple(sorted(flags)),
        tuple(sorted(env_options.items())),
    )


def server_target(server: ServerBinary, caps: ServerCapabilities) -> ServerTarget:
    """What the planner needs to know of this llama-server: its path, the split modes that
    work (``-sm row`` is listed but fails to load, DESIGN.md) and the flags it takes."""
    return ServerTarget(
        str(server.path),
        tuple(m for m in caps.split_modes if m != "row"),
        caps.supports_fit,
        caps.supports("--cache-ram"),
        caps.env_options,
    )


def inherited_settings(
    argv: Sequence[str], env_options: tuple[tuple[str, tuple[str, ...]], ...] = ()
) -> list[str]:
    """The LLAMA_ARG_* variables of this environment that a worker started with ``argv``
    inherits and llama-server takes, as ``NAME=value``. Left out are ``WORKER_ENV_DROPPED``,
    those whose option is in ``argv`` (the command line wins over the environment) and, where
    ``--help`` was read (``env_options``), those it has no option for."""
    options = dict(env_options)
    given = {a.split("=")[0] for a in argv if a.startswith("-")}
    return [
        f"{name}={value}"
        for name, value in sorted(os.environ.items())
        if name.startswith("LLAMA_ARG_")
        and name not in WORKER_ENV_DROPPED
        and not (options and (name not in options or given & set(options[name])))
    ]


def _probe_key(binary: Path) -> str:
    st = binary.stat()
    raw = f"{binary.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def probe(server: ServerBinary) -> ServerCapabilities:
    """What ``server`` supports, from the cache or by running it once (a few seconds)."""
    cache = paths.probes_dir() / f"{_probe_key(server.path)}.json"
    if cache.is_file():
        try:
            data = json.loads(cache.read_text())
            data["split_modes"] = tuple(data["split_modes"])
            data["flags"] = tuple(data["flags"])
            data["env_options"] = tuple((k, tuple(v)) for k, v in data["env_options"])
            return ServerCapabilities(**data)
        except (ValueError, TypeError, KeyError):
            cache.unlink(missing_ok=True)
    try:
        version = subprocess.run(
            [str(server.path), "--version"], capture_output=True, text=True, timeout=60, check=False
        )
        help_ = subprocess.run(
            [str(server.path), "--help"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise LauncherError(
            f"{server.path} could not be run ({err}); rebuild it with "
            "'llama-launcher install-server --force'."
        ) from err
    caps = parse_capabilities(version.stdout + version.stderr, help_.stdout + help_.stderr)
    if not caps.flags:
        raise LauncherError(
            f"{server.path} did not print its options; is it really llama-server? {INSTALL_HINT}."
        )
    paths.probes_dir().mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(caps), indent=1))
    tmp.replace(cache)
    return caps
