"""What the user wants to serve: how many users, how much context each, and what matters."""

from __future__ import annotations

from dataclasses import dataclass

from launcher.errors import LauncherError
from launcher.llamacpp.args import KV_TYPES

GOALS = ("throughput", "latency", "context")
DEFAULT_USERS_PER_WORKER = 4
DEFAULT_CTX = 4096


@dataclass(frozen=True)
class Workload:
    """``users`` concurrent users (= llama-server slots in total), ``ctx`` tokens each."""

    users: int = DEFAULT_USERS_PER_WORKER
    ctx: int = DEFAULT_CTX
    kv_type: str = "f16"
    goal: str = "throughput"
    cards: tuple[str, ...] = ()  # indices or UUIDs to use; empty = all usable
    exclude_cards: tuple[str, ...] = ()
    n_ubatch: int = 512
    prompt_tokens: int = 512  # typical prompt, for the KV read and prompt-speed figures
    flash_attn: bool = True  # -fa on|off
    tensor_split: tuple[float, ...] = ()  # the user's -ts for pooled layouts (plan/split.py)

    def __post_init__(self) -> None:
        if self.users < 1:
            raise LauncherError("--users must be 1 or more.")
        if self.ctx < 256:
            raise LauncherError("--ctx must be at least 256 tokens.")
        if self.kv_type not in KV_TYPES:
            raise LauncherError(f"--kv-type must be one of {', '.join(KV_TYPES)}.")
        if self.goal not in GOALS:
            raise LauncherError(f"--goal must be one of {', '.join(GOALS)}.")
        if not self.flash_attn and self.kv_type != "f16":
            raise LauncherError(
                f"A {self.kv_type} KV cache needs flash attention; use --flash-attn on or "
                "--kv-type f16."
            )
        if self.cards and self.exclude_cards:
            raise LauncherError("Give --cards or --exclude-cards, not both.")

    def to_json(self) -> dict[str, object]:
        return {
            "users": self.users,
            "ctx": self.ctx,
            "kv_type": self.kv_type,
            "goal": self.goal,
            "flash_attn": self.flash_attn,
        }


def parse_card_list(text: str | None) -> tuple[str, ...]:
    """``"0,2,GPU-ab12"`` as a tuple of entries (indices or UUIDs)."""
    if not text:
        return ()
    return tuple(part.strip() for part in text.split(",") if part.strip())
