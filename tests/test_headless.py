"""Everything below tui/ and cli/ imports without Textual; only gpu/nvml.py imports pynvml."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import launcher

PACKAGE = Path(launcher.__file__).parent
# the front ends, and the benchmark that drives the TUI
UI_MODULES = (
    "launcher.cli",
    "launcher.__main__",
    "launcher.tui",
    "launcher.benchmarks.tui_refresh",
)


def headless_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages([str(PACKAGE)], prefix="launcher.")]
    return [n for n in names if not n.startswith(UI_MODULES)]


def test_headless_modules_do_not_import_textual() -> None:
    modules = headless_modules()
    assert "launcher.model.synthetic" in modules and "launcher.run.install" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_only_nvml_module_imports_pynvml() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] == "pynvml" for n in names):
                offenders.append(path.relative_to(PACKAGE).as_posix())
    assert set(offenders) <= {"gpu/nvml.py"}, offenders


def test_only_run_package_spawns_processes() -> None:
    spawning = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                if "subprocess" in names or "asyncio.subprocess" in names:
                    spawning.append(rel)
    assert all(rel.startswith("run/") for rel in spawning), spawning
