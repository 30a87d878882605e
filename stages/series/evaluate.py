"""evaluate (data.kind: series): score the forecaster and the baselines on the test
period, measure the intervals, decide the promotion, apply it, write the card.

Reads data/series/prepared (test windows, the series for the seasonal naive and MASE's
scale), models/series/model.keras with its forecast config, and metrics/export.json.
Writes metrics/evaluate.json (mae, rmse, mase, smape, each per step, the baselines beside
them, the intervals' coverage), the plots, metrics/promotion.json and the model card. The
gate (reprotrain.series.gate: MASE below 1, then Diebold–Mariano against the champion on
the same windows) gives a verdict; the policy every kind shares (reproduction, DVC
experiment, review mode) turns it into the registry's move (evaluation.decision).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from reprotrain import dag, fsio, paths, runtime, tracking
from reprotrain.cli import run_main
from reprotrain.config import Params, load_params, to_dict
from reprotrain.errors import ModelError, ReprotrainError
from reprotrain.evaluation import decision
from reprotrain.evaluation.gate import GateRule
from reprotrain.series import card, evaluation, gate, metrics, packaging, plots, serving, windows
from reprotrain.series import model as series_model
from reprotrain.series.training import predict
from reprotrain.serving import export_tags
from reprotrain.tracking import registration
from reprotrain.tracking.tags import VTAG_DIGEST, VTAG_INPUTS, VTAG_KIND

SPEC = dag.stage("evaluate", "series")
METRICS = paths.METRICS_DIR / "evaluate.json"
PROMOTION = paths.METRICS_DIR / "promotion.json"
FIGURES = paths.PLOTS_DIR / "series"
VTAG_MASE = "reprotrain.test_mase"
logger = logging.getLogger("reprotrain.stages.series.evaluate")


def main() -> int:
    params = load_params()
    mode = registration.promotion_mode()  # $REPROTRAIN_PROMOTE, checked before anything slow
    info = runtime.configure(params.runtime, params.seed)
    prepared = paths.SERIES_PREPARED
    meta = windows.load_meta(prepared)
    test, series = windows.load_windows(prepared, "test"), windows.load_series(prepared)
    model = series_model.load(paths.SERIES_MODEL)
    series_model.check_shape(model, meta.window, len(meta.channels), meta.horizon)
    forecast_cfg = serving.ForecastConfig.read(serving.config_path(paths.SERIES_MODEL))
    with tracking.stage_run(
        SPEC, params, Path.cwd(), environment=runtime.environment_info(info)
    ) as run:
        season = params.series.season
        scored = evaluation.test_forecasts(test, predict(model, test.x), series, meta, season)
        scale, used = metrics.mase_scale(evaluation.train_values(series, meta), season)
        report = evaluation.report(scored, scale, used, forecast_cfg.intervals)
        fsio.atomic_write_json(METRICS, report)
        figures = plots.write_plots(scored, report, paths.PLOTS_DIR, FIGURES)
        run.log_pipeline_metrics(evaluation.flat(report))
        run.log_artifact(METRICS)
        run.log_artifact(paths.PLOTS_DIR, artifact_path="plots")

        champion_x = test.x[scored.keep]
        promotion = promote(run, params, meta, scored, report, forecast_cfg, champion_x, mode)
        fsio.atomic_write_json(PROMOTION, promotion)
        run.log_artifact(PROMOTION)
        name, version = promotion["registered_model"], promotion["version"]
        export_report = _read_json(paths.EXPORT_METRICS)
        if export_report is not None:
            export_run = tracking.read_sidecar(paths.SERIES_EXPORT_RUN) or {}
            export_tags.attach_exports(name, version, export_report, export_run.get("run_id"))
        card.write_card(
            paths.MODEL_CARD,
            card.SeriesCard(
                model_name=model.name,
                registered_model=name,
                params=to_dict(params)["series"],
                meta=meta,
                report=report,
                promotion=promotion,
                export=export_report,
                data_source=params.data.source,
                run_id=run.run_id,
                figures=[figures[k] for k in ("forecast", "error_by_step", "residuals")],
            ),
        )
        run.log_artifact(paths.REPORTS_DIR, artifact_path="reports")
        registration.describe_version(run, name, version, paths.MODEL_CARD)
    return 0


def promote(  # noqa: PLR0913  (the stage's state the decision reads)
    run: tracking.StageRun,
    params: Params,
    meta: windows.SeriesMeta,
    scored: evaluation.TestForecasts,
    report: dict,
    forecast_cfg: serving.ForecastConfig,
    test_x,
    mode: str,
) -> dict:
    """Snapshot the champion, score it on the same test windows if comparable, decide (the
    series gate, then the shared policy), register the forecaster and apply the decision.
    Anything that fails before the registration leaves the registry as it was."""
    name, cfg = params.tracking.registered_model, params.evaluate
    inputs = evaluation.inputs_tag(meta)
    rule = GateRule(cfg.min_accuracy, cfg.min_improvement, cfg.alpha, seed=params.seed)
    policy = decision.Policy(
        "series_paired", rule, name, mode, run.reproduces, os.environ.get("DVC_EXP_NAME")
    )
    champion = registration.champion_snapshot(run.uri, name)
    ours = metrics.window_errors(scored.y, scored.model)
    theirs, champion_mase, verdict = None, None, None
    problem = (
        decision.comparability_problem(champion, (), 0, "series", inputs) if champion else None
    )
    if problem is not None:
        verdict = decision.not_comparable(problem, champion.version, policy)
    elif champion is not None:
        forecasts = _champion_forecasts(name, champion, meta, test_x)
        theirs = metrics.window_errors(scored.y, forecasts)
        champion_mase = float(theirs.mean() / report["mase_scale"])
    if verdict is None:
        stats = gate.decide(
            report["mase"],
            ours,
            theirs,
            horizon=meta.horizon,
            alpha=cfg.alpha,
            champion_version=champion.version if champion else None,
        )
        stats["champion_mase"] = champion_mase
        verdict = decision.apply_policy(
            stats,
            bool(stats["promoted"]),
            str(stats["reason"]),
            champion.version if champion else None,
            champion_mase,
            policy,
        )
    tags = {
        VTAG_KIND: "series",
        VTAG_INPUTS: inputs,
        VTAG_MASE: repr(report["mase"]),
        VTAG_DIGEST: evaluation.windows_digest(scored),
    }
    version = registration.register_version(
        run,
        name,
        None,
        lambda: packaging.log_forecaster(run, paths.SERIES_MODEL, forecast_cfg),
        tags=tags,
    )
    result = registration.apply_decision(
        run, name, version, verdict, report["mase"], score_name="mase"
    )
    return {**result, "champion_mase": champion_mase}


def _champion_forecasts(name, champion, meta, test_x):
    """The champion's forecasts of the same test windows (its downloaded ``.keras``)."""
    file = registration.champion_file(name, champion)
    try:
        model = series_model.load(file, hint="it cannot be scored on these test windows")
        series_model.check_shape(model, meta.window, len(meta.channels), meta.horizon)
        return predict(model, test_x)
    except ReprotrainError as exc:
        raise ModelError(
            f"the promotion gate could not compare with champion v{champion.version} of "
            f"{name} ({exc}); no version was registered and the aliases are unchanged"
        ) from exc


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


if __name__ == "__main__":
    run_main(main)
