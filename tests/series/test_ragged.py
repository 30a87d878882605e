"""A series CSV with rows of the wrong field count: those rows are quarantined with their
line and reason (as the table kind does), the rest of the file is the series."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from reprotrain.errors import DataError
from reprotrain.series.frame import MALFORMED, read_source
from reprotrain.series.windows import QUARANTINE, STATS
from tests.series.conftest import run_prepare, write_csv


def _ragged_csv(path: Path) -> Path:
    """60 days of ``time,demand,note``: day 10 has an extra field, day 20 one too few, and
    day 30's note is a quoted field over two lines (one row, two lines: the rows after it
    are one line further down than their position says)."""
    lines = ["time,demand,note"]
    for i, day in enumerate(pd.date_range("2021-01-01", periods=60, freq="D")):
        d = day.strftime("%Y-%m-%d")
        if i == 10:
            lines.append(f"{d},{100 + i},ok,EXTRA")
        elif i == 20:
            lines.append(f"{d},{100 + i}")
        elif i == 30:
            lines.append(f'{d},{100 + i},"two\nlines"')
        else:
            lines.append(f"{d},{100 + i},ok")
    return write_csv(path, "\n".join(lines) + "\n")


def test_reading_quarantines_rows_with_the_wrong_field_count(tmp_path: Path) -> None:
    got = read_source(_ragged_csv(tmp_path / "s.csv"))
    assert [(r.line, r.reason) for r in got.rejected] == [
        (12, f"{MALFORMED}: 4 fields, expected 3 (the header's): '2021-01-11,110,ok,EXTRA'"),
        (22, f"{MALFORMED}: 2 fields, expected 3 (the header's): '2021-01-21,120'"),
    ]
    assert len(got.frame) == 58
    # the index is each row's line in the file: the two-line row pushes the later ones down
    assert got.frame.loc[32, "note"] == "two\nlines"
    assert got.frame.loc[34, "time"] == "2021-02-01"


def test_prepare_uses_the_rest_and_reports_the_ragged_rows(tmp_path: Path) -> None:
    prepared, stats = run_prepare(tmp_path, _ragged_csv(tmp_path / "src" / "s.csv"))
    counts = stats["counts"]
    assert counts["rows"] == 60 and counts["steps"] == 60
    assert counts["quarantined"] == {MALFORMED: 2}
    assert counts["missing_steps"] == 2  # the two days became gaps, interpolated
    assert counts["gaps_interpolated"] == {"gaps": 2, "steps": 2}
    assert json.loads((prepared / STATS).read_text())["counts"]["quarantined"] == {MALFORMED: 2}
    with (prepared / QUARANTINE).open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["line"], r["time"]) for r in rows] == [("12", ""), ("22", "")]
    assert rows[0]["reason"].startswith(f"{MALFORMED}: 4 fields, expected 3")


def test_a_duplicate_after_a_two_line_row_is_quarantined_at_its_own_line(
    tmp_path: Path,
) -> None:
    text = "time,demand,note\n" + "".join(
        f'2021-01-{d:02d},{d},"a\nb"\n' if d == 3 else f"2021-01-{d:02d},{d},x\n"
        for d in range(1, 29)
    )
    text += "2021-01-10,99,x\n"  # a second day 10, on line 31 (day 28 is on line 30)
    prepared, _ = run_prepare(tmp_path, text)
    with (prepared / QUARANTINE).open(newline="", encoding="utf-8") as f:
        lines = [int(r["line"]) for r in csv.DictReader(f)]
    assert lines == [12, 31]  # day 10 is on line 12: day 3's note took two lines


def test_a_file_of_only_malformed_rows_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        run_prepare(tmp_path, "time,demand\n2021-01-01,1,2\n2021-01-02,2,3\n")
    message = str(err.value)
    assert "\n" not in message
    assert "no usable row, all 2 are malformed (line 2: malformed row: 3 fields" in message
