"""Where profiles live and how they are read and written, for both kinds of profile.

A profile is named by a path, or by a name looked up in the user's folder
(``~/.config/llama-launcher/<kind>/NAME.toml``), then among the examples shipped in the package.
Reading turns a missing or invalid file into one sentence; writing never replaces a file
without ``force`` and replaces it atomically when allowed.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any

from launcher import paths
from launcher.errors import LauncherError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

EXAMPLES_ROOT = Path(__file__).resolve().parent.parent / "examples"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def user_dir(kind: str) -> Path:
    """The user's folder of ``kind`` profiles (hardware or launch)."""
    return paths.config_dir() / kind


def examples_dir(kind: str) -> Path:
    return EXAMPLES_ROOT / kind


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed file; raises one sentence when it cannot be read or is not TOML."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
        return data
    except OSError as err:
        raise LauncherError(f"{path} cannot be read ({err.strerror}); check the path.") from err
    except UnicodeDecodeError as err:
        raise LauncherError(
            f"{path} is not UTF-8 text (byte {err.start}); save it as UTF-8."
        ) from err
    except tomllib.TOMLDecodeError as err:
        raise LauncherError(f"{path} is not valid TOML ({err}); fix that line.") from err


def resolve(kind: str, spec: str) -> Path:
    """A ``kind`` profile from a path, or a name: the user's first, then the examples."""
    candidate = Path(spec).expanduser()
    if candidate.is_file():
        return candidate
    if "/" not in spec and not spec.endswith(".toml"):
        for folder in (user_dir(kind), examples_dir(kind)):
            if (folder / f"{spec}.toml").is_file():
                return folder / f"{spec}.toml"
    names = sorted({name for name, _, _ in list_profiles(kind)})
    raise LauncherError(
        f"No {kind} profile '{spec}': not a file, nor a name among "
        f"{', '.join(names) or 'no saved profiles'}; give a path or one of those names."
    )


def list_profiles(kind: str) -> list[tuple[str, Path, str]]:
    """(name, path, origin) of every ``kind`` profile, the user's first."""
    out = []
    for folder, origin in ((user_dir(kind), "user"), (examples_dir(kind), "example")):
        out += [(p.stem, p, origin) for p in sorted(folder.glob("*.toml"))]
    return out


def write_new(kind: str, name: str, text: str, *, force: bool = False) -> Path:
    """Write ``text`` as the user's ``kind`` profile NAME; refuses to replace without ``force``."""
    if not _NAME.match(name):
        raise LauncherError(
            f"'{name}' is not a usable profile name; use letters, digits, '.', '_' and '-'."
        )
    target = user_dir(kind) / f"{name}.toml"
    if target.exists() and not force:
        raise LauncherError(
            f"{target} already exists; choose another name or pass --force to replace it."
        )
    tmp = target.with_suffix(f".toml.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        if force:
            tmp.replace(target)
        else:  # a link fails when the name was taken meanwhile: nothing is replaced
            os.link(tmp, target)
    except FileExistsError as err:
        raise LauncherError(
            f"{target} already exists; choose another name or pass --force to replace it."
        ) from err
    except OSError as err:
        raise LauncherError(
            f"Cannot write {target} ({err.strerror}); check that {target.parent} is writable "
            "and has space."
        ) from err
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return target


def replace_text(path: Path, text: str) -> None:
    """Replace an existing profile's text whole (written beside it, then renamed): a full disk
    or a crash leaves the old file, never half of the new one."""
    tmp = path.with_suffix(f".toml.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text)
        tmp.chmod(path.stat().st_mode & 0o777)
        tmp.replace(path)
    except OSError as err:
        raise LauncherError(
            f"Cannot update {path} ({err.strerror}); check that its folder is writable and "
            "has space."
        ) from err
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
