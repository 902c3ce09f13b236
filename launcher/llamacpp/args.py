"""llama-server's command line, kept structured until a worker is spawned.

``ServerArgs`` holds every setting the launcher chooses (model, port, slots, context, KV types,
flash attention, split mode and tensor split, layers on the cards, threads, the launcher's own
defaults and a profile's extra flags); ``argv()`` is the only place that spells them as flags.
No code edits an argv list by position: a changed port is ``dataclasses.replace(args, port=N)``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Variables llama-server reads that change how the router reaches a worker: an API key
# (LLAMA_API_KEY is also the usual name of the router's own key: a worker that took it
# answered the router 401), TLS, a path prefix, the /slots endpoint. The router is the fleet's
# one door and workers listen on 127.0.0.1 only, so workers do not inherit these.
WORKER_ENV_DROPPED = frozenset(
    {
        "LLAMA_API_KEY",
        "LLAMA_ARG_API_KEY_FILE",
        "LLAMA_ARG_SSL_KEY_FILE",
        "LLAMA_ARG_SSL_CERT_FILE",
        "LLAMA_ARG_API_PREFIX",
        "LLAMA_ARG_ENDPOINT_SLOTS",
    }
)

# llama.cpp's RAM prompt cache (--cache-ram) cost 20-64% of unique-prompt traffic on 4x H100
# (docs/validation/2026-11-27-h100x4-bench.md, runs F and O): workers start with it off unless
# a profile's extra_args turn it back on.
PROMPT_CACHE_OFF = ("--cache-ram", "0")

# llama-server flags a profile may add (shown to the user before anything starts). Flags
# that the plan sets itself (-m, -c, -np, -ngl, -ts, -sm, --host, --port, ...) are not here.
EXTRA_FLAGS = {
    "--temp",
    "--top-k",
    "--top-p",
    "--min-p",
    "--repeat-penalty",
    "--seed",
    "--chat-template",
    "--jinja",
    "--no-webui",
    "--alias",
    "-a",
    "--threads",
    "-t",
    "--threads-batch",
    "-tb",
    "--batch-size",
    "-b",
    "--ubatch-size",
    "-ub",
    "--mlock",
    "--no-mmap",
    "--cont-batching",
    "--cache-reuse",
    "--reasoning-format",
    "--n-predict",
    "-n",
    "--timeout",
    "--slot-save-path",
    "--lora",
    "--rope-scaling",
    "--rope-freq-base",
    "--yarn-orig-ctx",
    "--defrag-thold",
    "--swa-full",
    "--kv-unified",
    "--log-verbosity",
    "-lv",
    "--log-timestamps",
    "--log-prefix",
    "--cache-ram",
    "--backend-sampling",
    "--pooling",
}

KV_TYPES = ("f16", "q8_0", "q4_0")
SPLIT_MODES = ("none", "layer", "tensor")


@dataclass(frozen=True)
class ServerArgs:
    """One llama-server's settings. ``ctx_per_slot`` is the context of each user: the worker
    gets ``-c slots x ctx_per_slot -np slots``."""

    binary: str
    model: str
    port: int
    slots: int
    ctx_per_slot: int
    host: str = "127.0.0.1"
    kv_type: str = "f16"
    flash_attn: bool = True
    gpu_layers: int | None = None  # -ngl; None on CPU workers
    split_mode: str | None = None  # -sm none | layer | tensor
    tensor_split: tuple[int, ...] = ()  # -ts, layers per device (RPC devices first)
    rpc: tuple[str, ...] = ()  # --rpc: rpc-servers (host:port) lending their devices
    fit_off: bool = False  # --fit off, so that what runs is what was planned
    threads: int | None = None  # -t
    mmproj: str | None = None
    alias: str | None = None  # --alias: the model name its answers carry (the group's)
    embeddings: bool = False  # an embedding model's worker: --embeddings (/v1/embeddings only)
    reranking: bool = False  # a reranker's worker: --reranking (/v1/rerank)
    defaults: tuple[str, ...] = ()  # the launcher's own choices over llama.cpp's (default_flags)
    extra: tuple[str, ...] = ()  # a profile's extra llama-server flags, after everything else

    @property
    def ctx_total(self) -> int:
        return self.slots * self.ctx_per_slot

    def argv(self) -> tuple[str, ...]:
        """The command line, flags in a fixed order. Where ``extra`` sets a flag that
        ``defaults`` also sets (``--cache-ram``), the default is left out rather than the flag
        repeated (llama-server warns about repeats)."""
        argv = [
            self.binary,
            "-m",
            self.model,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "-c",
            str(self.ctx_total),
            "-np",
            str(self.slots),
            "-fa",
            "on" if self.flash_attn else "off",
            "--metrics",
            "-ctk",
            self.kv_type,
            "-ctv",
            self.kv_type,
            *_without_overridden(self.defaults, self.extra),
        ]
        if self.rpc:
            argv += ["--rpc", ",".join(self.rpc)]
        if self.gpu_layers is not None:
            argv += ["-ngl", str(self.gpu_layers)]
        if self.split_mode is not None:
            argv += ["-sm", self.split_mode]
        if self.tensor_split:
            argv += ["-ts", ",".join(str(s) for s in self.tensor_split)]
        if self.fit_off:
            argv += ["--fit", "off"]
        if self.threads is not None:
            argv += ["-t", str(self.threads)]
        if self.mmproj:
            argv += ["--mmproj", self.mmproj]
        if self.alias and not {"--alias", "-a"} & {a.split("=")[0] for a in self.extra}:
            argv += ["--alias", self.alias]
        if self.embeddings:
            argv.append("--embeddings")
        if self.reranking:
            argv.append("--reranking")
        return (*argv, *self.extra)

    def replace(self, **changes: Any) -> ServerArgs:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerArgs:
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names
        }
        return cls(**values)


def _without_overridden(defaults: Sequence[str], extra: Sequence[str]) -> list[str]:
    """``defaults`` (flag, value pairs) less the flags that ``extra`` sets itself, also in
    its ``--flag=value`` form."""
    given = {a.split("=")[0] for a in extra if a.startswith("-")}
    out: list[str] = []
    for i in range(0, len(defaults) - 1, 2):
        if defaults[i] not in given:
            out += [defaults[i], defaults[i + 1]]
    return out


def inherited_settings(
    argv: Sequence[str], env_options: tuple[tuple[str, tuple[str, ...]], ...] = ()
) -> list[str]:
    """The LLAMA_ARG_* variables of this environment that a worker started with ``argv``
    inherits and llama-server takes, as ``NAME=value``. Left out are ``WORKER_ENV_DROPPED``,
    those whose option is in ``argv`` (the command line wins over the environment) and, where
    ``--help`` was read (``env_options``), those it has no option for."""
    options = dict(env_options)
    given = {a.split("=")[0] for a in argv if a.startswith("-")}
    return [
        f"{name}={value}"
        for name, value in sorted(os.environ.items())
        if name.startswith("LLAMA_ARG_")
        and name not in WORKER_ENV_DROPPED
        and not (options and (name not in options or given & set(options[name])))
    ]
