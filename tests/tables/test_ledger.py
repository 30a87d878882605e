"""The row ledger: keys independent of column order and formatting, exact stratified
assignment, append-only with absent rows, the file round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reprotrain.data.split import Fractions
from reprotrain.errors import DataError
from reprotrain.tables import ledger

FRACTIONS = Fractions(0.15, 0.15, 0.5)


def keys(n: int, offset: int = 0) -> np.ndarray:
    return np.frombuffer(
        b"".join(ledger.row_key(["t"], [f"row {i}"]) for i in range(offset, offset + n)),
        dtype=ledger.KEY_DTYPE,
    )


def test_row_keys_are_canonical_and_unambiguous() -> None:
    assert ledger.row_key(["a", "b"], ["x", 1.0]) == ledger.row_key(["a", "b"], ["x", 1.0])
    assert ledger.row_key(["a", "b"], ["x", 1.0]) != ledger.row_key(["a", "b"], ["x", "1.0"])
    assert ledger.row_key(["a", "b"], ["x", None]) != ledger.row_key(["a", "b"], ["x", ""])
    assert ledger.row_key(["a", "b"], ["x1:", "y"]) != ledger.row_key(["a", "b"], ["x", "1:y"])


def test_assignment_is_exact_deterministic_and_append_only(tmp_path: Path) -> None:
    k, labels = keys(200), np.asarray([0] * 140 + [1] * 60, np.int32)
    given = np.full(200, -1, np.int8)
    first = ledger.assign(
        k, labels, ["a", "b"], given, ledger.Ledger.empty(), seed=1, fractions=FRACTIONS
    )
    counts = ledger.split_counts(first.splits, labels, ["a", "b"])
    assert counts["val"]["per_class"] == {"a": 21, "b": 9} == counts["test"]["per_class"]
    again = ledger.assign(
        k, labels, ["a", "b"], given, ledger.Ledger.empty(), seed=1, fractions=FRACTIONS
    )
    np.testing.assert_array_equal(first.splits, again.splits)
    path = tmp_path / "splits.csv"
    ledger.write_ledger(path, first.ledger)
    back = ledger.read_ledger(path)
    assert ledger.format_ledger(back) == path.read_text()
    # Half the rows leave, 50 new arrive: the kept ones keep their split, the gone are absent.
    k2 = np.concatenate([k[100:], keys(50, offset=1000)])
    l2 = np.concatenate([labels[100:], np.zeros(50, np.int32)])
    second = ledger.assign(
        k2, l2, ["a", "b"], np.full(150, -1, np.int8), back, seed=1, fractions=FRACTIONS
    )
    np.testing.assert_array_equal(second.splits[:100], first.splits[100:])
    assert second.removed == 100 and len(second.ledger) == 250
    assert int((~second.ledger.present).sum()) == 100
    third = ledger.assign(k, labels, ["a", "b"], given, second.ledger, seed=1, fractions=FRACTIONS)
    np.testing.assert_array_equal(third.splits, first.splits)
    assert third.returned == 100


def test_a_given_split_is_kept_and_a_later_contradiction_counted() -> None:
    k, labels = keys(30), np.asarray([0, 1] * 15, np.int32)
    given = np.asarray([0] * 20 + [1] * 5 + [2] * 5, np.int8)
    first = ledger.assign(
        k, labels, ["a", "b"], given, ledger.Ledger.empty(), seed=0, fractions=FRACTIONS
    )
    np.testing.assert_array_equal(first.splits, given)
    flipped = ledger.assign(
        k, labels, ["a", "b"], given[::-1].copy(), first.ledger, seed=0, fractions=FRACTIONS
    )
    np.testing.assert_array_equal(flipped.splits, given)  # the ledger wins
    assert flipped.conflicts == 20


def test_a_damaged_ledger_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "splits.csv"
    path.write_text("row_hash,label,split,present\nzz,a,train,yes\n")
    with pytest.raises(DataError, match="line 2: bad row"):
        ledger.read_ledger(path)
    path.write_text("sha256,label,split\n")
    with pytest.raises(DataError, match="expected the columns"):
        ledger.read_ledger(path)
