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
