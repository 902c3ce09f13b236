"""What a llama-server binary can do, read from its ``--version`` and ``--help``.

The planner sees a ``ServerTarget`` (path, split modes that work, ``--fit``, ``--cache-ram``,
the LLAMA_ARG_* variables it reads); when there is no local build it assumes the pinned
llama.cpp's abilities. ``parse_capabilities`` reads a binary's ``--version`` and ``--help``
(``run.server_binary.probe`` runs it once and caches the answer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from launcher.llamacpp.args import PROMPT_CACHE_OFF

# Split modes of the pinned llama.cpp (0c1e57098, llama-cpp-python 0.3.36), for planning
# without a local build. "row" is listed by the binary but fails to load (DESIGN.md).
PINNED_SPLIT_MODES = ("none", "layer", "tensor")


@dataclass(frozen=True)
class ServerTarget:
    """What will run the workers: the llama-server path and its split modes."""

    path: str = "llama-server"
    split_modes: tuple[str, ...] = PINNED_SPLIT_MODES
    supports_fit: bool = True
    supports_cache_ram: bool = True  # --cache-ram: llama.cpp's RAM prompt cache (the pinned has it)
    # LLAMA_ARG_* variable -> its options, from --help; empty when not probed
    env_options: tuple[tuple[str, tuple[str, ...]], ...] = ()


def default_flags(server: ServerTarget) -> tuple[str, ...]:
    """The llama-server settings the launcher chooses over llama.cpp's own defaults."""
    return PROMPT_CACHE_OFF if server.supports_cache_ram else ()


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


def server_target(binary: Path, caps: ServerCapabilities) -> ServerTarget:
    """What the planner needs to know of this llama-server: its path, the split modes that
    work (``-sm row`` is listed but fails to load, DESIGN.md) and the flags it takes."""
    return ServerTarget(
        str(binary),
        tuple(m for m in caps.split_modes if m != "row"),
        caps.supports_fit,
        caps.supports("--cache-ram"),
        caps.env_options,
    )
