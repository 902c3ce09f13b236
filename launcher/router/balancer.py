"""Which worker gets the next request: least busy by free slots, weighted by speed.

Each member has slots (from its ``/slots``, in the supervisor's snapshots) and the router's own
count of requests in flight on it. A request goes to the healthy member with the lowest
``(in_flight + 1) / (slots x speed)``, where speed is the member's measured tokens/s per busy
slot relative to the fastest, both read with as many slots decoding (the best readings of the
last 30 s, see ``SpeedMeter``), times the profile's ``weight``, so a slower card gets less.
With affinity, a request whose prompt starts like an earlier one goes back to the same member
if it has a free slot, so llama.cpp can reuse its prompt cache. When every slot is busy,
requests wait in a bounded queue, first come first served.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from launcher.llamacpp.wire import SlotState


@dataclass
class Member:
    """A llama-server behind the router: a local worker or a remote box."""

    name: str
    url: str
    weight: float = 1.0
    api_key: str | None = None
    slots: int = 1
    healthy: bool = False
    in_flight: int = 0
    tok_s_per_slot: float = 0.0  # measured at its current load; 0 until known
    # best recent tok/s per slot by how many slots were decoding: what members are compared on
    speeds: dict[int, float] = field(default_factory=dict)
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    last_failure: float = 0.0
    cards: tuple[int, ...] = field(default=())
    pin_slots: bool = False  # a llama-server whose /slots lists its slots by id
    slots_taken: set[int] = field(default_factory=set)  # slot ids the router has in flight
    slots_foreign: set[int] = field(default_factory=set)  # busy at the last /slots, not ours
    slot_keys: dict[int, str] = field(default_factory=dict)  # prompt start each slot last had

    @property
    def free(self) -> int:
        return max(self.slots - self.in_flight, 0)

    def take_slot(self, key: str | None = None) -> int | None:
        """The lowest slot id the router has not given out (None when all are out); a free
        slot that last served a prompt starting the same way (``key``) comes first. Packing
        busy slots at the bottom lets llama.cpp decode them in one pass; slots busy with
        requests that did not come through the router are skipped (docs/router.md, "Slot
        packing")."""
        out = self.slots_taken | self.slots_foreign
        free = [i for i in range(self.slots) if i not in out]
        if not free:
            return None
        same = [i for i in free if key is not None and self.slot_keys.get(i) == key]
        slot = (same or free)[0]
        self.slots_taken.add(slot)
        if key is not None:
            self.slot_keys[slot] = key
        return slot


class SpeedMeter:
    """A member's decode tokens/s per slot, from two ``/slots`` readings in a row: the best of
    its readings over the last ``window_s`` seconds, kept apart by how many slots were decoding.

    Only slots that decoded the same request at both readings count. The best reading, not an
    average, because a reading only comes out low for reasons that are not the card's speed (a
    prompt in the same batch stalls the decoding slots); kept by the number of decoding slots,
    because the speed per slot falls as more decode together, so members are compared at equal
    load (docs/router.md, "Balancing", with the 4x H100 runs that found both).
    """

    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self._last: dict[object, tuple[object, int]] = {}
        self._time = 0.0
        self._readings: deque[tuple[float, int, float]] = deque()  # time, slots, tok/s

    def update(self, now: float, slots: tuple[SlotState, ...]) -> float | None:
        """Take one ``/slots`` reading; the best recent reading at the latest number of
        decoding slots, what the member does at its current load (None until there is one)."""
        current: dict[object, tuple[object, int]] = {}
        for s in slots:
            if s.processing:
                current[s.id] = (s.task, s.decoded)
        rates = []
        dt = now - self._time
        for slot, (task, decoded) in current.items():
            before = self._last.get(slot)
            if before and before[0] == task and before[1] > 0 and decoded > before[1] and dt > 0:
                rates.append((decoded - before[1]) / dt)
        self._last, self._time = current, now
        if rates:
            self._readings.append((now, len(rates), sum(rates) / len(rates)))
        while self._readings and self._readings[0][0] < now - self.window_s:
            self._readings.popleft()
        if not self._readings:
            return None
        batch = self._readings[-1][1]
        return self.by_slots()[batch]

    def by_slots(self) -> dict[int, float]:
        """The best reading in the window for each number of decoding slots."""
        best: dict[int, float] = {}
        for _, n, rate in self._readings:
            best[n] = max(rate, best.get(n, 0.0))
        return best


class QueueFull(Exception):
    """The wait queue is at its bound."""


class Balancer:
    """Picks members; ``acquire`` waits (bounded, with a timeout) when all slots are busy."""

    def __init__(self, members: list[Member], max_queue: int = 256, affinity: bool = False) -> None:
        self.members = members
        self.max_queue = max_queue
        self.affinity = affinity
        self.waiting = 0
        self._changed = asyncio.Condition()
        self._affinity: OrderedDict[str, str] = OrderedDict()

    def _speed(self, m: Member) -> float:
        """``m``'s speed relative to the fastest member, times its weight. Two members are
        compared at the largest number of decoding slots both have readings for; a member
        with none in common with another is taken as fast as it."""
        relative = 1.0
        for x in self.members:
            common = m.speeds.keys() & x.speeds.keys()
            if x is not m and common:
                n = max(common)
                relative = min(relative, m.speeds[n] / x.speeds[n])
        return max(relative, 0.05) * m.weight

    def pick(self, key: str | None = None, exclude: set[str] | None = None) -> Member | None:
        """The member a request should go to now, or None if none has a free slot."""
        candidates = [
            m
            for m in self.members
            if m.healthy and m.free > 0 and (not exclude or m.name not in exclude)
        ]
        if not candidates:
            return None
        if key is not None and self.affinity:
            name = self._affinity.get(key)
            match = next((m for m in candidates if m.name == name), None)
            if match is not None:
                return match
        best = min(candidates, key=lambda m: (m.in_flight + 1) / (m.slots * self._speed(m)))
        if key is not None and self.affinity:
            self._affinity[key] = best.name
            self._affinity.move_to_end(key)
            while len(self._affinity) > 4096:
                self._affinity.popitem(last=False)
        return best

    async def acquire(
        self, timeout: float, key: str | None = None, exclude: set[str] | None = None
    ) -> Member:
        """A member with a free slot, its in-flight count already raised.

        Raises ``QueueFull`` when the queue is at its bound and ``TimeoutError`` after
        ``timeout`` seconds of waiting.
        """
        member = self.pick(key, exclude)
        if member is None:
            if self.waiting >= self.max_queue:
                raise QueueFull
            self.waiting += 1
            try:
                deadline = time.monotonic() + timeout
                async with self._changed:
                    while (member := self.pick(key, exclude)) is None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise TimeoutError
                        await asyncio.wait_for(self._changed.wait(), left)
            finally:
                self.waiting -= 1
        member.in_flight += 1
        member.requests += 1
        return member

    async def release(self, member: Member) -> None:
        member.in_flight = max(member.in_flight - 1, 0)
        await self.notify()

    async def notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def affinity_key(body: dict[str, object]) -> str | None:
    """A key for the start of a conversation: the first 512 characters of its prompt."""
    prompt = body.get("prompt")
    if prompt is None and isinstance(body.get("messages"), list):
        messages = body["messages"]
        prompt = repr(messages[:2]) if isinstance(messages, list) else None
    if not isinstance(prompt, str) or not prompt:
        return None
    return hashlib.sha1(prompt[:512].encode()).hexdigest()
