"""The baselines every forecaster must beat, computed in evaluate with no training.

Naive: every step is the last observed value. Seasonal naive: each step is the value one
``season`` earlier (``k`` seasons earlier for steps beyond one season), read from the whole
series by position, so a season longer than the window works: the model's window limits
what the network sees, not what the baseline may look up.
"""

from __future__ import annotations

import numpy as np

from reprotrain.errors import DataError


def naive(x: np.ndarray, horizon: int) -> np.ndarray:
    """The last value of each window's target channel (channel 0), repeated: [n, horizon]."""
    last = np.asarray(x, np.float64)[:, -1, 0]
    return np.repeat(last[:, None], horizon, axis=1)


def positions(series_times: np.ndarray, target_times: np.ndarray) -> np.ndarray:
    """Row positions in the series of each target time ([n, horizon]); a time the series
    does not hold is a DataError (the windows are not from this series)."""
    st = np.asarray(series_times).astype("datetime64[ns]")
    tt = np.asarray(target_times).astype("datetime64[ns]")
    order = np.argsort(st, kind="stable")
    sorted_times = st[order]
    idx = np.searchsorted(sorted_times, tt.ravel())
    idx = np.clip(idx, 0, len(st) - 1)
    found = sorted_times[idx] == tt.ravel()
    if not found.all():
        missing = tt.ravel()[~found][0]
        raise DataError(
            f"the window target time {missing} is not in the prepared series: rerun prepare"
        )
    return order[idx].reshape(tt.shape)


def seasonal_naive(values: np.ndarray, target_positions: np.ndarray, season: int) -> np.ndarray:
    """``values[p − k·season]`` for each target position ``p`` at step ``h`` (1-based),
    ``k = ceil(h / season)``: never a value at or after the forecast origin. NaN where the
    series does not reach back that far."""
    v = np.asarray(values, np.float64)
    pos = np.asarray(target_positions)
    h = np.arange(1, pos.shape[1] + 1)
    k = np.ceil(h / season).astype(int)
    src = pos - k[None, :] * int(season)
    out = np.full(pos.shape, np.nan)
    ok = src >= 0
    out[ok] = v[src[ok]]
    return out


def usable(forecasts: np.ndarray) -> np.ndarray:
    """Windows whose baseline forecast is complete (a seasonal naive near the start of the
    series has no value a season back)."""
    return np.isfinite(np.asarray(forecasts)).all(axis=1)
