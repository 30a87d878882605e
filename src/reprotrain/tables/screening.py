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
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

from reprotrain.data import row_reader
from reprotrain.progress import progress
from reprotrain.tables import ledger as ledgers
from reprotrain.tables import reading
from reprotrain.tables.rowstore import BATCH, Row, RowStore
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
    """Pass 2's result: the rows (keys, classes, given splits) in ``store``, on disk; in
    RAM only what the quarantine reports, keyed by row index (from 0, file order)."""

    store: RowStore
    rows: int = 0
    names: dict[str, int] = field(default_factory=dict)  # class name → code
    reasons: dict[int, str] = field(default_factory=dict)  # row index → reason
    excerpts: dict[int, str] = field(default_factory=dict)
    lines: dict[int, int] = field(default_factory=dict)  # of the quarantined rows only
    #: Groups of rows with the same features and different labels (row indices, classes).
    conflicts: list[tuple[list[int], list[str]]] = field(default_factory=list)
    pending: list[Row] = field(default_factory=list)  # rows not yet in the store

    def add(self, key: bytes | None, label: str | None, given: int) -> None:
        """One row (key None: it cannot be used)."""
        code = None if label is None else self.names.setdefault(label, len(self.names))
        self.pending.append((self.rows, None if code is None else key, code, given))
        self.rows += 1
        if len(self.pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        self.store.add_rows(self.pending)
        self.pending = []


class Checker:
    """The per-row checks of a schema, with the column positions resolved once."""

    def __init__(
        self, schema: Schema, header: Sequence[str], decimal_comma: Collection[str] = ()
    ) -> None:
        pos = {name: i for i, name in enumerate(header)}
        self.schema = schema
        self.label = pos[schema.label]
        self.split = pos[schema.split] if schema.split else None
        self.inputs = sorted(schema.inputs)  # the key's order: by name
        self.at = [pos[c] for c in self.inputs]
        # How each numeric input is read (None: not numeric).
        self.numeric = [
            (reading.comma_number_value if c in decimal_comma else reading.number_value)
            if c in schema.numeric
            else None
            for c in self.inputs
        ]
        self.text_only = bool(schema.text) and not (schema.numeric or schema.categorical)

    def values(self, cells: Sequence[Any]) -> list[str | float | None]:
        """The canonical input values, in name order; :class:`reading.NotANumber` names
        the column in its message."""
        out: list[str | float | None] = []
        for name, i, numeric in zip(self.inputs, self.at, self.numeric, strict=True):
            if numeric is not None:
                try:  # the hot path (every numeric cell, twice): a plain finite number
                    number = float(cells[i])
                    if number - number == 0.0:  # not NaN (missing) nor ±inf (not a number)
                        out.append(number)
                        continue
                except (ValueError, TypeError):
                    pass
                try:
                    out.append(numeric(cells[i]))
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


def scan(path: Path, header: Sequence[str], checker: Checker, total: int, store: RowStore) -> Scan:
    """Check every row and compute its key (pass 2); the rows go to ``store``."""
    out = Scan(store)
    with progress(total, "prepare: check rows", unit="rows") as bar:
        for chunk in row_reader.iter_chunks(path):
            for row in chunk:
                index = out.rows
                if row.cells is None:
                    reason, key, label, given = row.problem, b"", None, ledgers.NONE
                    out.excerpts[index] = row.excerpt
                else:
                    reason, key, label, given = checker.check(row.cells)
                out.add(None if reason else key, None if reason else label, given)
                if reason:
                    out.reasons[index] = reason
                    out.lines[index] = row.line
            bar.update(len(chunk))
    out.flush()
    return out


# ------------------------------------------------------------------ duplicates, classes


@dataclass(frozen=True)
class Kept:
    """How many rows get a split (``items`` in the store: one per ledger key)."""

    items: int
    duplicates: int  # rows dropped as exact duplicates of a kept row
    conflicting: int  # rows quarantined as duplicates with another label


def dedupe(s: Scan) -> Kept:
    """Keep the first row of each key; quarantine every row of a key whose labels differ.

    Done by the store (one ``GROUP BY`` on disk); Python sees only the conflicting rows."""
    items = s.store.keep_first()
    inverse = {v: k for k, v in s.names.items()}
    conflicting = 0
    for _, group in groupby(s.store.conflicting(), key=itemgetter(0)):
        members = [(idx, code) for _, idx, code in group]
        classes = sorted({inverse[code] for _, code in members})
        rows = [idx for idx, _ in members]
        for i in rows:  # the lines are known in pass 3: see name_conflicts
            s.reasons[i] = CONFLICT
        s.conflicts.append((rows, classes))
        conflicting += len(rows)
    return Kept(items, s.store.usable() - conflicting - items, conflicting)


def name_conflicts(s: Scan) -> None:
    """Each conflicting duplicate's reason names the lines of the others (pass 3 has
    recorded every quarantined row's line)."""
    for members, classes in s.conflicts:
        lines = [s.lines[i] for i in members]
        for i, line in zip(members, lines, strict=True):
            others = ", ".join(str(x) for x in lines if x != line)[:60]
            s.reasons[i] = f"{CONFLICT}: same features as line(s) {others}, labels {classes}"


def drop_small_classes(s: Scan) -> dict[int, int]:
    """Quarantine the rows of classes with fewer than one row per split; the sizes of
    the classes kept (code → items)."""
    sizes = s.store.class_sizes()
    small = sorted(c for c, n in sizes.items() if n < MIN_CLASS_ROWS)
    if not small:
        return sizes
    inverse = {v: k for k, v in s.names.items()}
    for c in small:
        for i in s.store.drop_classes([c]):
            s.reasons[i] = (
                f"{SMALL_CLASS}: {inverse[c]!r} has {sizes[c]} usable row(s), fewer than one "
                "per split"
            )
    log.warning(
        "class(es) %s have fewer than %d usable rows (one per split): their rows are quarantined",
        ", ".join(sorted(inverse[c] for c in small)),
        MIN_CLASS_ROWS,
    )
    return {c: n for c, n in sizes.items() if c not in small}


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
