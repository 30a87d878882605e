"""Naive and seasonal-naive forecasts, the seasonal one also when the season exceeds the
window (looked up in the series by position)."""

from __future__ import annotations

import numpy as np
import pytest

from reprotrain.errors import DataError
from reprotrain.series import baselines


def test_naive_repeats_the_last_target_value() -> None:
    x = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)  # channel 0 is the target
    assert baselines.naive(x, 2).tolist() == [[4.0, 4.0], [10.0, 10.0]]


def test_seasonal_naive_looks_one_season_back_beyond_the_window() -> None:
    values = np.arange(20, dtype=np.float64) * 10
    times = np.arange("2020-01-01", 20, dtype="datetime64[D]")
    # Window 3 ends at position 11; horizon 5 with season 4 (> window).
    target_times = times[12:17][None]
    pos = baselines.positions(times, target_times)
    assert pos.tolist() == [[12, 13, 14, 15, 16]]
    f = baselines.seasonal_naive(values, pos, 4)
    # steps 1-4: one season back (8..11); step 5: two seasons back (16 - 8 = 8).
    assert f.tolist() == [[80.0, 90.0, 100.0, 110.0, 80.0]]
    assert not (pos - np.array([4, 4, 4, 4, 8]) > 11).any()  # never at or after the origin


def test_seasonal_naive_without_history_is_nan_and_unknown_times_fail() -> None:
    times = np.arange("2020-01-01", 5, dtype="datetime64[D]")
    f = baselines.seasonal_naive(np.arange(5.0), np.array([[1, 2]]), 3)
    assert np.isnan(f[0, 0]) and f[0, 1] == pytest.approx(np.nan, nan_ok=True)
    assert not baselines.usable(f).any()
    with pytest.raises(DataError, match="not in the prepared series"):
        baselines.positions(times, np.array([["2021-01-01"]], dtype="datetime64[D]"))
