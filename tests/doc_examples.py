"""The README's (and docs') command examples, checked: the runnable ones run, the others parse.

A fenced ``console`` or ``sh`` block is an example when the line before it is a marker:

- ``<!-- example: run -->``: each ``$ COMMAND`` runs, in order, with bash, in a sandbox home
  (``~`` is a fresh folder; the llama-server build is the cached one; no GPU, through a fixed
  backend), and the lines shown under it must appear in its output in that order, numbers
  masked (any number, with its sign, matches any number) and ``...`` matching anything; a
  command must exit 0 unless the lines shown include the one-sentence error
  (``llama-launcher: ...``). A command
  whose comment starts ``# not run:`` is only parsed (it says why).
- ``<!-- example: syntax (WHY) -->``: the block needs a GPU, a LAN or a long build; each
  ``llama-launcher`` command in it is parsed by the real argument parser, nothing runs.

``check`` returns the problems as sentences naming the file and line, so a broken example
fails the test with what to fix.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MARKER = re.compile(r"^<!-- example: (run|syntax)(?: \((.+)\))? -->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")
NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")
NOT_RUN = "# not run:"


@dataclass
class Command:
    text: str  # what bash runs (continuation lines joined)
    line: int  # where it is in the file
    expected: list[str] = field(default_factory=list)

    @property
    def runs(self) -> bool:
        return NOT_RUN not in self.text


@dataclass
class Block:
    path: Path
    line: int  # the fence's line
    mode: str  # run | syntax
    why: str
    commands: list[Command]


def command_blocks(path: Path) -> Iterator[tuple[int, str, list[str], str | None]]:
    """Every fenced block of ``path``: (line, language, its lines, the marker before it)."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:
            start = i
            body = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            marker = lines[start - 1] if start > 0 else ""
            yield start + 1, fence.group(1), body, marker if MARKER.match(marker) else None
        i += 1


def parse_commands(body: list[str], first_line: int) -> list[Command]:
    """``$ `` lines (a trailing ``\\`` continues one) and the output lines under each."""
    out: list[Command] = []
    i = 0
    while i < len(body):
        text = body[i]
        if text.startswith("$ "):
            line = first_line + i + 1
            command = text[2:]
            while command.endswith("\\") and i + 1 < len(body):
                i += 1
                command = command[:-1] + " " + body[i].strip()
            out.append(Command(command, line))
        elif out:
            out[-1].expected.append(text)
        i += 1
    return out


def blocks(path: Path) -> list[Block]:
    """The marked examples of ``path``."""
    found = []
    for line, _, body, marker in command_blocks(path):
        if marker is None:
            continue
        m = MARKER.match(marker)
        assert m is not None
        found.append(Block(path, line, m.group(1), m.group(2) or "", parse_commands(body, line)))
    return found


def unmarked(path: Path) -> list[int]:
    """Lines of ``console``/``sh`` blocks that carry no marker."""
    return [
        line
        for line, lang, _, marker in command_blocks(path)
        if lang in ("console", "sh") and marker is None
    ]


class Masker:
    """Makes output comparable: homes and the cache written as ``~``, numbers as ``N``."""

    def __init__(self, replacements: list[tuple[str, str]]) -> None:
        self.replacements = sorted(replacements, key=lambda r: -len(r[0]))

    def __call__(self, text: str) -> str:
        for old, new in self.replacements:
            if old:
                text = text.replace(old, new)
        return NUMBER.sub("N", " ".join(text.split()))


def missing_lines(expected: list[str], output: str, mask: Masker) -> list[str]:
    """The expected lines that are not in ``output`` in that order (``...``: anything)."""
    actual = [mask(line) for line in output.splitlines()]
    missing = []
    at = 0
    for want in expected:
        masked = mask(want)
        if not masked or masked == "...":
            continue
        pattern = re.compile(".*".join(re.escape(part) for part in masked.split("...")))
        for j in range(at, len(actual)):
            if pattern.fullmatch(actual[j]):
                at = j + 1
                break
        else:
            missing.append(want)
    return missing


def syntax_problems(block: Block, command: Command) -> list[str]:
    """A command that the CLI's argument parser refuses (nothing runs)."""
    from launcher.cli.parser import build_parser

    problems = []
    for part in re.split(r"\||&&|;", command.text.split(" #")[0]):
        words = shlex.split(part, comments=True)
        if not words or words[0] != "llama-launcher":
            continue
        try:
            build_parser().parse_args(words[1:])
        except SystemExit:
            problems.append(
                f"{block.path.name}:{command.line}: `{command.text}` is not a valid command."
            )
    return problems


def check(paths: list[Path], env: dict[str, str], cwd: Path, mask: Masker) -> list[str]:
    """Run or parse every marked example of ``paths``; the problems found, one per line."""
    problems: list[str] = []
    for path in paths:
        for block in blocks(path):
            for command in block.commands:
                problems += syntax_problems(block, command)
                if block.mode != "run" or not command.runs:
                    continue
                result = subprocess.run(
                    ["bash", "-c", command.text],
                    cwd=cwd,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,  # in the order a terminal shows them
                    text=True,
                    timeout=600,
                    check=False,
                )
                output = result.stdout
                where = f"{path.name}:{command.line}: `{command.text}`"
                fails_on_purpose = any(e.startswith("llama-launcher: ") for e in command.expected)
                if result.returncode != 0 and not fails_on_purpose:
                    problems.append(f"{where} exited with {result.returncode}:\n{output[-2000:]}")
                    continue
                missing = missing_lines(command.expected, output, mask)
                if missing:
                    problems.append(
                        f"{where}: the output lacks {missing[0]!r}; it printed:\n{output[-2000:]}"
                    )
    return problems


def sandbox_env(home: Path, cache: Path, backend: str) -> dict[str, str]:
    """The environment examples run in: ``home`` as ``~``, the real llama-server cache linked
    into it, no GPU (``backend``), ``llama-launcher`` on the PATH."""
    import sys

    (home / ".cache").mkdir(parents=True, exist_ok=True)
    link = home / ".cache" / "llama-launcher"
    if not link.exists():
        link.symlink_to(cache)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LLAMA_LAUNCHER", "XDG_", "LLAMA_SERVER", "LLAMA_ARG_"))
    }
    env.update(
        HOME=str(home),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        LLAMA_LAUNCHER_GPU_BACKEND=backend,
        COLUMNS="200",
    )
    return env
