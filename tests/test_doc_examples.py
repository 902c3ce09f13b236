"""The README's examples run as written (docs/README.md says how they are marked), and the
check fails on a broken one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests import gpu_boxes
from tests.doc_examples import Masker, blocks, check, sandbox_env, unmarked

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_command_block_of_the_readme_says_whether_it_runs() -> None:
    assert unmarked(ROOT / "README.md") == [], "add <!-- example: run --> or syntax (WHY)"


def _sandbox(tmp_path: Path, llama_server: Path) -> tuple[dict[str, str], Path, Masker]:
    home = tmp_path / "home"
    cache = llama_server.resolve().parents[3]  # <cache>/llama.cpp/<build>/bin/llama-server
    backend = gpu_boxes.save(gpu_boxes.no_driver_backend(), tmp_path / "no-gpu.json")
    env = sandbox_env(home, cache, backend)
    mask = Masker(
        [
            (str(home), "~"),
            (str(cache), "~/.cache/llama-launcher"),
            (str(Path.home()), "~"),
        ]
    )
    return env, home, mask


def test_the_readme_examples_run_as_written(tmp_path: Path, llama_server: Path) -> None:
    env, home, mask = _sandbox(tmp_path, llama_server)
    try:
        problems = check(DOCS, env, home, mask)
    finally:  # no fleet outlives the check, whatever it found
        status = subprocess.run(
            ["llama-launcher", "status", "--json"], env=env, capture_output=True, text=True
        )
        for fleet in json.loads(status.stdout or '{"fleets": []}')["fleets"]:
            subprocess.run(["llama-launcher", "down", fleet["name"]], env=env, timeout=60)
    assert not problems, "\n\n".join(problems)


def test_a_broken_example_fails_the_check(tmp_path: Path, llama_server: Path) -> None:
    doc = tmp_path / "broken.md"
    doc.write_text(
        "<!-- example: run -->\n```console\n$ echo hello 42\nhello 7\n$ echo fine\ngoodbye\n"
        "$ false\n```\n\n<!-- example: syntax (needs a GPU) -->\n```console\n"
        "$ llama-launcher plan x.gguf --no-such-option\n```\n\n```console\n$ echo unmarked\n```\n"
    )
    env, home, mask = _sandbox(tmp_path, llama_server)
    problems = check([doc], env, home, mask)
    text = "\n".join(problems)
    assert len(problems) == 3, text
    assert "broken.md:5: `echo fine`: the output lacks 'goodbye'" in text  # wrong output
    assert "broken.md:7: `false` exited with 1" in text  # a failing command
    assert "broken.md:12: `llama-launcher plan x.gguf --no-such-option` is not a valid" in text
    assert [b.mode for b in blocks(doc)] == ["run", "syntax"] and unmarked(doc) == [15]
