"""The bench's comparison as text: the table of measured beside predicted, the spread of
rounds, and a plot of aggregate tokens/s against users."""

from __future__ import annotations

import statistics

from launcher.bench import results
from launcher.bench.results import BenchRun


def table(runs: list[BenchRun]) -> str:
    """The comparison table: measured beside predicted, per layout and concurrency."""
    head = (
        f"{'layout':<16}{'users':>6}{'reqs':>6}{'tokens':>8}{'tok/s':>9}{'predicted':>10}"
        f"{'ratio':>7}{'user p50':>9}{'ttft p50':>9}{'lat p50':>9}{'p95':>8}{'p99':>8}"
        f"{'err':>5}{'tok/s/W':>9}{'$/tok/s':>9}"
    )
    lines = [head]
    for r in runs:
        ratio = (
            r.aggregate_tok_s / r.predicted_aggregate_tok_s if r.predicted_aggregate_tok_s else 0
        )
        ttft = f"{r.ttft_ms_p50:.0f}" if r.ttft_ms_p50 is not None else "-"
        per_w = f"{r.tok_s_per_w:.2f}" if r.tok_s_per_w is not None else "-"
        usd = f"{r.usd_per_tok_s:.2f}" if r.usd_per_tok_s is not None else "-"
        lines.append(
            f"{r.layout:<16}{r.users:>6}{r.requests:>6}{r.tokens:>8}"
            f"{r.aggregate_tok_s:>9.1f}{r.predicted_aggregate_tok_s:>10.1f}{ratio:>7.2f}"
            f"{r.per_user_tok_s_p50:>9.1f}{ttft:>9}{r.latency_ms_p50:>9.0f}"
            f"{r.latency_ms_p95:>8.0f}{r.latency_ms_p99:>8.0f}{r.errors:>5}{per_w:>9}"
            f"{usd:>9}"
        )
    return "\n".join(lines)


def spread(runs: list[BenchRun]) -> list[str]:
    """For each layout and concurrency measured more than once (rounds), the aggregates and
    how far apart they are: the noise any calibrated figure carries."""
    lines = []
    for (layout, users), rows in results.by_point(runs).items():
        if len(rows) < 2:
            continue
        values = [r.aggregate_tok_s for r in rows]
        mean = statistics.mean(values)
        apart = (max(values) - min(values)) / mean * 100 if mean else 0.0
        lines.append(
            f"{layout} at {users} user(s): {' / '.join(f'{v:.1f}' for v in values)} tok/s, "
            f"mean {mean:.1f}, {apart:.1f}% apart"
            + (" (more than 25% apart: was the box busy?)" if apart > 25 else "")
        )
    return lines


def plot(runs: list[BenchRun], width: int = 60, height: int = 12) -> str:
    """Aggregate tokens/s against users, one mark per layout, in plain text."""
    if not runs:
        return ""
    layouts = sorted({r.layout for r in runs})
    marks = "*o+x#@%&"
    users = sorted({r.users for r in runs})
    top = max(r.aggregate_tok_s for r in runs) or 1.0
    grid = [[" "] * width for _ in range(height)]
    span = max(len(users) - 1, 1)
    for i, layout in enumerate(layouts):
        for r in runs:
            if r.layout != layout:
                continue
            x = round(users.index(r.users) / span * (width - 1))
            y = height - 1 - round(r.aggregate_tok_s / top * (height - 1))
            grid[y][x] = marks[i % len(marks)]
    lines = [f"{top:>9.0f} |" + "".join(grid[0])]
    lines += ["          |" + "".join(row) for row in grid[1:-1]]
    lines.append(f"{0:>9} |" + "".join(grid[-1]))
    axis = [" "] * width
    for u in users:
        label = str(u)
        x = min(round(users.index(u) / span * (width - 1)), width - len(label))
        axis[x : x + len(label)] = label
    lines.append("          +" + "-" * width)
    lines.append("    users  " + "".join(axis))
    lines.append(
        "  "
        + "   ".join(f"{marks[i % len(marks)]} {name}" for i, name in enumerate(layouts))
        + "   (aggregate tok/s)"
    )
    return "\n".join(lines)
