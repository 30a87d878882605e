"""Which rows of a table go on to the splits: each row checked against the schema (the
quarantine reasons), exact duplicates kept once, duplicates whose labels conflict and classes
too small to split quarantined.

Apart from :mod:`.prepare` (the passes over the file and the writing) because these are the
rules a user reads when a row is missing from the splits; ``quarantine.csv`` names them.
"""

from __future__ import annotations

import csv
import io
import logging
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain.progress import progress
from reprotrain.tables import ledger as ledgers
from reprotrain.tables import reading
from reprotrain.tables.schema import SPLITS, Schema

log = logging.getLogger(__name__)

#: Fewest rows a class needs: one per split. Smaller classes are quarantined (reported).
MIN_CLASS_ROWS = len(SPLITS)
#: Reasons, as written in quarantine.csv (each with its detail after a colon).
MISSING_LABEL = "missing label"
EMPTY_TEXT = "empty text (the only input)"
NO_INPUT = "no input value"
NOT_A_NUMBER = "not a number in numeric column"
BAD_SPLIT = "bad split value"
CONFLICT = "conflicting duplicate"
SMALL_CLASS = "class too small"


@dataclass
class Scan:
    """Pass 2's result: one entry per data row, in file order."""

    # Compact arrays (a million rows: ~21 MB), not lists of Python ints.
    rows: int = 0
    keys: bytearray = field(default_factory=bytearray)
    labels: array = field(default_factory=lambda: array("i"))  # codes into names; -1: none
    given: array = field(default_factory=lambda: array("b"))  # split codes, -1: none given
    names: dict[str, int] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)  # row index → reason
    excerpts: dict[int, str] = field(default_factory=dict)
    lines: dict[int, int] = field(default_factory=dict)  # of the quarantined rows only
    #: Groups of rows with the same features and different labels (row indices, classes).
    conflicts: list[tuple[np.ndarray, list[str]]] = field(default_factory=list)

    def add(self, key: bytes, label: str | None, given: int) -> None:
        self.rows += 1
        self.keys += key
        self.labels.append(-1 if label is None else self.names.setdefault(label, len(self.names)))
        self.given.append(given)


class Checker:
    """The per-row checks of a schema, with the column positions resolved once."""

    def __init__(self, schema: Schema, header: Sequence[str]) -> None:
        pos = {name: i for i, name in enumerate(header)}
        self.schema = schema
        self.label = pos[schema.label]
        self.split = pos[schema.split] if schema.split else None
        self.inputs = sorted(schema.inputs)  # the key's order: by name
        self.at = [pos[c] for c in self.inputs]
        self.numeric = [c in schema.numeric for c in self.inputs]
        self.text_only = bool(schema.text) and not (schema.numeric or schema.categorical)

    def values(self, cells: Sequence[Any]) -> list[str | float | None]:
        """The canonical input values, in name order; :class:`reading.NotANumber` names
        the column in its message."""
        out: list[str | float | None] = []
        for name, i, numeric in zip(self.inputs, self.at, self.numeric, strict=True):
            if numeric:
                try:
                    out.append(reading.number_value(cells[i]))
                except reading.NotANumber as exc:
                    raise reading.NotANumber(f"{NOT_A_NUMBER} {name!r}: {exc}") from None
            else:
                out.append(reading.text_value(cells[i]))
        return out

    def check(self, cells: Sequence[Any]) -> tuple[str | None, bytes, str | None, int]:
        """(reason to quarantine or None, ledger key, class name, given split code)."""
        label = reading.label_value(cells[self.label])
        given = ledgers.NONE
        if self.split is not None:
            value = reading.text_value(cells[self.split])
            if value is not None:
                if value.lower() not in SPLITS:
                    reason = (
                        f"{BAD_SPLIT}: {value!r} in {self.schema.split!r} is not train, val or test"
                    )
                    return reason, b"", None, given
                given = SPLITS.index(value.lower())
        if label is None:
            return MISSING_LABEL, b"", None, given
        try:
            values = self.values(cells)
        except reading.NotANumber as exc:
            return str(exc), b"", None, given
        if all(v is None for v in values):
            return (EMPTY_TEXT if self.text_only else NO_INPUT), b"", None, given
        return None, ledgers.row_key(self.inputs, values), label, given


def scan(path: Path, header: Sequence[str], schema: Schema, total: int) -> Scan:
    """Check every row and compute its key (pass 2)."""
    checker = Checker(schema, header)
    out = Scan()
    empty = bytes(ledgers.KEY_BYTES)
    with progress(total, "prepare: check rows", unit="rows") as bar:
        for chunk in reading.iter_chunks(path):
            for row in chunk:
                index = out.rows
                if row.cells is None:
                    reason, key, label, given = row.problem, empty, None, ledgers.NONE
                    out.excerpts[index] = row.excerpt
                else:
                    reason, key, label, given = checker.check(row.cells)
                out.add(key or empty, None if reason else label, given)
                if reason:
                    out.reasons[index] = reason
                    out.lines[index] = row.line
            bar.update(len(chunk))
    return out


# ------------------------------------------------------------------ duplicates, classes


@dataclass(frozen=True)
class Kept:
    """The rows that get a split: one per ledger key."""

    index: np.ndarray  # row indices (first occurrence of each key), file order
    duplicates: int  # rows dropped as exact duplicates of a kept row
    conflicting: int  # rows quarantined as duplicates with another label


def dedupe(s: Scan, keys: np.ndarray, labels: np.ndarray) -> Kept:
    """Keep the first row of each key; quarantine every row of a key whose labels differ.

    Lean on memory (a million rows): one sort of the usable rows' keys, then only the
    few rows that share a key are looked at."""
    ok = np.flatnonzero(labels >= 0)
    if not len(ok):
        return Kept(ok, 0, 0)
    order = ok[np.argsort(keys[ok], kind="stable")]  # by key, then file order
    sorted_keys = keys[order]
    repeat = np.zeros(len(order), bool)  # the row's key is the previous row's
    np.equal(sorted_keys[1:], sorted_keys[:-1], out=repeat[1:])
    del sorted_keys
    if not repeat.any():
        return Kept(ok, 0, 0)
    shared = repeat.copy()  # rows in a group of two or more
    shared[:-1] |= repeat[1:]
    pos = np.flatnonzero(shared)
    group = np.cumsum(~repeat[pos])  # group number of each shared row
    rows = order[pos]
    drop = np.zeros(len(labels), bool)
    drop[rows[repeat[pos]]] = True  # every duplicate but the first
    conflicting = duplicates = 0
    inverse = {v: k for k, v in s.names.items()}
    bounds = np.flatnonzero(np.diff(group)) + 1
    for members in np.split(rows, bounds):
        classes = sorted({inverse[int(labels[i])] for i in members})
        if len(classes) == 1:
            duplicates += len(members) - 1
            continue
        members = np.sort(members)
        drop[members] = True
        for i in members:  # the lines are known in pass 3: see name_conflicts
            s.reasons[int(i)] = CONFLICT
        s.conflicts.append((members, classes))
        conflicting += len(members)
    return Kept(ok[~drop[ok]], duplicates, conflicting)


def name_conflicts(s: Scan) -> None:
    """Each conflicting duplicate's reason names the lines of the others (pass 3 has
    recorded every quarantined row's line)."""
    for members, classes in s.conflicts:
        lines = [s.lines[int(i)] for i in members]
        for i, line in zip(members, lines, strict=True):
            others = ", ".join(str(x) for x in lines if x != line)[:60]
            s.reasons[int(i)] = f"{CONFLICT}: same features as line(s) {others}, labels {classes}"


def drop_small_classes(s: Scan, kept: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Quarantine the rows of classes with fewer than one row per split."""
    sizes = Counter(labels[kept].tolist())
    small = {c for c, n in sizes.items() if n < MIN_CLASS_ROWS}
    if not small:
        return kept
    inverse = {v: k for k, v in s.names.items()}
    for i in kept[np.isin(labels[kept], list(small))]:
        c = int(labels[i])
        s.reasons[int(i)] = (
            f"{SMALL_CLASS}: {inverse[c]!r} has {sizes[c]} usable row(s), fewer than one per split"
        )
    log.warning(
        "class(es) %s have fewer than %d usable rows (one per split): their rows are quarantined",
        ", ".join(sorted(inverse[c] for c in small)),
        MIN_CLASS_ROWS,
    )
    return kept[~np.isin(labels[kept], list(small))]


def longer_than(text: Any, n: int) -> bool:
    return isinstance(text, str) and len(text.split(None, n)) > n


def quarantine_csv(s: Scan) -> str:
    """``line,reason,excerpt`` in file order."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("line", "reason", "excerpt"))
    for i in sorted(s.reasons):
        w.writerow((s.lines[i], s.reasons[i], s.excerpts.get(i, "")))
    return buf.getvalue()


def reason_counts(s: Scan) -> dict[str, int]:
    """Quarantined rows per reason (the part before the detail)."""
    return dict(sorted(Counter(r.split(":")[0].split(" (")[0] for r in s.reasons.values()).items()))


# ------------------------------------------------------------------ the whole
