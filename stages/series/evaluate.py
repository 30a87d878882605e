"""evaluate (data.kind: series): score the forecaster and the baselines on the test
period, measure the intervals, decide the promotion, apply it, write the card.

Reads data/series/prepared (test windows, the series for the seasonal naive and MASE's
scale), models/series/model.keras with its forecast config, and metrics/export.json.
Writes metrics/evaluate.json (mae, rmse, mase, smape, per step, the baselines beside them,
the intervals' coverage), the plots, metrics/promotion.json and the model card. The
decision (series.gate: MASE below 1, Diebold–Mariano against the champion, the shared
policy) is pure; series.promotion applies it with one registry call.
"""

from __future__ import annotations

from pathlib import Path

from reprotrain import dag, fsio, paths, runtime, tracking
from reprotrain.cli import run_main
from reprotrain.config import load_params
from reprotrain.evaluation import publication
from reprotrain.series import card, evaluation, plots, promotion, serving, windows
from reprotrain.series import model as series_model
from reprotrain.series.training import predict
from reprotrain.tracking import registration

SPEC = dag.stage("evaluate", "series")
METRICS = paths.METRICS_DIR / "evaluate.json"
FIGURES = paths.PLOTS_DIR / "series"


def main() -> int:
    params = load_params()
    mode = registration.promotion_mode()  # $REPROTRAIN_PROMOTE, checked before anything slow
    info = runtime.configure(params.runtime, params.seed)
    prepared, season = paths.SERIES_PREPARED, params.series.season
    meta = windows.load_meta(prepared)
    test, series = windows.load_windows(prepared, "test"), windows.load_series(prepared)
    model = series_model.load(paths.SERIES_MODEL)
    series_model.check_shape(model, meta.window, len(meta.channels), meta.horizon)
    config = serving.ForecastConfig.read(serving.config_path(paths.SERIES_MODEL))
    env = runtime.environment_info(info)
    with tracking.stage_run(SPEC, params, Path.cwd(), environment=env) as run:
        forecasts = predict(model, test.x)
        scored, report = evaluation.score(test, forecasts, series, meta, season, config.intervals)
        fsio.atomic_write_json(METRICS, report)
        figures = plots.write_plots(scored, report, paths.PLOTS_DIR, FIGURES)
        publication.log_report(run, evaluation.flat(report), METRICS)

        candidate = promotion.Candidate(meta, scored, report, config, test.x[scored.keep])
        promoted = promotion.promote(run, params, candidate, mode)
        export = publication.record_promotion(run, promoted, paths.SERIES_EXPORT_RUN)
        fields = evaluation.card_fields(params, promoted, export, run.run_id)
        shown = [figures[k] for k in evaluation.CARD_FIGURES]
        summary = card.SeriesCard(model.name, meta=meta, report=report, figures=shown, **fields)
        card.write_card(paths.MODEL_CARD, summary)
        publication.publish_card(run, promoted, paths.MODEL_CARD)
    return 0


if __name__ == "__main__":
    run_main(main)
