"""evaluate's figures for a forecaster: the model and both baselines on the same test
windows, the intervals' coverage, and what the gate compares.

Why the baselines are scored on exactly the model's windows: MASE, the gate and the card
compare them side by side, and a baseline scored on other windows (say, only those whose
seasonal-naive value exists) would make the comparison about the windows, not the models.
Windows near the start of a series with no value one season back are therefore dropped for
all three (counted in ``windows_without_seasonal_naive``); with every window dropped the
stage stops with the fix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from reprotrain.config import Params, to_dict
from reprotrain.errors import DataError
from reprotrain.series import baselines, conformal, metrics

#: The figures the card shows, in its order (``series.plots.write_plots``' keys).
CARD_FIGURES = ("forecast", "error_by_step", "residuals")


@dataclass(frozen=True)
class TestForecasts:
    """The test windows kept for scoring and every forecast of them."""

    y: np.ndarray  # [n, horizon]
    times: np.ndarray  # [n, horizon] datetime64
    origin: np.ndarray  # [n]
    model: np.ndarray  # [n, horizon]
    naive: np.ndarray
    seasonal_naive: np.ndarray
    dropped: int  # windows without a seasonal-naive value
    keep: np.ndarray  # [n_test] bool: the test windows kept (a champion is scored on them)


def test_forecasts(
    test: Any, model_forecasts: np.ndarray, series: Any, meta: Any, season: int
) -> TestForecasts:
    """The model's forecasts and both baselines on the test windows that all three have."""
    if len(test) == 0:
        raise DataError(
            "the test period has no complete window: lower series.window/horizon or raise "
            "series.test_fraction, then rerun prepare"
        )
    values = series[meta.target].to_numpy(np.float64)
    pos = baselines.positions(series[meta.time].to_numpy(), test.times)
    seasonal = baselines.seasonal_naive(values, pos, season)
    keep = baselines.usable(seasonal)
    if not keep.any():
        raise DataError(
            f"no test window has a value one season (series.season = {season}) before its "
            "targets: lower series.season or give a longer history"
        )
    naive = baselines.naive(test.x, test.y.shape[1])
    return TestForecasts(
        y=np.asarray(test.y, np.float64)[keep],
        times=np.asarray(test.times)[keep],
        origin=np.asarray(test.origin)[keep],
        model=np.asarray(model_forecasts, np.float64)[keep],
        naive=naive[keep],
        seasonal_naive=seasonal[keep],
        dropped=int((~keep).sum()),
        keep=keep,
    )


def train_values(series: Any, meta: Any) -> np.ndarray:
    """The target over the train period (MASE's in-sample scale)."""
    return series.loc[series["period"] == "train", meta.target].to_numpy(np.float64)


def score(
    test: Any,
    model_forecasts: np.ndarray,
    series: Any,
    meta: Any,
    season: int,
    intervals: dict[str, Any],
) -> tuple[TestForecasts, dict[str, Any]]:
    """The test windows' forecasts (:func:`test_forecasts`) and the report on them, MASE
    scaled by the train period's seasonal differences."""
    scored = test_forecasts(test, model_forecasts, series, meta, season)
    scale, used = metrics.mase_scale(train_values(series, meta), season)
    return scored, report(scored, scale, used, intervals)


def report(
    scored: TestForecasts, scale: float, season_used: int, intervals: dict[str, Any]
) -> dict[str, Any]:
    """``metrics/evaluate.json``: the model's ``mae``/``rmse``/``mase``/``smape`` at the top
    level (and ``by_step``), the baselines' beside them, each interval level's width and
    test coverage."""
    model = metrics.forecast_metrics(scored.y, scored.model, scale)
    base = {
        name: metrics.forecast_metrics(scored.y, f, scale)
        for name, f in (("naive", scored.naive), ("seasonal_naive", scored.seasonal_naive))
    }
    covered = {}
    for key, spec in intervals.items():
        covered[key] = {
            **spec,
            "nominal": float(spec["level"]),
            **conformal.coverage(scored.y, scored.model, spec["width"]),
        }
    return {
        **model,
        "mase_scale": scale,
        "mase_season": season_used,
        "windows_without_seasonal_naive": scored.dropped,
        "baselines": base,
        "intervals": covered,
        "beats_seasonal_naive": bool(model["mase"] < 1),
    }


def inputs_tag(meta: Any) -> str:
    """What the model takes, as the version tag champions are compared on: another window,
    horizon, channel set or frequency is "not comparable"."""
    return json.dumps(
        {
            "window": int(meta.window),
            "horizon": int(meta.horizon),
            "channels": list(meta.channels),
            "frequency": str(meta.frequency),
        },
        sort_keys=True,
    )


def flat(report_: dict[str, Any]) -> dict[str, float]:
    """The report's numbers as MLflow metric names (``baselines.naive.mae``, ...)."""
    out: dict[str, float] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(f"{prefix}.step_{i + 1}", v)
        elif isinstance(node, int | float) and not isinstance(node, bool) and np.isfinite(node):
            out[prefix] = float(node)

    walk("", report_)
    return out


def windows_digest(test: Any) -> str:
    """A digest of the test windows' targets and times: two models scored on the same
    digest were scored on the same windows."""
    import hashlib

    h = hashlib.sha256()
    h.update(np.ascontiguousarray(test.y, np.float32).tobytes())
    h.update(np.ascontiguousarray(test.times).astype("datetime64[ns]").view(np.int64).tobytes())
    return h.hexdigest()


def card_fields(
    params: Params, promotion: Mapping[str, Any], export: Mapping[str, Any] | None, run_id: str
) -> dict[str, Any]:
    """The model card's fields (``series.card.SeriesCard``'s) that come from the params, the
    registry's decision and the export report rather than from the scores."""
    return {
        "registered_model": promotion["registered_model"],
        "params": to_dict(params)["series"],
        "promotion": promotion,
        "export": export,
        "data_source": params.data.source,
        "run_id": run_id,
    }
