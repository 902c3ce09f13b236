"""llama-server's router-mode presets (``--models-preset FILE``, an INI file): a worker's command
line as one section of ``key = value`` lines.

A key is a flag's name without its dashes (``-c`` -> ``c``, ``--alias`` -> ``alias``), as
llama.cpp's ``common/preset.cpp`` reads them; a flag without a value is ``true``. The router
mode chooses each model's host and port itself, so those are left out; a worker's cards become
``device = CUDA0,CUDA1`` (llama.cpp's device names, in PCI order when the router mode runs
with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``), since an INI section cannot set a process's
``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

from collections.abc import Sequence

PRESET_VERSION = "1"
SET_BY_ROUTER_MODE = frozenset({"--host", "--port"})


def _is_flag(arg: str) -> bool:
    if not arg.startswith("-") or len(arg) < 2:
        return False
    try:
        float(arg)
    except ValueError:
        return True
    return False


def preset_options(argv: Sequence[str], cards: Sequence[int] = ()) -> list[tuple[str, str]]:
    """A worker's ``argv`` (binary first) as preset keys and values, in order."""
    out: list[tuple[str, str]] = []
    args = list(argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        flag, _, inline = arg.partition("=")
        if not _is_flag(flag):
            i += 1
            continue
        if inline:
            value = inline
            i += 1
        elif i + 1 < len(args) and not _is_flag(args[i + 1]):
            value = args[i + 1]
            i += 2
        else:
            value = "true"
            i += 1
        if flag not in SET_BY_ROUTER_MODE:
            out.append((flag.lstrip("-"), value))
    if cards:
        out.append(("device", ",".join(f"CUDA{c}" for c in cards)))
    return out
