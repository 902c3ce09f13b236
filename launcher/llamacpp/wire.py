"""llama-server's wire formats: ``/slots``, ``/metrics`` (Prometheus text) and the end of an
answer (SSE or JSON), read into plain values."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SlotState:
    """One slot of ``/slots``: whether it is busy, with which task, tokens decoded so far."""

    id: int | None
    processing: bool
    task: int | None = None
    decoded: int = 0

    def to_json(self) -> list[Any]:
        return [self.id, self.processing, self.task, self.decoded]

    @classmethod
    def from_json(cls, data: list[Any]) -> SlotState:
        return cls(data[0], bool(data[1]), data[2], int(data[3]))


def parse_prometheus(text: str) -> dict[str, float]:
    """``name value`` lines of a Prometheus text exposition (labels kept in the name)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            continue
    return out


def decoded_tokens(slot: dict[str, Any]) -> int:
    """Tokens a busy slot of ``/slots`` has decoded for its current request."""
    nxt = slot.get("next_token")
    if isinstance(nxt, list) and nxt:
        nxt = nxt[0]
    if isinstance(nxt, dict) and isinstance(nxt.get("n_decoded"), int):
        return int(nxt["n_decoded"])
    value = slot.get("n_decoded")
    return int(value) if isinstance(value, int) else 0


def parse_slots(data: object) -> tuple[SlotState, ...]:
    """The slots of a ``/slots`` reply (an empty tuple for anything else)."""
    if not isinstance(data, list):
        return ()
    out = []
    for s in data:
        if not isinstance(s, dict):
            continue
        slot_id = s.get("id")
        task = s.get("id_task")
        out.append(
            SlotState(
                slot_id if isinstance(slot_id, int) else None,
                bool(s.get("is_processing")),
                task if isinstance(task, int) else None,
                decoded_tokens(s),
            )
        )
    return tuple(out)


def tokens_in(tail: bytes, streaming: bool) -> int:
    """Generated tokens as the worker reported them at the end of an answer: the last SSE
    event's ``usage`` or ``tokens_predicted`` (``streaming``), else the whole JSON body's."""
    text = tail.decode(errors="replace")
    candidates = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    if not streaming:
        candidates = [text]
    for payload in reversed(candidates):
        try:
            data = json.loads(payload)
        except ValueError:
            continue
        if isinstance(data, dict):
            usage = data.get("usage")
            if isinstance(usage, dict) and "completion_tokens" in usage:
                return int(usage["completion_tokens"])
            if "tokens_predicted" in data:
                return int(data["tokens_predicted"])
    return 0
