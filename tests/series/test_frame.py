"""Which column is time, target, covariates: as named, or inferred (and the one-line
errors when inference cannot decide)."""

from __future__ import annotations

import pandas as pd
import pytest

from reprotrain.config_kinds import ColumnsConfig
from reprotrain.errors import ConfigError, DataError
from reprotrain.series.frame import infer_roles, parse_times, to_numbers

DAYS = [f"2021-01-{d:02d}" for d in range(1, 11)]


def _frame(**cols: list) -> pd.DataFrame:
    return pd.DataFrame({k: [str(v) for v in vs] for k, vs in cols.items()})


def test_time_by_name_then_the_only_date_column() -> None:
    roles = infer_roles(_frame(DS=DAYS, y=range(10)), ColumnsConfig())
    assert (roles.time, roles.target, roles.covariates) == ("DS", "y", ())
    roles = infer_roles(_frame(when=DAYS, note=["x"] * 10, y=range(10)), ColumnsConfig())
    assert (roles.time, roles.target, roles.unused) == ("when", "y", ("note",))
    assert infer_roles(_frame(date=DAYS, time=DAYS, y=range(10)), ColumnsConfig()).time == "time"


def test_undecidable_roles_ask_for_the_column() -> None:
    with pytest.raises(ConfigError, match=r"^data.columns.time: columns a, b all parse"):
        infer_roles(_frame(a=DAYS, b=DAYS, y=range(10)), ColumnsConfig())
    with pytest.raises(ConfigError, match=r"numeric columns y, temp .*set data.columns.target"):
        infer_roles(_frame(time=DAYS, y=range(10), temp=range(10)), ColumnsConfig())
    roles = infer_roles(
        _frame(time=DAYS, y=range(10), temp=range(10)), ColumnsConfig(covariates=("temp",))
    )
    assert (roles.target, roles.covariates) == ("y", ("temp",))
    with pytest.raises(ConfigError, match=r"no column 'demand' in the source"):
        infer_roles(_frame(time=DAYS, y=range(10)), ColumnsConfig(target="demand"))
    with pytest.raises(ConfigError, match=r"'period' has a name the prepared series uses"):
        infer_roles(_frame(time=DAYS, period=range(10)), ColumnsConfig())
    with pytest.raises(DataError, match=r"column 'label' \(the covariate\) is not numeric"):
        infer_roles(
            _frame(time=DAYS, y=range(10), label=["a"] * 10),
            ColumnsConfig(covariates=("label",)),
        )


def test_a_target_with_some_text_is_still_numeric() -> None:
    values = ["1", "2", "oops", "4", "", "NA", "7", "8", "9", "10"]
    roles = infer_roles(_frame(time=DAYS, y=values), ColumnsConfig())
    assert roles.target == "y"
    parsed, non_numeric, missing = to_numbers(pd.Series(values))
    assert (non_numeric, missing) == (1, 2)
    assert parsed[3] == 4.0 and pd.isna(parsed[2])


def test_timestamps_years_offsets_and_mixed_formats() -> None:
    years = parse_times(pd.Series([1990, 1991, 1992]))
    assert years.tolist() == [pd.Timestamp(f"{y}-01-01") for y in (1990, 1991, 1992)]
    aware = parse_times(pd.Series(["2021-01-01T00:00:00+02:00", "2021-01-01T01:00:00+02:00"]))
    assert aware.tolist() == [pd.Timestamp("2020-12-31 22:00"), pd.Timestamp("2020-12-31 23:00")]
    mixed = parse_times(pd.Series(["2021-01-01", "Jan 2 2021", "nope"]))
    assert mixed.iloc[:2].tolist() == [pd.Timestamp("2021-01-01"), pd.Timestamp("2021-01-02")]
    assert pd.isna(mixed.iloc[2])
    assert parse_times(pd.Series([1.5e9, 1.6e9])).isna().all()  # numbers are not timestamps


def test_reading_a_bom_and_bad_bytes(tmp_path) -> None:
    from reprotrain.series.frame import read_source

    (tmp_path / "bom.csv").write_bytes("\ufefftime,y\n2021-01-01,1\n".encode())
    assert list(read_source(tmp_path / "bom.csv").frame.columns) == ["time", "y"]
    # a row that is not UTF-8 is quarantined (the table kind's reader), the rest read
    latin = "time,y\n2021-01-01,1\n2021-01-02,caf\xe9\n2021-01-03,3\n".encode("latin-1")
    (tmp_path / "latin.csv").write_bytes(latin)
    got = read_source(tmp_path / "latin.csv")
    assert got.frame.index.tolist() == [2, 4]
    assert [(r.line, r.reason.split(" (")[0]) for r in got.rejected] == [
        (3, "malformed row: undecodable bytes")
    ]
    (tmp_path / "latin_header.csv").write_bytes("t\xe9,y\n2021-01-01,1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin_header.csv: the header row is not UTF-8"):
        read_source(tmp_path / "latin_header.csv")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"bad.parquet: cannot read it as a table"):
        read_source(tmp_path / "bad.parquet")


def test_semicolon_file_with_decimal_commas_reads_the_same_numbers(tmp_path) -> None:
    """A spreadsheet's export in a comma-decimal locale: the same series as the dot file."""
    from reprotrain.series.frame import read_source

    dots = tmp_path / "dots.csv"
    dots.write_text("week,demand,temp\n2021-01-04,1.5,-0.25\n2021-01-11,2,\n2021-01-18,3.75,1e3\n")
    semi = tmp_path / "semi.csv"
    semi.write_text("week;demand;temp\n2021-01-04;1,5;-0,25\n2021-01-11;2;\n2021-01-18;3,75;1e3\n")
    a, b = read_source(dots), read_source(semi)
    assert b.decimal_comma == ("demand", "temp") and a.decimal_comma == ()
    for name in ("demand", "temp"):
        assert to_numbers(b.frame[name])[0].tolist() == pytest.approx(
            to_numbers(a.frame[name])[0].tolist(), nan_ok=True
        )
    # A dot beside the commas could be a thousands separator: left as written (not numbers).
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("week;demand\n2021-01-04;1.234,5\n2021-01-11;2,5\n")
    assert read_source(mixed).decimal_comma == ()
