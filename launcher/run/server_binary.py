"""Finding the llama-server to run and llama.cpp's vocabulary files.

Order: the ``--llama-server`` option, ``$LLAMA_SERVER``, the launch profile, ``PATH``, the
cache of builds made by ``install-server``. What a binary supports is probed once per binary
(``probe``, read by ``llamacpp.probe``) and cached, keyed by path, size and mtime.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from launcher import paths
from launcher.errors import LauncherError
from launcher.llamacpp.probe import ServerCapabilities, parse_capabilities
from launcher.run.install import installations

ENV_VAR = "LLAMA_SERVER"
INSTALL_HINT = (
    "run 'llama-launcher install-server' to build one (about 5 minutes on 2 cores), "
    "or pass --llama-server PATH"
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


def _probe_key(binary: Path) -> str:
    st = binary.stat()
    raw = f"{binary.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def probe(binary: Path) -> ServerCapabilities:
    """What ``server`` supports, from the cache or by running it once (a few seconds)."""
    cache = paths.probes_dir() / f"{_probe_key(binary)}.json"
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
            [str(binary), "--version"], capture_output=True, text=True, timeout=60, check=False
        )
        help_ = subprocess.run(
            [str(binary), "--help"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise LauncherError(
            f"{binary} could not be run ({err}); rebuild it with "
            "'llama-launcher install-server --force'."
        ) from err
    caps = parse_capabilities(version.stdout + version.stderr, help_.stdout + help_.stderr)
    if not caps.flags:
        raise LauncherError(
            f"{binary} did not print its options; is it really llama-server? Rebuild it with "
            "'llama-launcher install-server --force' or pass --llama-server PATH."
        )
    # a cache only: two commands probing at once, or a full disk, must not fail either
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    try:
        paths.probes_dir().mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(asdict(caps), indent=1))
        tmp.replace(cache)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return caps
