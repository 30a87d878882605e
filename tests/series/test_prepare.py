"""The series prepare in process: the real co2 slice, the too-short error, messy sources,
the same bytes from any file type. The stage script under `dvc repro` (its MLflow run,
sidecar and cuts.json in dvc.lock, its one-line error on bad data) is checked in the
project test_e2e.py builds anyway."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reprotrain.errors import DataError
from reprotrain.series.prepare import check_lengths
from reprotrain.series.windows import load_meta, load_series, load_windows
from tests.series.conftest import CO2_WEEKS, run_prepare, synthetic

DEMAND = {"target": "demand"}


def test_the_co2_slice_prepares(tmp_path: Path, co2_csv: Path) -> None:
    prepared, stats = run_prepare(tmp_path, co2_csv, window=26, horizon=4)
    meta = load_meta(prepared)
    assert meta.frequency == "W-SAT" and (meta.time, meta.target) == ("date", "co2")
    assert meta.counts["rows"] == meta.counts["steps"] == CO2_WEEKS
    assert meta.counts["quarantined"] == {} and meta.counts["missing_steps"] == 0
    recorded = json.loads((tmp_path / "cuts.json").read_text())
    assert {k: recorded[k] for k in ("val_start", "test_start")} == stats["cuts"]
    assert sum(p["steps"] for p in meta.periods.values()) == CO2_WEEKS
    test = load_windows(prepared, "test")
    assert len(test) == meta.periods["test"]["steps"] - 4 + 1  # its inputs reach back
    series = load_series(prepared)
    assert (series["period"] == "test").sum() == meta.periods["test"]["steps"]
    assert not series["interpolated"].any()


def test_too_short_is_one_line_saying_how_long(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        run_prepare(tmp_path, synthetic(60), columns=DEMAND, window=40, horizon=8)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("the train period has 42 steps; window 40 + horizon 8 needs at")
    with pytest.raises(DataError, match=r"^the test period has 5 steps; horizon 8 needs at least"):
        check_lengths({"train": 100, "val": 20, "test": 5}, 20, 8)
    with pytest.raises(DataError, match=r"series.recut: true"):
        check_lengths({"train": 100, "val": 0, "test": 20}, 20, 8, recorded=True)
    assert not (tmp_path / "cuts.json").exists()  # a failed prepare records nothing


def test_an_empty_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"series.csv: no rows"):
        run_prepare(tmp_path, "time,demand\n")


def test_every_window_crossing_a_gap_is_a_clear_error(tmp_path: Path) -> None:
    frame = synthetic(120).astype(str)
    frame.loc[100:, "demand"] = "?"  # the test period is all text
    with pytest.raises(DataError, match=r"^the test period has no complete window: all"):
        run_prepare(tmp_path, frame, columns=DEMAND)


def test_same_source_same_bytes_from_csv_tsv_or_parquet(tmp_path: Path) -> None:
    """DVC hashes the prepared folder: the same rows must give the same files (and the
    same windows whichever file type holds them)."""
    frame = synthetic(90)
    cols = {"target": "demand", "covariates": ["temperature"]}
    a, _ = run_prepare(tmp_path / "a", frame, columns=cols)
    b, _ = run_prepare(tmp_path / "b", frame, columns=cols)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)

    typed = frame.assign(time=pd.to_datetime(frame["time"]))
    typed.to_parquet(tmp_path / "demand.parquet", index=False)
    frame.to_csv(tmp_path / "demand.tsv", sep="\t", index=False)
    for i, source in enumerate((tmp_path / "demand.parquet", tmp_path / "demand.tsv")):
        c, stats = run_prepare(tmp_path / f"c{i}", source, columns=cols)
        assert stats["frequency"] == "D"
        for split in ("train", "test"):
            np.testing.assert_array_equal(load_windows(c, split).x, load_windows(a, split).x)
