"""Where llama-launcher keeps per-user files.

Three XDG folders: profiles (config), llama-server builds and probe results (cache), fleet
state, logs and bench results (state). ``LLAMA_LAUNCHER_HOME=DIR`` puts all three under DIR,
which is how every test gets a home of its own and never touches a user's real fleet.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "LLAMA_LAUNCHER_HOME"
APP = "llama-launcher"


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    base = Path(value) if value and Path(value).is_absolute() else Path.home() / fallback
    return base / APP


def _home() -> Path | None:
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser().resolve() if value else None


def config_dir() -> Path:
    """Saved hardware and launch profiles."""
    home = _home()
    return home / "config" if home else _xdg("XDG_CONFIG_HOME", ".config")


def cache_dir() -> Path:
    """llama-server builds, downloaded sources and probe results."""
    home = _home()
    return home / "cache" if home else _xdg("XDG_CACHE_HOME", ".cache")


def state_dir() -> Path:
    """Fleet state, worker logs and bench results."""
    home = _home()
    return home / "state" if home else _xdg("XDG_STATE_HOME", ".local/state")


def builds_dir() -> Path:
    """Installed llama.cpp builds, one folder per ``<llama.cpp version>-<backend>``."""
    return cache_dir() / "llama.cpp"


def sources_dir() -> Path:
    """Unpacked llama.cpp sources taken from llama-cpp-python source distributions."""
    return cache_dir() / "sources"


def probes_dir() -> Path:
    """What each llama-server binary reported about itself, keyed by binary."""
    return cache_dir() / "probes"
