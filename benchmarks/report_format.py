"""The Markdown and number formatting the benchmark tables are rendered with
(``benchmarks/report.py``, ``benchmarks/report_kinds.py``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; ``None`` cells show as an en dash."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join("–" if c is None else str(c) for c in row) + " |")
    return "\n".join(lines)


def _get(data: Mapping[str, Any], dotted: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``; None where any key is missing."""
    node: Any = data
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _num(value: Any, digits: int = 2, suffix: str = "") -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.{digits}f}{suffix}" if isinstance(value, float) else f"{value}{suffix}"


def _source(name: str, data: Mapping[str, Any]) -> str:
    """The line under each table: the file, the machine and the date it records."""
    machine = data.get("machine", {})
    cpus = machine.get("cpus") or machine.get("nproc")
    parts = [f"`benchmarks/results/{name}.json`"]
    if cpus:
        parts.append(f"{cpus} CPU cores")
    if date := data.get("date"):
        parts.append(str(date)[:10])
    return "Source: " + ", ".join(parts) + "."
