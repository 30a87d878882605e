"""The CSV/TSV/Parquet row reader the table and series kinds' prepare share."""

from __future__ import annotations

from pathlib import Path

import pytest

from reprotrain.data import row_reader
from reprotrain.errors import DataError


def test_rows_carry_the_line_they_start_on(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b'\xef\xbb\xbftext,label\r\n"two\r\nlines",a\r\n\r\nplain,b\r\nx,y,z\r\n')
    assert row_reader.header(path) == ["text", "label"]  # the BOM is not part of the name
    rows = [r for chunk in row_reader.iter_chunks(path, chunk_rows=2) for r in chunk]
    assert [r.line for r in rows] == [2, 5, 6]
    assert rows[0].cells == ("two\r\nlines", "a") and rows[1].cells == ("plain", "b")
    assert rows[2].cells is None and rows[2].problem.startswith("3 fields")


def test_tsv_and_empty_files(tmp_path: Path) -> None:
    tsv = tmp_path / "t.tsv"
    tsv.write_text("a\tlabel\n1,5\tx\n")
    assert [r.cells for c in row_reader.iter_chunks(tsv) for r in c] == [("1,5", "x")]
    semi = tmp_path / "s.csv"
    semi.write_text("a;label\n1,5;x\n")
    assert row_reader.header(semi) == ["a", "label"]
    assert [r.cells for c in row_reader.iter_chunks(semi) for r in c] == [("1,5", "x")]
    index = tmp_path / "i.csv"
    index.write_text(",text,label\n0,a,x\n")  # pandas' to_csv with its index
    assert row_reader.header(index) == ["column_1", "text", "label"]
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        row_reader.header(tmp_path / "e.csv")


def test_only_a_file_not_separated_by_commas_may_have_decimal_commas(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("a,label\n1.5,x\n")
    (tmp_path / "s.csv").write_text("a;label\n1,5;x\n")
    (tmp_path / "t.tsv").write_text("a\tlabel\n1,5\tx\n")
    assert not row_reader.may_have_decimal_commas(tmp_path / "c.csv")
    assert row_reader.may_have_decimal_commas(tmp_path / "s.csv")
    assert row_reader.may_have_decimal_commas(tmp_path / "t.tsv")
