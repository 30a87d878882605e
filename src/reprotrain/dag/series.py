"""The series pipeline (``data.kind: series``): fetch → prepare → train → export → evaluate.
The baselines (naive, seasonal naive) need no training: evaluate computes them."""

from __future__ import annotations

import dataclasses
from typing import Any

from reprotrain import paths
from reprotrain.dag.spec import (
    Kind,
    Output,
    Stage,
    evaluate_stage,
    export_stage,
    fetch_stage,
    plot_data,
    sidecar,
    training,
)

KIND_NAME = "series"
_PREPARED = str(paths.SERIES_PREPARED)
_WINDOWS = ("series.window", "series.horizon")
#: train's forecast config beside the model (``series.serving.config_path``).
_FORECAST_CONFIG = str(paths.SERIES_MODELS / "model.forecast.json")


def _with_outputs(stage: Stage, *outs: Output) -> Stage:
    return dataclasses.replace(stage, outs=(*stage.outs, *outs))


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        fetch_stage(KIND_NAME),
        Stage(
            "prepare",
            params=(  # the series' roles only: a table-only role never reruns it
                "data.columns.time",
                "data.columns.target",
                "data.columns.covariates",
                "data.columns.ignore",
                *_WINDOWS,
                "series.max_gap",
                "series.val_fraction",
                "series.test_fraction",
                "series.recut",
            ),
            reads=(str(paths.RAW_DIR),),
            outs=(
                Output(_PREPARED),
                sidecar(paths.SERIES_PREPARE_RUN),
                Output(
                    str(paths.SERIES_CUTS),
                    cache=False,
                    persist=True,
                    note=(
                        "The time cuts (train | val | test): recorded once, kept when rows are\n"
                        "appended (series.recut moves them). Git-tracked, kept by DVC."
                    ),
                ),
            ),
            sidecar=str(paths.SERIES_PREPARE_RUN),
            kind=KIND_NAME,
        ),
        _with_outputs(
            training(
                "train",
                paths.SERIES_MODEL,
                paths.SERIES_HISTORY,
                paths.SERIES_RUN,
                params=("seed", "runtime", "series"),
                reads=(_PREPARED,),
                upstream=(str(paths.SERIES_PREPARE_RUN),),
                kind=KIND_NAME,
            ),
            # The served config (frequency, columns, interval widths) beside the model.
            Output(_FORECAST_CONFIG),
        ),
        export_stage(
            KIND_NAME,
            paths.SERIES_EXPORT_DIR,
            paths.SERIES_EXPORT_RUN,
            params=("seed", "runtime", "export", "series.export_max_diff"),
            reads=(_PREPARED, str(paths.SERIES_MODEL)),
            upstream=(str(paths.SERIES_PREPARE_RUN), str(paths.SERIES_RUN)),
        ),
        evaluate_stage(
            KIND_NAME,
            params=("series",),
            reads=(
                _PREPARED,
                str(paths.SERIES_MODEL),
                _FORECAST_CONFIG,
                str(paths.SERIES_HISTORY),
            ),
            outs=(
                Output(str(paths.PLOTS_DIR / "forecast.csv")),
                Output(str(paths.PLOTS_DIR / "series")),
                *plot_data("error_by_step"),
                Output(str(paths.REPORTS_DIR / "model_card")),
            ),
            upstream=(
                str(paths.SERIES_PREPARE_RUN),
                str(paths.SERIES_RUN),
                str(paths.SERIES_EXPORT_RUN),
            ),
        ),
    )
}

#: How ``dvc plots show/diff`` draws what evaluate writes (dvc.yaml's top-level ``plots``).
PLOTS: list[dict[str, Any]] = [
    {
        "Error by horizon step": {
            "template": "linear",
            "x": "step",
            "y": {"plots/error_by_step.csv": ["model", "naive", "seasonal_naive"]},
            "title": "Test MAE by horizon step: model and baselines",
        }
    }
]

KIND = Kind(
    KIND_NAME,
    STAGES,
    PLOTS,
    "fetch → prepare → train → export → evaluate (the naive and seasonal-naive\n"
    "# baselines are computed in evaluate); data.kind: series",
)
