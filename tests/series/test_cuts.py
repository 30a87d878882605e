"""The recorded cuts: kept when rows are appended, moved by recut, and a changed value
inside a recorded period reported (on the real co2 slice)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from reprotrain.series.cuts import Cuts, first_cuts, period_of, read_ledger
from reprotrain.series.windows import load_meta, load_windows
from tests.series.conftest import run_prepare


@pytest.fixture(scope="module")
def co2(co2_csv: Path) -> pd.DataFrame:
    return pd.read_csv(co2_csv, dtype=str)


def test_first_cuts_at_the_fractions() -> None:
    times = pd.date_range("2020-01-01", periods=100, freq="D")
    cuts = first_cuts(times, 0.2, 0.1)
    assert cuts == Cuts(times[70], times[90])
    periods = period_of(times, cuts)
    assert (periods == "train").sum() == 70 and (periods == "test").sum() == 10


def test_appended_rows_keep_the_cuts_and_extend_test(tmp_path: Path, co2: pd.DataFrame) -> None:
    _, first = run_prepare(tmp_path, co2.head(200))
    ledger = read_ledger(tmp_path / "cuts.json")
    assert ledger is not None and ledger.cuts.as_dict() == first["cuts"]
    assert first["cuts_recorded"] is False and first["frequency"] == "W-SAT"

    prepared, second = run_prepare(tmp_path, co2.head(260))
    assert second["cuts"] == first["cuts"] and second["cuts_recorded"] is True
    assert second["periods"]["train"] == first["periods"]["train"]
    assert second["periods"]["test"]["steps"] == first["periods"]["test"]["steps"] + 60
    assert second["changed"] == {
        "compared": True,
        "rows": 0,
        "periods": {},
        "appended": 60,
        "prepended": 0,
    }
    assert len(load_windows(prepared, "test")) == first["counts"]["windows"]["test"] + 60
    assert read_ledger(tmp_path / "cuts.json").digests[:200] == ledger.digests
    assert len(read_ledger(tmp_path / "cuts.json").digests) == 260

    _, recut = run_prepare(tmp_path, co2.head(260), recut=True)
    assert recut["cuts"] != first["cuts"] and recut["changed"]["recut"] is True
    assert recut["periods"]["test"]["steps"] == round(260 * 0.15)
    assert (
        json.loads((tmp_path / "cuts.json").read_text())["val_start"]
        == (recut["cuts"]["val_start"])
    )


def test_a_changed_value_in_a_cut_period_is_reported(
    tmp_path: Path, co2: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    run_prepare(tmp_path, co2.head(220))
    revised = co2.head(220).copy()
    revised.loc[10, "co2"] = "999.9"  # a train week revised
    revised.loc[215, "co2"] = ""  # a test week gone missing
    with caplog.at_level("WARNING"):
        prepared, stats = run_prepare(tmp_path, revised)
    changed = stats["changed"]
    assert changed["rows"] == 2
    assert changed["periods"]["train"] == {"rows": 1, "times": ["1958-06-07T00:00:00"]}
    assert changed["periods"]["test"]["rows"] == 1
    assert load_meta(prepared).changed == changed
    assert "2 steps changed inside the recorded periods" in caplog.text
    # reported again on the next run: the ledger keeps the values as first recorded
    _, again = run_prepare(tmp_path, revised)
    assert again["changed"]["rows"] == 2


def test_other_columns_are_not_compared_but_keep_the_cuts(
    tmp_path: Path, co2: pd.DataFrame
) -> None:
    _, first = run_prepare(tmp_path, co2.head(150))
    more = co2.head(150).assign(flag="1")
    _, second = run_prepare(tmp_path, more, columns={"target": "co2", "covariates": ["flag"]})
    assert second["cuts"] == first["cuts"]
    assert second["changed"]["compared"] is False
    assert "the columns were co2, now co2, flag" in second["changed"]["note"]
