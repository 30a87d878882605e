"""The readers S2's model, evaluate and serving use, and the no-look-ahead rule, asserted on
the windows' timestamps as written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reprotrain.errors import DataError
from reprotrain.series.windows import (
    SPLITS,
    dataset,
    load_meta,
    load_series,
    load_windows,
    make_windows,
)
from tests.series.conftest import run_prepare, synthetic


def test_meta_and_series_describe_the_windows(synthetic_prepared: Path) -> None:
    meta = load_meta(synthetic_prepared)
    assert (meta.time, meta.target, meta.covariates) == (
        "time",
        "demand",
        ("temperature", "workday"),
    )
    assert meta.channels == ("demand", "temperature", "workday")
    assert (meta.frequency, meta.window, meta.horizon) == ("D", 8, 3)
    series = load_series(synthetic_prepared)
    assert list(series.columns) == [
        "time",
        "demand",
        "temperature",
        "workday",
        "period",
        "interpolated",
    ]
    assert series["time"].dtype == "datetime64[ns]"
    assert list(series["period"].unique()) == list(SPLITS)
    for split in SPLITS:
        w = load_windows(synthetic_prepared, split)
        assert len(w) == meta.windows[split] > 0
        assert w.x.shape == (len(w), 8, 3) and w.x.dtype == np.float32
        assert w.y.shape == (len(w), 3) and w.y.dtype == np.float32
        assert w.times.shape == (len(w), 3) and w.times.dtype == "datetime64[ns]"
        assert w.origin.shape == (len(w),) and w.origin.dtype == "datetime64[ns]"


def test_no_window_looks_ahead_across_a_cut(synthetic_prepared: Path) -> None:
    """Every target of a window lies in its split's period; its inputs are the steps just
    before the first target, and may lie in an earlier period (val's first window reads
    train's last steps)."""
    meta = load_meta(synthetic_prepared)
    series = load_series(synthetic_prepared).set_index("time")
    val_start = meta.cuts["val_start"].to_datetime64()
    test_start = meta.cuts["test_start"].to_datetime64()
    bounds = {
        "train": (None, val_start),
        "val": (val_start, test_start),
        "test": (test_start, None),
    }
    step = np.timedelta64(1, "D")
    reached_back = {}
    for split, (lo, hi) in bounds.items():
        w = load_windows(synthetic_prepared, split)
        if lo is not None:
            assert (w.times >= lo).all(), split
        if hi is not None:
            assert (w.times < hi).all(), split
        assert (w.times[:, 0] == w.origin + step).all()
        assert (np.diff(w.times, axis=1) == step).all()
        # the values: x is the series' window before the origin, y the targets' values
        i = len(w) // 2
        inputs = series.loc[: pd.Timestamp(w.origin[i])].tail(meta.window)
        np.testing.assert_allclose(w.x[i], inputs[list(meta.channels)].to_numpy(), rtol=1e-6)
        np.testing.assert_allclose(w.y[i], series.loc[w.times[i], "demand"], rtol=1e-6)
        first_input = w.origin - (meta.window - 1) * step
        reached_back[split] = bool(lo is not None and (first_input < lo).any())
    assert reached_back == {"train": False, "val": True, "test": True}


def test_dataset_matches_load_windows_and_shuffles_by_seed(synthetic_prepared: Path) -> None:
    w = load_windows(synthetic_prepared, "train")
    batches = list(dataset(synthetic_prepared, "train", batch_size=16).as_numpy_iterator())
    assert batches[0][0].shape == (16, 8, 3) and batches[0][1].shape == (16, 3)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), w.x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), w.y)

    def order(seed: int) -> np.ndarray:
        ds = dataset(synthetic_prepared, "train", batch_size=16, shuffle_buffer=1000, seed=seed)
        return np.concatenate([b[1] for b in ds.as_numpy_iterator()])

    first = order(7)
    np.testing.assert_array_equal(first, order(7))
    assert not np.array_equal(first, w.y)
    assert not np.array_equal(first, order(8))
    np.testing.assert_array_equal(np.sort(first, axis=0), np.sort(w.y, axis=0))


def test_keras_windows_cover_every_step_once_per_offset() -> None:
    values = np.arange(20, dtype=float).reshape(10, 2)
    made = make_windows(values, window=3, horizon=2)
    assert made.x.shape == (6, 3, 2) and made.y.shape == (6, 2)
    np.testing.assert_array_equal(made.x[2, :, 0], [4, 6, 8])
    np.testing.assert_array_equal(made.y[2], [10, 12])
    np.testing.assert_array_equal(made.target_index[2], [5, 6])
    assert made.complete.all()
    values[4, 1] = np.nan
    made = make_windows(values, window=3, horizon=2)
    assert made.complete.tolist() == [False] * 5 + [True]  # windows starting at 0..4 hold step 4
    assert len(make_windows(values[:4], 3, 2).y) == 0


def test_windows_across_a_long_gap_are_dropped_and_counted(tmp_path: Path) -> None:
    frame = synthetic(200).astype(str)
    frame.loc[40:45, "demand"] = ""  # 6 missing steps > max_gap 2, in train
    prepared, stats = run_prepare(tmp_path, frame, columns={"target": "demand"})
    counts = stats["counts"]
    # windows of 8 + 3 steps touching steps 40..45: starts 30..45 → 16 windows
    assert counts["windows_dropped"] == {"train": 16, "val": 0, "test": 0}
    assert counts["gaps_left"] == {"gaps": 1, "steps": 6}
    w = load_windows(prepared, "train")
    gap = pd.date_range("2020-02-10", periods=6, freq="D").to_numpy()
    assert not np.isin(w.times, gap).any()
    assert not np.isnan(w.x).any()
    assert load_series(prepared)["demand"].isna().sum() == 6


def test_a_missing_or_foreign_folder_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a prepared series"):
        load_meta(tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        load_windows(tmp_path, "holdout")


def test_co2_windows_are_weekly_and_inside_their_period(co2_prepared: Path) -> None:
    meta = load_meta(co2_prepared)
    week = np.timedelta64(7, "D")
    for split in SPLITS:
        w = load_windows(co2_prepared, split)
        first = np.datetime64(meta.periods[split]["first"], "ns")
        last = np.datetime64(meta.periods[split]["last"], "ns")
        assert ((w.times >= first) & (w.times <= last)).all(), split
        assert (np.diff(w.times, axis=1) == week).all() and (w.times[:, 0] - w.origin == week).all()
