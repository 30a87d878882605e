"""The Markdown pieces every kind's model card is written with (the image card in
:mod:`reprotrain.reports.card`, the table and series cards in their packages)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A pipe table; a cell's ``|`` is escaped and a newline becomes a space, so a class
    name or a quarantine reason cannot break the table."""

    def cell(c: Any) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


def reproduce_section(run_id: str, command: str) -> list[str]:
    """The card's last section: the evaluate run and the command that reproduces it."""
    return ["## Reproduce", "", f"MLflow run: `{run_id}`", "", "```", command, "```", ""]
