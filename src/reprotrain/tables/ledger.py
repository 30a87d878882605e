"""The table kind's row ledger (``data/table/splits.csv``: ``row_hash,label,split,present``):
which split each row is in, forever.

The rules are the image ledger's (:mod:`reprotrain.data.split`, whose pools, targets and
seeded order this module reuses): exactly stratified per class, append-only, a row that left
the data keeps its row (``present = no``) so that it gets its split back when it returns,
a given split column is respected (the ledger wins over a later contradiction, reported).
What differs is the scale: a table may have millions of rows, so the ledger is held as
numpy arrays (16-byte keys, class codes, split codes: about 20 bytes a row) instead of one
Python object per row.

A row's key is the hash of its feature values (:func:`row_key`): the input columns' names
and canonical values (:mod:`.reading`), in name order. So the order of the columns or
rows, CSV quoting, number formatting (``1.50`` = ``1.5``), surrounding whitespace and
line endings change no key, and neither do the label, the split column or ignored columns.
Renaming, adding or removing an input column changes every key (the schema change is
reported): delete the ledger to re-split from scratch, or restore the column.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain.data.split import PRESENT, Fractions, pool_of, pool_splits, pool_targets
from reprotrain.errors import DataError
from reprotrain.fsio import atomic_path
from reprotrain.tables.schema import SPLITS

log = logging.getLogger(__name__)

LEDGER_COLUMNS = ("row_hash", "label", "split", "present")
KEY_BYTES = 16  # 128 bits: no collision among billions of rows, half the ledger of sha256
KEY_DTYPE = f"S{KEY_BYTES}"
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
    """A key as the ledger writes it (numpy's ``S16`` drops trailing zero bytes: put back)."""
    return bytes(key).hex().ljust(2 * KEY_BYTES, "0")


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (a bijection of uint64 that scrambles every bit), vectorised
    and in place (a million rows: one temporary at a time)."""
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def seeded_order(keys: np.ndarray, seed: int) -> np.ndarray:
    """The order in which new rows fill the splits: fixed by ``seed`` and the keys, another
    for another seed. Vectorised (a per-row hash, as the image ledger's ``unit_score``,
    costs a million Python strings at a million rows); ties (never, in 64 bits) by key."""
    keys = np.ascontiguousarray(keys, dtype=KEY_DTYPE)
    salt = _mix(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    score = keys.view(">u8")[::2].astype(np.uint64)  # the keys' first 8 bytes
    with np.errstate(over="ignore"):
        score ^= salt
        score = _mix(score)
    return np.lexsort((keys, score))


@dataclass
class Ledger:
    """The ledger as arrays sorted by key: ``labels[i]`` indexes ``names``."""

    keys: np.ndarray  # KEY_DTYPE
    labels: np.ndarray  # int32 codes into names
    names: tuple[str, ...]
    splits: np.ndarray  # int8 codes into SPLITS
    present: np.ndarray  # bool

    @classmethod
    def empty(cls) -> Ledger:
        return cls(
            np.empty(0, KEY_DTYPE),
            np.empty(0, np.int32),
            (),
            np.empty(0, np.int8),
            np.empty(0, bool),
        )

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Index of each key in the ledger, -1 where absent."""
        if not len(self.keys):
            return np.full(len(keys), -1, np.int64)
        pos = np.searchsorted(self.keys, keys).clip(0, len(self.keys) - 1)
        return np.where(self.keys[pos] == keys, pos, -1)


def _fix(path: Path) -> str:
    return f"Restore it from git (git checkout -- {path}) or delete it to re-split from scratch"


def read_ledger(path: Path) -> Ledger:
    """The previous assignment, absent rows included (empty when there is no file yet)."""
    path = Path(path)
    if not path.is_file():
        return Ledger.empty()
    keys, labels, splits, present = bytearray(), array("i"), array("b"), array("b")
    codes: dict[str, int] = {}
    flags = {v: k for k, v in PRESENT.items()}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        columns = tuple(next(reader, ()))
        if columns != LEDGER_COLUMNS:
            raise DataError(
                f"{path}: expected the columns {','.join(LEDGER_COLUMNS)}, got "
                f"{','.join(columns)}. {_fix(path)}"
            )
        for line, row in enumerate(reader, start=2):
            try:
                key_hex, label, split, flag = row
                key = bytes.fromhex(key_hex)
                if len(key) != KEY_BYTES or not label:
                    raise ValueError
                splits.append(SPLITS.index(split))
                present.append(flags[flag])
            except (ValueError, KeyError):
                raise DataError(f"{path} line {line}: bad row {row}. {_fix(path)}") from None
            keys += key
            labels.append(codes.setdefault(label, len(codes)))
    arr = np.frombuffer(bytes(keys), dtype=KEY_DTYPE)
    order = np.argsort(arr, kind="stable")
    if len(arr) and (arr[order][1:] == arr[order][:-1]).any():
        raise DataError(f"{path}: a row hash appears twice. {_fix(path)}")
    return Ledger(
        arr[order],
        np.asarray(labels, np.int32)[order],
        tuple(codes),
        np.asarray(splits, np.int8)[order],
        np.asarray(present, bool)[order],
    )


def _ledger_lines(ledger: Ledger) -> Iterator[str]:
    """The ledger's CSV lines sorted by (label, row_hash): stable, so git diffs show only
    real changes."""
    yield ",".join(LEDGER_COLUMNS) + "\n"
    if not len(ledger):
        return
    names = sorted(set(ledger.names))
    rank = np.asarray([names.index(n) for n in ledger.names], np.int32)
    quoted = [_csv_cell(n) for n in ledger.names]
    for i in np.lexsort((ledger.keys, rank[ledger.labels])):
        yield (
            f"{key_hex(ledger.keys[i])},{quoted[ledger.labels[i]]},{SPLITS[ledger.splits[i]]},"
            f"{PRESENT[bool(ledger.present[i])]}\n"
        )


def _csv_cell(text: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([text])
    return buf.getvalue()


def format_ledger(ledger: Ledger) -> str:
    """The ledger file's text."""
    return "".join(_ledger_lines(ledger))


def write_ledger(path: Path, ledger: Ledger) -> None:
    """Streamed, atomically (a killed prepare leaves the old ledger, never half of one)."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as f:
        f.writelines(_ledger_lines(ledger))


@dataclass(frozen=True)
class Assignment:
    """Each item's split (codes into SPLITS), the new ledger and what to report."""

    splits: np.ndarray
    ledger: Ledger
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


def _fill(n: int, counts: dict[str, int], targets: dict[str, int], pool: str) -> np.ndarray:
    """Splits of a pool's ``n`` new rows, in their seeded order: each to the split furthest
    below its target (ties: test, then val, then train), as the image ledger does."""
    allowed = [s for s in ("test", "val", "train") if s in pool_splits(pool)]
    rank = {s: -i for i, s in enumerate(allowed)}
    out = np.empty(n, np.int8)
    for j in range(n):
        best = max(allowed, key=lambda s: (targets[s] - counts[s], rank[s]))
        counts[best] += 1
        out[j] = SPLITS.index(best)
    return out


def assign(
    keys: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    given: np.ndarray,
    previous: Ledger,
    *,
    seed: int,
    fractions: Fractions,
) -> Assignment:
    """The split of each item (distinct ``keys``; ``labels`` codes into ``names``; ``given``
    split codes, -1 for none), keeping every assignment in ``previous``. Pure."""
    names = tuple(names)
    given_names = [SPLITS[g] if g >= 0 else None for g in range(-1, len(SPLITS))]
    has_val, has_test = bool((given == 1).any()), bool((given == 2).any())
    pool_names = [pool_of(g, has_val, has_test) for g in given_names]  # index: given + 1
    at = previous.lookup(keys)
    found = at >= 0
    out = _take(previous.splits, at, NONE).astype(np.int8)
    relabelled = _relabelled(previous, at, found, labels, names) if len(previous) else 0
    conflicts = 0
    group = labels.astype(np.int32) * 4 + (given.astype(np.int32) + 1)
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    for members in np.split(order, bounds) if len(order) else []:
        pool = pool_names[int(given[members[0]]) + 1]
        targets = pool_targets(pool, len(members), fractions)
        old = members[found[members]]
        counts = {s: int((out[old] == i).sum()) for i, s in enumerate(SPLITS)}
        allowed = [SPLITS.index(s) for s in pool_splits(pool)]
        told = old[given[old] >= 0]
        conflicts += int((~np.isin(out[told], allowed)).sum())
        new = members[~found[members]]
        new = new[seeded_order(keys[new], seed)]
        out[new] = _fill(len(new), counts, targets, pool)
    ledger = _merge(keys, labels, names, out, previous, found, at)
    removed = int(previous.present.sum() - previous.present[at[found]].sum())
    returned = int((~previous.present[at[found]]).sum())
    return Assignment(out, ledger, conflicts, relabelled, removed, returned)


def _relabelled(
    previous: Ledger, at: np.ndarray, found: np.ndarray, labels: np.ndarray, names: tuple
) -> int:
    """Rows in the ledger whose class changed."""
    # Previous class codes in today's names (-2: a class gone from today's data).
    recode = np.asarray([names.index(n) if n in names else -2 for n in previous.names] + [-1])
    return int((found & (recode[_take(previous.labels, at, -1)] != labels)).sum())


def _take(values: np.ndarray, at: np.ndarray, fill: int) -> np.ndarray:
    """``values[at]``, ``fill`` where ``at`` is -1 (also when ``values`` is empty)."""
    if not len(values):
        return np.full(len(at), fill, dtype=values.dtype)
    return np.where(at >= 0, values[at.clip(0)], fill)


def _merge(
    keys: np.ndarray,
    labels: np.ndarray,
    names: tuple[str, ...],
    splits: np.ndarray,
    previous: Ledger,
    found: np.ndarray,
    at: np.ndarray,
) -> Ledger:
    """The new ledger: every item present, every other previous row absent."""
    if not len(previous):  # the first prepare: no absent rows to add
        order = np.argsort(keys, kind="stable")
        return Ledger(
            keys[order],
            labels.astype(np.int32)[order],
            names,
            splits[order],
            np.ones(len(keys), bool),
        )
    gone = np.ones(len(previous), bool)
    gone[at[found]] = False
    all_names = tuple(dict.fromkeys((*names, *previous.names)))
    remap = np.asarray([all_names.index(n) for n in previous.names] or [0], np.int32)
    merged_keys = np.concatenate([keys.astype(KEY_DTYPE), previous.keys[gone]])
    order = np.argsort(merged_keys, kind="stable")
    return Ledger(
        merged_keys[order],
        np.concatenate([labels.astype(np.int32), remap[previous.labels[gone]]])[order],
        all_names,
        np.concatenate([splits, previous.splits[gone]]).astype(np.int8)[order],
        np.concatenate([np.ones(len(keys), bool), np.zeros(int(gone.sum()), bool)])[order],
    )


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


def split_counts(splits: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """``{split: {total, per_class: {class: n}}}``."""
    out: dict[str, Any] = {}
    for i, split in enumerate(SPLITS):
        mine = labels[splits == i]
        per = np.bincount(mine, minlength=len(names)) if len(names) else []
        out[split] = {
            "total": len(mine),
            "per_class": {n: int(c) for n, c in zip(names, per, strict=True)},
        }
    return out
