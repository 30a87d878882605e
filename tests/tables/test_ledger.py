"""The row ledger: keys independent of column order and formatting, exact stratified
assignment, append-only with absent rows, the file round trip; the on-disk row store that
holds them (duplicates, conflicts)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from reprotrain.data.split import Fractions
from reprotrain.errors import DataError
from reprotrain.tables import ledger, rowstore
from reprotrain.tables.rowstore import RowStore

FRACTIONS = Fractions(0.15, 0.15, 0.5)
NAMES = {"a": 0, "b": 1}


def keys(n: int, offset: int = 0) -> list[bytes]:
    return [ledger.row_key(["t"], [f"row {i}"]) for i in range(offset, offset + n)]


@contextmanager
def assigned(
    k: list[bytes], labels: list[int], given: list[int], seed: int, previous: Path | None = None
) -> Iterator[tuple[RowStore, ledger.Assignment]]:
    """A store holding these rows (codes into NAMES), assigned against the ledger file
    ``previous`` (if any)."""
    with RowStore(seed) as store:
        store.add_rows([(i, *row) for i, row in enumerate(zip(k, labels, given, strict=True))])
        store.keep_first()
        store.set_names(NAMES)
        if previous is not None:
            ledger.read_ledger(previous, store)
        yield store, ledger.assign(store, fractions=FRACTIONS)


def splits(store: RowStore) -> list[int]:
    return [split for _, _, split in store.kept()]


def ledger_rows(path: Path) -> list[list[str]]:
    return list(csv.reader(path.open(newline="")))[1:]


def test_row_keys_are_canonical_and_unambiguous() -> None:
    assert ledger.row_key(["a", "b"], ["x", 1.0]) == ledger.row_key(["a", "b"], ["x", 1.0])
    assert ledger.row_key(["a", "b"], ["x", 1.0]) != ledger.row_key(["a", "b"], ["x", "1.0"])
    assert ledger.row_key(["a", "b"], ["x", None]) != ledger.row_key(["a", "b"], ["x", ""])
    assert ledger.row_key(["a", "b"], ["x1:", "y"]) != ledger.row_key(["a", "b"], ["x", "1:y"])


def test_assignment_is_exact_deterministic_and_append_only(tmp_path: Path) -> None:
    k, labels, given = keys(200), [0] * 140 + [1] * 60, [-1] * 200
    path = tmp_path / "splits.csv"
    with assigned(k, labels, given, seed=1) as (store, _):
        counts = ledger.split_counts(store, ["a", "b"])
        assert counts["val"]["per_class"] == {"a": 21, "b": 9} == counts["test"]["per_class"]
        first = splits(store)
        ledger.write_ledger(path, store)
    with assigned(k, labels, given, seed=1) as (store, _):
        assert splits(store) == first
    with assigned(k, labels, given, seed=2) as (store, _):
        assert splits(store) != first  # another seed, another order
    with assigned(k, labels, given, seed=9, previous=path) as (store, _):
        assert splits(store) == first  # the ledger decides, not the seed
        ledger.write_ledger(tmp_path / "again.csv", store)
    assert (tmp_path / "again.csv").read_bytes() == path.read_bytes()
    # Half the rows leave, 50 new arrive: the kept ones keep their split, the gone are absent.
    k2, l2 = k[100:] + keys(50, offset=1000), labels[100:] + [0] * 50
    with assigned(k2, l2, [-1] * 150, seed=1, previous=path) as (store, second):
        assert splits(store)[:100] == first[100:]
        assert second.removed == 100
        ledger.write_ledger(path, store)
    rows = ledger_rows(path)
    assert len(rows) == 250 and sum(r[3] == "no" for r in rows) == 100
    assert rows == sorted(rows, key=lambda r: (r[1], r[0]))  # by class, then key
    with assigned(k, labels, given, seed=1, previous=path) as (store, third):
        assert splits(store) == first and third.returned == 100


def test_duplicates_keep_their_first_row_and_conflicts_are_left_out() -> None:
    k = keys(12)
    rows = [(i, k[i], i % 2, -1) for i in range(12)]
    rows += [(12, k[3], 1, 2), (13, k[4], 1, -1), (14, k[4], 0, -1)]  # a copy; a conflict
    with RowStore(0) as store:
        store.add_rows(rows)
        assert store.keep_first() == 11 and store.usable() == 15
        assert [(key, i) for key, i, _ in store.conflicting()] == [
            (k[4], 4),
            (k[4], 13),
            (k[4], 14),
        ]
        kept = [i for i, _, _ in store.kept()]
        assert 4 not in kept and 12 not in kept and kept == sorted(kept)
        given = store.con.execute("SELECT given FROM items WHERE idx = 3").fetchone()
        assert given == (-1,)  # the first row's values, not the copy's


def test_a_given_split_is_kept_and_a_later_contradiction_counted(tmp_path: Path) -> None:
    k, labels = keys(30), [0, 1] * 15
    given = [0] * 20 + [1] * 5 + [2] * 5
    with assigned(k, labels, given, seed=0) as (store, _):
        assert splits(store) == given
        ledger.write_ledger(tmp_path / "splits.csv", store)
    with assigned(k, labels, given[::-1], seed=0, previous=tmp_path / "splits.csv") as (
        store,
        flipped,
    ):
        assert splits(store) == given  # the ledger wins
        assert flipped.conflicts == 20


def test_a_damaged_ledger_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "splits.csv"
    with RowStore(0) as store:
        path.write_text("row_hash,label,split,present\nzz,a,train,yes\n")
        with pytest.raises(DataError, match="line 2: bad row"):
            ledger.read_ledger(path, store)
        path.write_text("sha256,label,split\n")
        with pytest.raises(DataError, match="expected the columns"):
            ledger.read_ledger(path, store)
        line = f"{'ab' * 16},a,train,yes\n"
        path.write_text("row_hash,label,split,present\n" + line + line)
        with pytest.raises(DataError, match="a row hash appears twice"):
            ledger.read_ledger(path, store)


def test_the_store_is_deleted_and_its_memory_bounded(tmp_path: Path) -> None:
    with RowStore(0, directory=tmp_path) as store:
        (where,) = list(tmp_path.iterdir())
        assert store.scalar("PRAGMA cache_size") == -rowstore.CACHE_KIB
    assert not where.exists()
