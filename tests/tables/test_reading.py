"""Streaming rows with their line numbers, and the canonical values rows are keyed by."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from reprotrain.errors import DataError
from reprotrain.tables import reading


def test_rows_carry_the_line_they_start_on(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b'\xef\xbb\xbftext,label\r\n"two\r\nlines",a\r\n\r\nplain,b\r\nx,y,z\r\n')
    assert reading.header(path) == ["text", "label"]  # the BOM is not part of the name
    rows = [r for chunk in reading.iter_chunks(path, chunk_rows=2) for r in chunk]
    assert [r.line for r in rows] == [2, 5, 6]
    assert rows[0].cells == ("two\r\nlines", "a") and rows[1].cells == ("plain", "b")
    assert rows[2].cells is None and rows[2].problem.startswith("3 fields")


def test_tsv_and_empty_files(tmp_path: Path) -> None:
    tsv = tmp_path / "t.tsv"
    tsv.write_text("a\tlabel\n1,5\tx\n")
    assert [r.cells for c in reading.iter_chunks(tsv) for r in c] == [("1,5", "x")]
    semi = tmp_path / "s.csv"
    semi.write_text("a;label\n1,5;x\n")
    assert reading.header(semi) == ["a", "label"]
    assert [r.cells for c in reading.iter_chunks(semi) for r in c] == [("1,5", "x")]
    index = tmp_path / "i.csv"
    index.write_text(",text,label\n0,a,x\n")  # pandas' to_csv with its index
    assert reading.header(index) == ["column_1", "text", "label"]
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        reading.header(tmp_path / "e.csv")


def test_canonical_values() -> None:
    assert reading.text_value("  a\r\nb ") == "a\nb"
    assert reading.text_value("NA") is None and reading.text_value(float("nan")) is None
    assert reading.number_value("1.50") == reading.number_value("15e-1") == 1.5
    assert reading.number_value("") is None and reading.number_value(3) == 3.0
    with pytest.raises(reading.NotANumber):
        reading.number_value("abc")
    with pytest.raises(reading.NotANumber):
        reading.number_value("inf")
    assert reading.label_value("1.0") == reading.label_value(1) == "1"
    assert reading.label_value("007") == "007" and reading.label_value(" spam ") == "spam"
    assert math.isnan(float("nan")) and reading.label_value("") is None


def test_decimal_commas_read_as_the_same_numbers() -> None:
    assert reading.comma_number_value("1,5") == reading.number_value("1.5") == 1.5
    assert reading.comma_number_value(" -0,25 ") == -0.25
    assert reading.comma_number_value("1,5e3") == 1500.0 and reading.comma_number_value("7") == 7
    assert reading.comma_number_value("NA") is None
    for bad in ("1,234,5", "1.234,5", "a,b", ",5"):
        assert not reading.is_decimal_comma(bad)
        with pytest.raises(reading.NotANumber):
            reading.comma_number_value(bad)
    with pytest.raises(reading.NotANumber):
        reading.number_value("1,5")  # a column without the decimal comma rule


def test_a_column_has_decimal_commas_only_without_dots() -> None:
    tally = reading.CommaTally()
    tally.add(["1,5", "2", "3,25"])
    assert tally.decimal_comma and tally.commas == 2
    tally.add(["1.234,5"])  # a dot: a thousands separator? ambiguous, left as written
    assert not tally.decimal_comma
    words = reading.CommaTally()
    words.add(["red", "blue, green"])
    assert not words.decimal_comma


def test_only_a_file_not_separated_by_commas_may_have_decimal_commas(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("a,label\n1.5,x\n")
    (tmp_path / "s.csv").write_text("a;label\n1,5;x\n")
    (tmp_path / "t.tsv").write_text("a\tlabel\n1,5\tx\n")
    assert not reading.may_have_decimal_commas(tmp_path / "c.csv")
    assert reading.may_have_decimal_commas(tmp_path / "s.csv")
    assert reading.may_have_decimal_commas(tmp_path / "t.tsv")
