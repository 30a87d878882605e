"""The table kind's row ledger (``data/table/splits.csv``: ``row_hash,label,split,present``):
which split each row is in, forever.

The rules are the image ledger's (:mod:`reprotrain.data.split`, whose pools, targets and
seeded order this module reuses): exactly stratified per class, append-only, a row that left
the data keeps its row (``present = no``) so that it gets its split back when it returns,
a given split column is respected (the ledger wins over a later contradiction, reported).
What differs is the scale: a table may have millions of rows, so neither the ledger nor the
rows are held in RAM: both live in prepare's on-disk :class:`~.rowstore.RowStore`, read and
written a batch at a time, and the assignment needs only per-class counts in Python.

A row's key is the hash of its feature values (:func:`row_key`): the input columns' names
and canonical values (:mod:`.reading`), in name order. So the order of the columns or
rows, CSV quoting, number formatting (``1.50`` = ``1.5`` = ``1,5`` in a decimal-comma
column), surrounding whitespace and line endings change no key, and neither do the label,
the split column or ignored columns. Renaming, adding or removing an input column changes
every key (the schema change is reported): delete the ledger to re-split from scratch, or
restore the column.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reprotrain.data.split import PRESENT, Fractions, pool_of, pool_splits, pool_targets
from reprotrain.errors import DataError
from reprotrain.fsio import atomic_path
from reprotrain.tables.rowstore import RowStore, batches
from reprotrain.tables.schema import SPLITS

log = logging.getLogger(__name__)

LEDGER_COLUMNS = ("row_hash", "label", "split", "present")
KEY_BYTES = 16  # 128 bits: no collision among billions of rows, half the ledger of sha256
NONE = -1  # split code: none given / not assigned


def row_key(names: Sequence[str], values: Sequence[str | float | None]) -> bytes:
    """The ledger key of a row: ``values`` canonical (:mod:`.reading`) in the order of
    ``names``, which the caller sorts. Length-prefixed, so no value can mimic two."""
    parts = []
    for name, v in zip(names, values, strict=True):
        if v is None:
            parts.append(f"{len(name)}:{name}-")
        elif isinstance(v, float):
            parts.append(f"{len(name)}:{name}n{v!r}")
        else:
            parts.append(f"{len(name)}:{name}s{len(v)}:{v}")
    return hashlib.sha256("".join(parts).encode("utf-8", "surrogateescape")).digest()[:KEY_BYTES]


def key_hex(key: bytes) -> str:
    """A key as the ledger writes it."""
    return bytes(key).hex()


def _fix(path: Path) -> str:
    return f"Restore it from git (git checkout -- {path}) or delete it to re-split from scratch"


def read_ledger(path: Path, store: RowStore) -> int:
    """Load the previous assignment, absent rows included, into ``store`` (streamed); its
    rows (0 when there is no file yet)."""
    path = Path(path)
    if not path.is_file():
        return 0
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        columns = tuple(next(reader, ()))
        if columns != LEDGER_COLUMNS:
            raise DataError(
                f"{path}: expected the columns {','.join(LEDGER_COLUMNS)}, got "
                f"{','.join(columns)}. {_fix(path)}"
            )
        n = 0
        for batch in batches(_ledger_rows(path, reader)):
            try:
                store.add_ledger(batch)
            except sqlite3.IntegrityError:
                raise DataError(f"{path}: a row hash appears twice. {_fix(path)}") from None
            n += len(batch)
    return n


def _ledger_rows(path: Path, reader: Iterable[list[str]]) -> Iterator[tuple[bytes, str, int, int]]:
    flags = {v: int(k) for k, v in PRESENT.items()}
    for line, row in enumerate(reader, start=2):
        try:
            hex_key, label, split, flag = row
            key = bytes.fromhex(hex_key)
            if len(key) != KEY_BYTES or not label:
                raise ValueError
            yield key, label, SPLITS.index(split), flags[flag]
        except (ValueError, KeyError):
            raise DataError(f"{path} line {line}: bad row {row}. {_fix(path)}") from None


def _ledger_lines(store: RowStore) -> Iterator[str]:
    """The new ledger's CSV lines sorted by (label, row_hash): stable, so git diffs show
    only real changes."""
    yield ",".join(LEDGER_COLUMNS) + "\n"
    quoted: dict[str, str] = {}
    for key, label, split, present in store.new_ledger():
        cell = quoted.get(label) or quoted.setdefault(label, _csv_cell(label))
        yield f"{key.hex()},{cell},{SPLITS[split]},{PRESENT[bool(present)]}\n"


def _csv_cell(text: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([text])
    return buf.getvalue()


def write_ledger(path: Path, store: RowStore) -> None:
    """Streamed, atomically (a killed prepare leaves the old ledger, never half of one)."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as f:
        f.writelines(_ledger_lines(store))


@dataclass(frozen=True)
class Assignment:
    """What to report about an assignment (the splits are in the store)."""

    conflicts: int  # rows whose given split contradicts the ledger (the ledger wins)
    relabelled: int  # rows whose class changed (they keep their split)
    removed: int  # rows no longer in the data (kept, marked absent)
    returned: int  # rows back in the data (with their old split)

    def report(self) -> dict[str, int]:
        return {
            "split_conflicts": self.conflicts,
            "relabelled": self.relabelled,
            "removed": self.removed,
            "returned": self.returned,
        }


def _fill(
    new: Iterable[int], counts: dict[str, int], targets: dict[str, int], pool: str
) -> Iterator[tuple[int, int]]:
    """(split code, row) of a pool's new rows, in their seeded order: each to the split
    furthest below its target (ties: test, then val, then train), as the image ledger does."""
    allowed = [s for s in ("test", "val", "train") if s in pool_splits(pool)]
    codes = {s: SPLITS.index(s) for s in allowed}
    for row in new:
        best, gap = allowed[0], targets[allowed[0]] - counts[allowed[0]]
        for split in allowed[1:]:  # a tie keeps the earlier split
            if targets[split] - counts[split] > gap:
                best, gap = split, targets[split] - counts[split]
        counts[best] += 1
        yield codes[best], row


def assign(store: RowStore, *, fractions: Fractions) -> Assignment:
    """Give every item of ``store`` a split (``items.split``), keeping every assignment of
    its previous ledger: per pool of a class (its given split), the targets of its size,
    the counts of its rows already assigned, then its new rows in seeded order."""
    store.take_previous_splits()
    groups = store.groups()
    givens = {g for _, g, _ in groups}
    has_val, has_test = 1 in givens, 2 in givens
    conflicts = 0
    for label, given, n in groups:
        pool = pool_of(SPLITS[given] if given >= 0 else None, has_val, has_test)
        counts = dict.fromkeys(SPLITS, 0)
        for code, k in store.old_counts(label, given).items():
            counts[SPLITS[code]] = k
        if given >= 0:
            conflicts += sum(k for s, k in counts.items() if s not in pool_splits(pool))
        targets = pool_targets(pool, n, fractions)
        store.set_splits(_fill(store.new_items(label, given), counts, targets, pool))
    return Assignment(conflicts, store.relabelled(), store.removed(), store.returned())


def log_report(assignment: Assignment, path: Path) -> None:
    """What the user should know about kept-but-contradicted assignments."""
    if assignment.conflicts:
        log.warning(
            "%d row(s) have a split column value that contradicts %s; the ledger wins (an "
            "assigned row never moves). Delete %s to re-split from scratch",
            assignment.conflicts,
            path,
            path,
        )
    for n, what in (
        (assignment.relabelled, "changed class and keep their split"),
        (assignment.removed, f"left the data; {path} keeps their split in case they return"),
        (assignment.returned, "came back and keep the split they had"),
    ):
        if n:
            log.info("%d row(s) %s", n, what)


def split_counts(store: RowStore, names: Sequence[str]) -> dict[str, Any]:
    """``{split: {total, per_class: {class: n}}}`` of the items."""
    out: dict[str, Any] = {s: {"total": 0, "per_class": dict.fromkeys(names, 0)} for s in SPLITS}
    for code, name, n in store.split_counts():
        if name in out[SPLITS[code]]["per_class"]:
            out[SPLITS[code]]["per_class"][name] = n
            out[SPLITS[code]]["total"] += n
    return out
