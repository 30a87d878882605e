"""The per-row working set of a table prepare, on disk: a temporary SQLite database.

Why: prepare must find the rows that share a key (duplicates, conflicting labels), each
row's previous split and each new row's place in its class's seeded order, for millions of
rows. Held in numpy arrays that costs about 100 bytes a row of RAM; here every per-row fact
is a table row on disk and each question is one indexed query or ``GROUP BY``. Why SQLite
(the standard library's ``sqlite3``) rather than a hand-written external sort: it sorts
through its own external merge sorter, indexes keys, and caps its memory at its page cache
(:data:`CACHE_KIB`), so RAM stays flat whatever the number of rows, with no sorting code of
ours to get wrong. Python only ever holds one batch (:data:`BATCH` rows) at a time.

The database is a throw-away file in a temporary directory (``$TMPDIR``; it takes about
150 bytes a row), written without journal or fsync (a crash loses only the run), and deleted
when prepare ends. Tables:

- ``rows``: every data row in file order (``idx`` from 0): key, class code (NULL: not
  usable), given split code (-1: none), seeded score;
- ``items``: the rows that get a split, the first row of each key whose rows agree on
  the class; ``split`` is filled by :func:`reprotrain.tables.ledger.assign`;
- ``ledger``: the previous ledger file; ``names``: class code → class name.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from types import TracebackType

import numpy as np

#: SQLite's page cache (and so its sorter's memory) in KiB: the bound on its RAM.
CACHE_KIB = 16 * 1024
#: Rows per executemany / fetchmany: the most Python holds at once.
BATCH = 10_000

_SCHEMA = """
CREATE TABLE rows (idx INTEGER PRIMARY KEY, key BLOB, label INTEGER, given INTEGER,
                   score INTEGER);
CREATE TABLE items (idx INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE,
                    label INTEGER NOT NULL, given INTEGER NOT NULL, score INTEGER NOT NULL,
                    split INTEGER);
CREATE TABLE ledger (key BLOB PRIMARY KEY, label TEXT NOT NULL, split INTEGER NOT NULL,
                     present INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE names (code INTEGER PRIMARY KEY, name TEXT NOT NULL);
"""

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_SIGN = np.uint64(1 << 63)

Row = tuple[int, bytes | None, int | None, int]  # idx, key, class code, given split code


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (a bijection of uint64 that scrambles every bit), in place."""
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def seeded_scores(keys: Sequence[bytes], seed: int) -> list[int]:
    """The order in which new rows fill the splits, as SQLite integers: another order for
    another seed; sorted by (score, key). Vectorised (a per-row hash, as the image ledger's
    ``unit_score``, would cost a Python string a row). The unsigned score is shifted into
    int64 (order kept: SQLite's integers are signed)."""
    if not keys:
        return []
    salt = _mix(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    score = np.frombuffer(b"".join(keys), dtype=">u8")[::2].astype(np.uint64)  # first 8 B
    with np.errstate(over="ignore"):
        score ^= salt
        score = _mix(score)
    return (score ^ _SIGN).view(np.int64).tolist()


def batches(items: Iterable, n: int = BATCH) -> Iterator[list]:
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


class RowStore:
    """The temporary database of one prepare (a context manager: closed and deleted on
    exit). ``seed`` fixes the order in which new rows fill the splits."""

    def __init__(self, seed: int, directory: Path | None = None) -> None:
        self.seed = seed
        self._dir = tempfile.TemporaryDirectory(prefix="reprotrain-rows-", dir=directory)
        self.con = sqlite3.connect(Path(self._dir.name) / "rows.sqlite", isolation_level=None)
        for pragma in (
            "journal_mode = OFF",
            "synchronous = OFF",
            "locking_mode = EXCLUSIVE",
            "temp_store = FILE",
            f"cache_size = -{CACHE_KIB}",
        ):
            self.con.execute(f"PRAGMA {pragma}")
        self.con.executescript(_SCHEMA)
        self.con.execute("BEGIN")  # one transaction: the file is thrown away anyway

    def __enter__(self) -> RowStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()
        self._dir.cleanup()

    def scalar(self, sql: str, args: Sequence = ()) -> int:
        return int(self.con.execute(sql, args).fetchone()[0] or 0)

    # -------------------------------------------------------------- rows and items

    def add_rows(self, rows: Sequence[Row]) -> None:
        """Append data rows (a key of None: a row that cannot be used)."""
        scores = iter(seeded_scores([r[1] for r in rows if r[1] is not None], self.seed))
        self.con.executemany(
            "INSERT INTO rows VALUES (?, ?, ?, ?, ?)",
            [(i, k, c, g, None if k is None else next(scores)) for i, k, c, g in rows],
        )

    def keep_first(self) -> int:
        """Fill ``items``: of each key whose usable rows agree on the class, the first row
        (SQLite takes a bare column from the row holding the one ``MIN``); their count."""
        self.con.execute(
            "INSERT INTO items (idx, key, label, given, score) "
            "SELECT MIN(idx), key, label, given, score FROM rows WHERE label IS NOT NULL "
            "GROUP BY key HAVING COUNT(DISTINCT label) = 1"
        )
        self.con.execute("CREATE INDEX items_order ON items (label, given, score, key)")
        return self.scalar("SELECT COUNT(*) FROM items")

    def usable(self) -> int:
        return self.scalar("SELECT COUNT(*) FROM rows WHERE label IS NOT NULL")

    def conflicting(self) -> Iterator[tuple[bytes, int, int]]:
        """(key, row index, class code) of the usable rows of a key left out of ``items``
        (its rows disagree on the class), by key then file order."""
        yield from self._stream(
            "SELECT r.key, r.idx, r.label FROM rows r WHERE r.label IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM items i WHERE i.key = r.key) ORDER BY r.key, r.idx"
        )

    def class_sizes(self) -> dict[int, int]:
        return dict(self.con.execute("SELECT label, COUNT(*) FROM items GROUP BY label"))

    def drop_classes(self, codes: Sequence[int]) -> list[int]:
        """Take the items of classes ``codes`` out; their row indices (in file order)."""
        marks = ",".join("?" * len(codes))
        where = f"FROM items WHERE label IN ({marks})"
        idx = [i for (i,) in self.con.execute(f"SELECT idx {where} ORDER BY idx", codes)]
        self.con.execute(f"DELETE {where}", codes)
        return idx

    def set_names(self, names: dict[str, int]) -> None:
        self.con.executemany("INSERT INTO names VALUES (?, ?)", [(c, n) for n, c in names.items()])

    def kept(self) -> Iterator[tuple[int, bytes, int]]:
        """(row index, key, split code) of every item, in file order."""
        yield from self._stream("SELECT idx, key, split FROM items ORDER BY idx")

    def split_totals(self) -> dict[int, int]:
        """Items per split code."""
        return dict(self.con.execute("SELECT split, COUNT(*) FROM items GROUP BY split"))

    def split_counts(self) -> list[tuple[int, str, int]]:
        """(split code, class name, items)."""
        return self.con.execute(
            "SELECT i.split, n.name, COUNT(*) FROM items i JOIN names n ON n.code = i.label "
            "GROUP BY i.split, n.name"
        ).fetchall()

    def _stream(self, sql: str, args: Sequence = ()) -> Iterator:
        cursor = self.con.execute(sql, args)
        while batch := cursor.fetchmany(BATCH):
            yield from batch

    # -------------------------------------------------------------- the ledger

    def add_ledger(self, rows: Sequence[tuple[bytes, str, int, int]]) -> None:
        """Rows of the previous ledger; :class:`sqlite3.IntegrityError` on a repeated key."""
        self.con.executemany("INSERT INTO ledger VALUES (?, ?, ?, ?)", rows)

    def take_previous_splits(self) -> None:
        """Each item already in the ledger keeps its split."""
        self.con.execute("UPDATE items SET split = l.split FROM ledger l WHERE l.key = items.key")

    def groups(self) -> list[tuple[int, int, int]]:
        """(class code, given split code, items) of each pool of a class."""
        return self.con.execute(
            "SELECT label, given, COUNT(*) FROM items GROUP BY label, given ORDER BY label, given"
        ).fetchall()

    def old_counts(self, label: int, given: int) -> dict[int, int]:
        """Items of a group already in the ledger, per split code."""
        return dict(
            self.con.execute(
                "SELECT split, COUNT(*) FROM items WHERE label = ? AND given = ? "
                "AND split IS NOT NULL GROUP BY split",
                (label, given),
            )
        )

    def new_items(self, label: int, given: int) -> Iterator[int]:
        """Row indices of a group's items not in the ledger, in seeded order (the index
        ``items_order`` gives it: no sort)."""
        yield from (
            i
            for (i,) in self._stream(
                "SELECT idx FROM items WHERE label = ? AND given = ? AND split IS NULL "
                "ORDER BY score, key",
                (label, given),
            )
        )

    def set_splits(self, pairs: Iterable[tuple[int, int]]) -> None:
        """(split code, row index) of new items, written a batch at a time. Safe while
        :meth:`new_items` reads: ``split`` is in no index that query walks."""
        for batch in batches(pairs):
            self.con.executemany("UPDATE items SET split = ? WHERE idx = ?", batch)

    def relabelled(self) -> int:
        return self.scalar(
            "SELECT COUNT(*) FROM items i JOIN ledger l ON l.key = i.key "
            "JOIN names n ON n.code = i.label WHERE n.name != l.label"
        )

    def removed(self) -> int:
        return self.scalar(
            "SELECT COUNT(*) FROM ledger l WHERE l.present "
            "AND NOT EXISTS (SELECT 1 FROM items i WHERE i.key = l.key)"
        )

    def returned(self) -> int:
        return self.scalar(
            "SELECT COUNT(*) FROM items i JOIN ledger l ON l.key = i.key WHERE NOT l.present"
        )

    def new_ledger(self) -> Iterator[tuple[bytes, str, int, int]]:
        """(key, class, split code, present) of every item and every previous ledger row
        not among them (absent), by class then key (SQLite's binary text order is the code
        point order, Python's)."""
        yield from self._stream(
            "SELECT i.key AS key, n.name AS label, i.split, 1 FROM items i "
            "JOIN names n ON n.code = i.label "
            "UNION ALL SELECT l.key, l.label, l.split, 0 FROM ledger l "
            "WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.key = l.key) "
            "ORDER BY label, key"
        )
