"""The direction of imports between the layers of DESIGN.md, checked on every module.

Each package has a rank; a module may import its own package and packages of a lower rank,
never one of its own rank or above, with DESIGN.md's one exception (``run`` starts the router).
The front ends (``cli``, ``tui``) reach processes, the router and profile files only through
``app``. Deferred imports inside functions count as much as those at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import launcher

PACKAGE = Path(launcher.__file__).parent

RANK = {
    "benchmarks": 6,
    "cli": 6,
    "tui": 6,
    "app": 5,
    "bench": 4,
    "run": 3,
    "router": 3,
    "profiles": 3,
    "plan": 2,
    "spec": 2,
    "llamacpp": 1,
    "model": 1,
    "gpu": 1,
    "paths": 0,
    "errors": 0,
}
ENTRY = {"__init__", "__main__"}  # launcher/__init__.py and __main__.py: above everything
# run starts the router; `tui` opens the TUI; a benchmark drives the TUI
EXCEPTIONS = {("run", "router"), ("cli", "tui"), ("benchmarks", "tui")}
FRONT_ENDS = {"cli", "tui"}
BEHIND_APP = {"run", "router", "profiles"}


def layer(module: str) -> str:
    """``launcher.plan.layouts`` -> ``plan``; ``launcher.paths`` -> ``paths``."""
    return module.split(".")[1].removesuffix(".py") if module.count(".") else module


def imports(source: str, module: str) -> list[str]:
    """Every launcher module ``source`` imports, relative imports resolved against ``module``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out += [f"{name}.{a.name}" if name == "launcher" else name for a in node.names]
    return [m for m in out if m == "launcher" or m.startswith("launcher.")]


def violations(sources: dict[str, str]) -> list[str]:
    """``module imports target`` for each import that breaks the layer rules; ``sources``
    maps module names (``launcher.plan.layouts``) to their text."""
    bad = []
    for module, source in sources.items():
        here = layer(module)
        if here in ENTRY:
            continue
        for target in imports(source, module):
            there = layer(target)
            if there == here or there not in RANK:
                continue
            if here in FRONT_ENDS and there in BEHIND_APP:
                bad.append(f"{module} imports {target} (front ends call launcher.app)")
            elif RANK[there] >= RANK[here] and (here, there) not in EXCEPTIONS:
                bad.append(f"{module} imports {target} ({here} is not above {there})")
    return bad


def tree_sources() -> dict[str, str]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("launcher", *parts)).removesuffix(".__init__")
        out[name] = path.read_text()
    return out


def test_every_package_has_a_rank() -> None:
    sources = tree_sources()
    packages = {layer(m) for m in sources if m != "launcher"}
    assert packages - ENTRY <= set(RANK), packages - ENTRY - set(RANK)
    assert {"app", "spec", "llamacpp", "cli", "tui"} <= packages


def test_the_tree_keeps_the_layers() -> None:
    assert violations(tree_sources()) == []


def test_a_wrong_import_is_caught() -> None:
    # a test that cannot fail proves nothing: each rule on a module written to break it
    wrong = {
        "launcher.plan.layouts": "from launcher.run.supervisor import Supervisor",
        "launcher.router.server": "def f():\n    from launcher.run import fleet_state\n",
        "launcher.spec.fleet": "import launcher.plan.advisor",
        "launcher.tui.screens.plan": "from launcher.run.daemon import stop_fleet",
        "launcher.cli.commands": "from launcher.profiles import launch",
        "launcher.llamacpp.args": "from .. import plan",
    }
    found = violations(wrong)
    assert len(found) == len(wrong), found
    allowed = {
        "launcher.run.supervisor": "from launcher.router.server import Router",
        "launcher.app.fleet": "from launcher.run import daemon",
        "launcher.tui.app": "from launcher.app.fleet import FleetState",
        "launcher.plan.layouts": "from launcher.llamacpp.args import ServerArgs",
    }
    assert violations(allowed) == []
