"""Split-conformal widths: the finite-sample quantile, and coverage near nominal on
exchangeable residuals."""

from __future__ import annotations

import numpy as np
import pytest

from reprotrain.series import conformal


def test_width_is_the_corrected_order_statistic() -> None:
    r = np.arange(1, 10, dtype=float)[:, None]  # n = 9 residuals 1..9
    w = conformal.widths(r, [0.8])["80"]
    # ceil((9 + 1) * 0.8) = 8 → the 8th smallest
    assert w["width"] == [8.0] and w["guaranteed"]
    few = conformal.widths(r, [0.95])["95"]  # ceil(10 * 0.95) = 10 > 9
    assert few["width"] == [9.0] and not few["guaranteed"]


def test_coverage_on_new_exchangeable_draws_is_near_nominal() -> None:
    rng = np.random.default_rng(0)
    val = np.abs(rng.normal(size=(400, 3)) * [1.0, 2.0, 3.0])
    w = conformal.widths(val, [0.8, 0.95])
    y = rng.normal(size=(4000, 3)) * [1.0, 2.0, 3.0]
    for key, level in (("80", 0.8), ("95", 0.95)):
        cov = conformal.coverage(y, np.zeros_like(y), w[key]["width"])
        assert cov["coverage"] == pytest.approx(level, abs=0.03)
        assert len(cov["coverage_by_step"]) == 3
    assert conformal.level_key(0.95) == "95" and conformal.level_key(0.975) == "97.5"
