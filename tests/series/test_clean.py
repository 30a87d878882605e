"""Each messy-series rule on a crafted CSV: what happens to the rows, and its count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from reprotrain.config_kinds import ColumnsConfig
from reprotrain.series.clean import clean, fill_gaps, gap_runs, infer_frequency, make_grid
from reprotrain.series.frame import infer_roles, read_source
from tests.series.conftest import run_prepare, write_csv


def _days(n: int, start: str = "2021-01-01") -> list[str]:
    return [d.strftime("%Y-%m-%d") for d in pd.date_range(start, periods=n, freq="D")]


def _csv(tmp: Path, rows: list[tuple], header: str = "date,value") -> pd.DataFrame:
    text = header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)
    return read_source(write_csv(tmp / "s.csv", text)).frame


def _clean(frame: pd.DataFrame, max_gap: int = 2):
    return clean(frame, infer_roles(frame, ColumnsConfig()), max_gap)


def test_duplicate_timestamps_quarantine_every_row_of_them(tmp_path: Path) -> None:
    days = _days(30)
    rows = [(d, i) for i, d in enumerate(days)]
    rows.insert(10, (days[9], 99))  # a second row for day 9
    got = _clean(_csv(tmp_path, rows))
    assert got.counts["quarantined"] == {"duplicate timestamp": 2}
    assert [(p.line, p.time) for p in got.quarantine] == [(11, days[9]), (12, days[9])]
    assert "duplicate timestamp 2021-01-10T00:00:00 (2 rows)" in got.quarantine[0].reason
    # the step is a gap of one, interpolated between its neighbours
    assert got.counts["missing_steps"] == 1 and got.interpolated[9]
    assert got.values[9, 0] == 9.0


def test_unparseable_timestamps_are_quarantined(tmp_path: Path) -> None:
    rows = [(d, i) for i, d in enumerate(_days(30))]
    rows[5] = ("not a date", 5)
    rows[6] = ("", 6)
    got = _clean(_csv(tmp_path, rows))
    assert got.counts["quarantined"] == {"unparseable timestamp": 2}
    assert {p.line for p in got.quarantine} == {7, 8}
    assert got.quarantine[0].reason == "unparseable timestamp 'not a date'"
    assert got.counts["gaps_interpolated"] == {"gaps": 1, "steps": 2}


def test_text_values_are_gaps_counted_per_column(tmp_path: Path) -> None:
    rows = [(d, i, i * 2) for i, d in enumerate(_days(30))]
    rows[3] = (rows[3][0], "n/a", 6)  # a missing marker
    rows[4] = (rows[4][0], "error", 8)  # text
    rows[20] = (rows[20][0], 20, "?")
    frame = _csv(tmp_path, rows, "date,value,temp")
    got = clean(frame, infer_roles(frame, ColumnsConfig(target="value", covariates=("temp",))), 2)
    assert got.counts["non_numeric"] == {"value": 1, "temp": 1}
    assert got.counts["missing_values"] == {"value": 1, "temp": 0}
    assert got.counts["gaps_interpolated"] == {"gaps": 2, "steps": 3}
    np.testing.assert_allclose(got.values[3:5, 0], [3.0, 4.0])
    np.testing.assert_allclose(got.values[20, 1], 40.0)
    assert np.isnan(got.raw[3, 0]) and got.interpolated[[3, 4, 20]].all()


def test_short_gaps_are_interpolated_long_and_edge_gaps_left(tmp_path: Path) -> None:
    days = _days(40)
    keep = [i for i in range(40) if i not in {5, 6, 20, 21, 22, 23}]  # 2 missing, 4 missing
    rows = [(days[i], float(i)) for i in keep]
    rows[0] = (days[0], "")  # the first value missing: an edge gap
    got = _clean(_csv(tmp_path, rows), max_gap=2)
    assert got.counts["missing_steps"] == 6
    assert got.counts["gaps_interpolated"] == {"gaps": 1, "steps": 2}
    assert got.counts["gaps_left"] == {"gaps": 2, "steps": 5}
    np.testing.assert_allclose(got.values[5:7, 0], [5.0, 6.0])
    assert np.isnan(got.values[20:24, 0]).all() and np.isnan(got.values[0, 0])
    assert not got.interpolated[20:24].any()


def test_irregular_steps_move_to_the_nearest_step_or_are_quarantined(tmp_path: Path) -> None:
    days = pd.date_range("2021-01-01", periods=30, freq="D")
    rows = [(d.isoformat(), i) for i, d in enumerate(days) if i != 12]
    rows[11] = ((days[12] + pd.Timedelta(hours=3)).isoformat(), 12)  # was day 11: now 12 + 3h
    rows.append(((days[20] - pd.Timedelta(hours=2)).isoformat(), 99))  # near day 20, taken
    got = _clean(_csv(tmp_path, rows))
    assert got.frequency == "D"
    assert got.counts["irregular_moved"] == 1
    assert got.counts["quarantined"] == {"irregular timestamp": 1}
    assert "nearest step 2021-01-21T00:00:00 already has a row" in got.quarantine[0].reason
    assert got.values[12, 0] == 12 and got.values[20, 0] == 20
    assert got.counts["missing_steps"] == 1 and got.interpolated[11]


def test_frequency_inference() -> None:
    weekly = pd.date_range("1958-03-29", periods=50, freq="W-SAT")
    assert infer_frequency(weekly).freqstr == "W-SAT"
    monthly = pd.date_range("2000-01-01", periods=60, freq="MS").delete([7, 8, 30])
    assert infer_frequency(monthly).freqstr == "MS"  # gaps: voted on the regular runs
    assert len(make_grid(monthly, infer_frequency(monthly))) == 60
    hourly = pd.date_range("2024-03-01 00:30", periods=100, freq="h").delete([3, 50, 51])
    assert infer_frequency(hourly).freqstr == "h"
    jitter = [2 if i % 4 == 0 else 0 for i in range(60)]  # every 4th reading 2 min late
    jittery = pd.DatetimeIndex(
        [
            pd.Timestamp("2024-01-01") + pd.Timedelta(minutes=15 * i + j)
            for i, j in enumerate(jitter)
        ]
    )
    offset = infer_frequency(jittery)  # no regular run of 7: the median step
    assert pd.Timedelta(offset) == pd.Timedelta(minutes=15)


def test_gap_runs_and_fill() -> None:
    assert gap_runs(np.array([True, False, True, True, False])) == [(0, 1), (2, 4)]
    raw = np.array([[0.0], [np.nan], [2.0], [np.nan], [np.nan], [np.nan], [6.0]])
    values, interpolated, counts = fill_gaps(raw, 2)
    assert values[1, 0] == 1.0 and np.isnan(values[3:6, 0]).all()
    assert interpolated.tolist() == [False, True, False, False, False, False, False]
    assert counts == {
        "gaps_interpolated": {"gaps": 1, "steps": 1},
        "gaps_left": {"gaps": 1, "steps": 3},
    }


def test_quarantine_csv_lists_each_row_with_its_reason(tmp_path: Path) -> None:
    days = _days(80)
    rows = [(d, i % 7 + i / 10) for i, d in enumerate(days)]
    rows.insert(30, (days[29], 1.0))
    rows[50] = ("31/31/2021", 3.0)
    text = "date,value\n" + "".join(f"{d},{v}\n" for d, v in rows)
    prepared, stats = run_prepare(tmp_path, text, cuts=False)
    quarantine = pd.read_csv(prepared / "quarantine.csv")
    assert list(quarantine.columns) == ["line", "time", "reason"]
    assert quarantine["line"].tolist() == [31, 32, 52]
    assert stats["counts"]["quarantined"] == {"duplicate timestamp": 2, "unparseable timestamp": 1}


def test_the_grid_keeps_the_last_step() -> None:
    """np.arange sizes an int64 ns range in float64 and lost the last day of this one."""
    days = pd.date_range("2020-01-01", periods=240, freq="D")
    grid = make_grid(days, infer_frequency(days))
    assert len(grid) == 240 and grid[-1] == days[-1]


def test_every_source_row_is_accounted_for(tmp_path: Path) -> None:
    """All the rules at once, with covariates: each source row is a step or a quarantined
    line, and every gap step is interpolated or left (and so counted)."""
    days = pd.date_range("2022-01-01", periods=120, freq="D")
    rng = np.random.default_rng(3)
    rows = [
        (d.strftime("%Y-%m-%d"), f"{100 + 10 * np.sin(i / 3):.2f}", f"{rng.normal(15, 3):.1f}")
        for i, d in enumerate(days)
    ]
    rows[7] = (rows[7][0], "oops", rows[7][2])
    rows[30] = ("2022-13-45", *rows[30][1:])
    rows.insert(50, rows[49])
    del rows[70:75]
    rows[90] = ((days[89] + pd.Timedelta(hours=5)).isoformat(), *rows[90][1:])
    rng.shuffle(rows)
    frame = _csv(tmp_path, rows, "date,sales,temperature")
    got = clean(frame, infer_roles(frame, ColumnsConfig(covariates=("temperature",))), 2)
    c = got.counts
    assert sum(c["quarantined"].values()) + c["steps"] - c["missing_steps"] == c["rows"]
    assert c["quarantined"] == {
        "duplicate timestamp": 2,
        "unparseable timestamp": 1,
        "irregular timestamp": 1,
    }
    assert c["non_numeric"] == {"sales": 1, "temperature": 0}
    assert c["steps"] == 120 and c["missing_steps"] == 8  # dup day, bad date, 5 deleted, day 90
    gap_steps = int(np.isnan(got.raw).sum())
    assert c["gaps_interpolated"]["steps"] + c["gaps_left"]["steps"] == gap_steps
    assert c["gaps_left"] == {"gaps": 2, "steps": 10}  # the 5 deleted days, in both columns


def test_a_monthly_series_off_the_month_start_keeps_every_month(tmp_path: Path) -> None:
    """Monthly on the 16th: no pandas alias, no fixed step; each row goes to its month."""
    months = [pd.Timestamp(2000 + m // 12, m % 12 + 1, 16) for m in range(48) if m != 20]
    got = _clean(_csv(tmp_path, [(t.strftime("%Y-%m-%d"), i) for i, t in enumerate(months)]))
    assert got.frequency == "MS" and got.counts["alignment"] == "period start"
    assert len(got.times) == 48 and got.times[0] == pd.Timestamp("2000-01-01")
    assert got.counts["quarantined"] == {} and got.counts["missing_steps"] == 1
    assert got.counts["irregular_moved"] == 47 and got.interpolated[20]
