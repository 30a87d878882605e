"""Split-conformal prediction intervals: calibrated on the val period, checked on test.

Why split-conformal: it needs no distributional assumption and no retraining, only the
model's absolute residuals on windows it was not fitted to (the val period). Per horizon
step, the width at level ``1 − α`` is the ``⌈(n + 1)(1 − α)⌉``-th smallest of the ``n``
val residuals (the finite-sample correction), which covers a new exchangeable window with
probability at least ``1 − α``. Time series are not exchangeable, so the coverage on the
test period is measured and reported beside the nominal level rather than assumed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from reprotrain.errors import DataError

logger = logging.getLogger(__name__)


def level_key(level: float) -> str:
    """``0.8`` → ``"80"`` (the JSON keys and column names: ``lower_80``)."""
    return f"{round(level * 100, 4):g}"


def widths(residuals: np.ndarray, levels: Sequence[float]) -> dict[str, Any]:
    """Per level, the half-widths per horizon step from val residuals ``|y − f|`` [n, h].

    With too few val windows for a level (``⌈(n + 1)·level⌉ > n``) no finite width has the
    guarantee; the largest residual is used and ``guaranteed`` is false for that level.
    """
    r = np.abs(np.asarray(residuals, np.float64))
    if r.ndim != 2 or r.shape[0] == 0:
        raise DataError(
            f"conformal intervals need val windows; got residuals of shape {r.shape} "
            "(is the val period shorter than window + horizon?)"
        )
    n = r.shape[0]
    out: dict[str, Any] = {}
    for level in levels:
        k = math.ceil((n + 1) * float(level))
        guaranteed = k <= n
        if not guaranteed:
            logger.warning(
                "intervals: %d val windows are too few for a %.0f%% guarantee (need %d); "
                "using the largest val residual",
                n,
                level * 100,
                math.ceil(float(level) / (1 - float(level))),
            )
        rank = min(k, n) - 1
        w = np.sort(r, axis=0)[rank]
        out[level_key(level)] = {
            "level": float(level),
            "width": [float(x) for x in w],
            "guaranteed": bool(guaranteed),
            "n_calibration": int(n),
        }
    return out


def bounds(forecasts: np.ndarray, width: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of forecasts [n, h] with per-step half-widths ``width``."""
    f = np.asarray(forecasts, np.float64)
    w = np.asarray(width, np.float64)[None, :]
    return f - w, f + w


def coverage(y: np.ndarray, forecasts: np.ndarray, width: Sequence[float]) -> dict[str, Any]:
    """The share of test targets inside the interval, overall and per step."""
    lo, hi = bounds(forecasts, width)
    inside = (np.asarray(y) >= lo) & (np.asarray(y) <= hi)
    return {
        "coverage": float(inside.mean()),
        "coverage_by_step": [float(x) for x in inside.mean(axis=0)],
    }
