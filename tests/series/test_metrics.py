"""Forecast metrics: hand-checked values, MASE's in-sample seasonal scale."""

from __future__ import annotations

import numpy as np
import pytest

from reprotrain.errors import DataError
from reprotrain.series import metrics


def test_figures_overall_and_per_step() -> None:
    y = np.array([[1.0, 2.0], [3.0, 4.0]])
    f = np.array([[2.0, 2.0], [3.0, 6.0]])
    m = metrics.forecast_metrics(y, f, scale=2.0)
    assert m["mae"] == pytest.approx(0.75)
    assert m["rmse"] == pytest.approx(np.sqrt(5 / 4))
    assert m["mase"] == pytest.approx(0.375)
    assert m["by_step"]["mae"] == pytest.approx([0.5, 1.0])
    assert m["by_step"]["mase"] == pytest.approx([0.25, 0.5])
    # sMAPE: 200|y-f|/(|y|+|f|): (200/3 + 0 + 0 + 200*2/10) / 4
    assert m["smape"] == pytest.approx((200 / 3 + 40) / 4)
    assert m["n_windows"] == 2


def test_mase_scale_is_the_in_sample_seasonal_naive_error() -> None:
    train = np.array([1.0, 2.0, 3.0, 5.0, 4.0, 9.0])
    scale, m = metrics.mase_scale(train, 2)
    assert m == 2
    assert scale == pytest.approx(np.mean([2.0, 3.0, 1.0, 4.0]))
    # Seasonal naive on its own train period has MASE 1 by construction.
    f = train[:-2]
    assert np.abs(train[2:] - f).mean() / scale == pytest.approx(1.0)


def test_short_train_falls_back_to_one_step_and_constant_is_an_error() -> None:
    assert metrics.mase_scale(np.array([1.0, 2.0, 4.0]), 52) == (1.5, 1)
    with pytest.raises(DataError, match="constant"):
        metrics.mase_scale(np.ones(10), 2)
