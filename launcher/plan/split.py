"""A tensor split as the user writes it (llama.cpp's ``-ts``), read by one rule.

``plan --tensor-split``, ``up --tensor-split``, a launch profile's ``tensor_split`` and the Plan
screen's split field all come here. The text has one non-negative number per card, separated
by commas (or slashes, as llama.cpp allows), read as proportions. For ``-sm layer`` the
proportions become whole layers per card the way llama.cpp assigns them, so the plan shows the
layers each card gets; whole numbers that already add up to the model's layers plus its output
layer are used as given. An error only for a wrong count, a negative or all zeros.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from launcher.errors import LauncherError
from launcher.plan.memory import assign_layers

EXAMPLE = "e.g. 3,1"


def parse_split(text: str) -> tuple[float, ...]:
    """``"3,1"`` / ``"0.6/0.4"`` as numbers; one sentence for anything else."""
    parts = [p.strip() for p in re.split(r"[,/]", text.strip())]
    if not text.strip() or any(not p for p in parts):
        raise LauncherError(f"A tensor split is one number per card, {EXAMPLE}.")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise LauncherError(
            f"'{text}' is not a tensor split; give one number per card, {EXAMPLE}."
        ) from None
    if any(not math.isfinite(v) for v in values):
        raise LauncherError(f"'{text}' is not a tensor split; give finite numbers, {EXAMPLE}.")
    return values


def check_split(values: Sequence[float], cards: int) -> None:
    """One sentence when ``values`` cannot split ``cards`` cards."""
    if len(values) != cards:
        raise LauncherError(
            f"The tensor split has {len(values)} number(s) for {cards} card(s); give one per card."
        )
    if any(v < 0 for v in values):
        raise LauncherError("A tensor split cannot have negative numbers; use 0 to skip a card.")
    if not any(v > 0 for v in values):
        raise LauncherError("A tensor split of all zeros places nothing; give each card a share.")


def layer_counts(values: Sequence[float], cards: int, n_layer: int) -> tuple[int, ...]:
    """Whole layers per card (of ``n_layer + 1``, the output layer included) for ``-sm layer``."""
    check_split(values, cards)
    total = n_layer + 1
    if all(float(v).is_integer() for v in values) and sum(values) == total:
        return tuple(int(v) for v in values)
    return tuple(len(layers) for layers in assign_layers(n_layer, list(values), total))


def tensor_shares(values: Sequence[float], cards: int) -> tuple[int, ...]:
    """Whole-number proportions for ``-sm tensor`` (fractions scaled to hundredths)."""
    check_split(values, cards)
    if all(float(v).is_integer() for v in values):
        return tuple(int(v) for v in values)
    return tuple(round(v * 100) for v in values)
