"""The only module that talks to NVML (``pynvml`` from nvidia-ml-py).

Every failure of the library (no driver, no libnvidia-ml, a version mismatch) becomes
``NvmlUnavailable`` with a sentence for the user; callers never see ``pynvml`` types.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass


class NvmlUnavailable(Exception):
    """NVML cannot be used on this machine; ``str(err)`` says why in one sentence."""


@dataclass(frozen=True)
class CardIdentity:
    """What a build needs to know of a card: its name and CUDA compute capability."""

    index: int
    name: str
    compute_capability: tuple[int, int]


def card_identities() -> list[CardIdentity]:
    """The NVIDIA cards the driver sees, in PCI bus order.

    Raises ``NvmlUnavailable`` when there is no driver or NVML library.
    """
    try:
        import pynvml
    except ImportError as err:  # nvidia-ml-py is a dependency, but be explicit
        raise NvmlUnavailable("nvidia-ml-py is not installed") from err
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        raise NvmlUnavailable(f"no NVIDIA driver is loaded ({err})") from err
    except Exception as err:  # e.g. a function missing from an old libnvidia-ml
        raise NvmlUnavailable(f"the NVIDIA driver's NVML library cannot be used ({err})") from err
    try:
        cards = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            text = name.decode() if isinstance(name, bytes) else str(name)
            cards.append(CardIdentity(i, text, (int(major), int(minor))))
        return cards
    except pynvml.NVMLError as err:
        raise NvmlUnavailable(f"NVML failed while listing cards ({err})") from err
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
