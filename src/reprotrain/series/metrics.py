"""Forecast accuracy: MAE, RMSE, MASE and sMAPE, overall and per horizon step.

Why MASE is scaled in-sample on the train period (Hyndman & Koehler 2006): the scale is then
a property of the series, not of the test period or of any model, so ``mase < 1`` reads "beats
the seasonal-naive forecast's typical one-season error" and two models scored on the same
test windows are compared on the same scale. The figures are JSON-ready floats.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from reprotrain.errors import DataError

logger = logging.getLogger(__name__)

NAMES = ("mae", "rmse", "mase", "smape")


def mase_scale(train_values: np.ndarray, season: int) -> tuple[float, int]:
    """Mean |y_t − y_{t−season}| over the train period, and the season used.

    A train period no longer than one season cannot give a seasonal difference: the scale
    falls back to the one-step naive (season 1), with a warning, rather than no MASE at all.
    Missing values (NaN) are skipped pairwise.
    """
    y = np.asarray(train_values, np.float64)
    m = int(season)
    if len(y) <= m:
        logger.warning(
            "MASE: the train period (%d steps) is not longer than series.season = %d; "
            "scaled by the one-step naive error instead",
            len(y),
            m,
        )
        m = 1
    if len(y) <= m:
        raise DataError(f"MASE needs at least {m + 1} train values; the train period has {len(y)}")
    diffs = np.abs(y[m:] - y[:-m])
    diffs = diffs[np.isfinite(diffs)]
    scale = float(diffs.mean()) if diffs.size else 0.0
    if not scale > 0:
        raise DataError(
            f"MASE: the train period's {m}-step differences are all zero (a constant series "
            "cannot scale the errors); check data.columns.target"
        )
    return scale, m


def smape_terms(y: np.ndarray, f: np.ndarray) -> np.ndarray:
    """200 |y − f| / (|y| + |f|) (percent, 0–200); 0 where both are 0."""
    den = np.abs(y) + np.abs(f)
    num = 2.0 * np.abs(y - f)
    return 100.0 * np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def forecast_metrics(y: np.ndarray, f: np.ndarray, scale: float) -> dict[str, Any]:
    """``mae``, ``rmse``, ``mase``, ``smape`` of forecasts ``f`` for targets ``y`` (both
    [n, horizon]), and each per horizon step under ``by_step`` (lists, step 1 first)."""
    y = np.asarray(y, np.float64)
    f = np.asarray(f, np.float64)
    if y.shape != f.shape or y.ndim != 2 or y.shape[0] == 0:
        raise DataError(f"forecasts {f.shape} and targets {y.shape}: expected equal [n>0, horizon]")
    err = f - y
    abs_err = np.abs(err)
    sm = smape_terms(y, f)

    def figures(axis: int | None) -> dict[str, Any]:
        mae = abs_err.mean(axis=axis)
        return {
            "mae": mae,
            "rmse": np.sqrt((err**2).mean(axis=axis)),
            "mase": mae / scale,
            "smape": sm.mean(axis=axis),
        }

    overall = {k: float(v) for k, v in figures(None).items()}
    by_step = {k: [float(x) for x in v] for k, v in figures(0).items()}
    return {**overall, "n_windows": int(y.shape[0]), "by_step": by_step}


def window_errors(y: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Each window's mean absolute error over its horizon (the gate's paired losses)."""
    return np.abs(np.asarray(f, np.float64) - np.asarray(y, np.float64)).mean(axis=1)
