"""evaluate (table kind): score the model on the test split, decide the promotion, apply it.

Reads data/table/prepared (test rows, schema), models/table/model.keras and its history,
the classical baseline (models/table/baseline.joblib) and metrics/export.json. Writes
metrics/evaluate.json (the image kind's metrics, the gain over the baseline, permutation
importance), the plots, plots/predictions.csv (one row per test row: what predict and the
server answer), metrics/promotion.json and the model card. Promotion is the image kind's:
snapshot → score → decide → register → apply, the champion compared only when it is a
table model on the same inputs (a champion of another kind is "not comparable").
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from reprotrain import dag, fsio, paths, runtime, tracking
from reprotrain.cli import run_main
from reprotrain.config import load_params, to_dict
from reprotrain.evaluation import decision, flatten_metrics, gate, plots
from reprotrain.evaluation.metrics import classification_metrics
from reprotrain.serving import export_tags
from reprotrain.tables import card, classical, evaluation, importance, inference, packaging
from reprotrain.tables.features import InputSpec
from reprotrain.tables.schema import Schema
from reprotrain.tables.training import Split, load_split
from reprotrain.tracking import images, registration

SPEC = dag.stage("evaluate", "table")
IMAGES_DIR = paths.PLOTS_DIR / "images"
METRICS = paths.METRICS_DIR / "evaluate.json"
PROMOTION = paths.METRICS_DIR / "promotion.json"
logger = logging.getLogger("reprotrain.stages.table.evaluate")


def main() -> int:
    params = load_params()
    dag.check_kind(SPEC, params.data.kind)
    cfg = params.evaluate
    mode = registration.promotion_mode()  # $REPROTRAIN_PROMOTE, checked before anything slow
    info = runtime.configure(params.runtime, params.seed)
    schema = Schema.load(paths.TABLE_PREPARED)
    spec, labels = InputSpec.from_schema(schema), list(schema.labels)
    test = load_split(paths.TABLE_PREPARED, "test", schema)
    with tracking.stage_run(
        SPEC, params, Path.cwd(), environment=runtime.environment_info(info)
    ) as run:
        model = inference.load(paths.TABLE_MODEL, num_classes=len(labels))
        probs = inference.predict_probs(model, test.inputs, spec)
        metrics = classification_metrics(
            test.y, probs, labels, top_k=cfg.top_k, calibration_bins=cfg.calibration_bins
        )
        base_probs = classical.baseline_probs(
            classical.load_baseline(paths.TABLE_BASELINE), test.frame, schema
        )
        base_metrics = classification_metrics(
            test.y, base_probs, labels, top_k=cfg.top_k, calibration_bins=cfg.calibration_bins
        )
        gain = evaluation.baseline_gain(
            test.y, base_probs.argmax(axis=1), probs.argmax(axis=1), alpha=cfg.alpha
        )
        ranked = importance.permutation_importance(
            lambda x: inference.predict_probs(model, x, spec),
            test.inputs,
            test.y,
            spec,
            seed=params.seed,
        )
        worst = evaluation.worst_rows(test.frame, test.y, probs, labels, spec, cfg.worst_examples)
        report = {
            **metrics,
            "baseline": base_metrics,
            "baseline_gain": {k: v for k, v in gain.items() if k != "summary"},
            "importance": {r["column"]: r["drop"] for r in ranked},
            "n_test": len(test),
        }
        fsio.atomic_write_json(METRICS, report)
        history = plots.read_history(paths.TABLE_HISTORY)
        evaluation.write_plots(
            test.y,
            probs,
            labels,
            history,
            worst,
            plots_dir=paths.PLOTS_DIR,
            images_dir=IMAGES_DIR,
        )
        rows = evaluation.prediction_rows(test.frame, test.y, probs, labels)
        plots.write_csv(paths.PLOTS_DIR / "predictions.csv", rows, list(rows[0]))
        run.log_pipeline_metrics(
            flatten_metrics({k: v for k, v in report.items() if k != "importance"})
        )
        run.log_metrics(importance.as_metrics(ranked))
        run.log_dict({"permutation_importance": ranked}, "importance.json")
        run.log_artifact(METRICS)
        run.log_artifact(paths.PLOTS_DIR, artifact_path="plots")

        floor = evaluation.accuracy_floor(params.table.min_accuracy, base_metrics["accuracy"])
        promotion = promote(run, params, test, spec, labels, probs, floor, mode)
        fsio.atomic_write_json(PROMOTION, promotion)
        run.log_artifact(PROMOTION)
        name, version = promotion["registered_model"], promotion["version"]
        export_report = _read_json(paths.EXPORT_METRICS)
        if export_report is not None:
            export_run = tracking.read_sidecar(paths.TABLE_EXPORT_RUN) or {}
            export_tags.attach_exports(name, version, export_report, export_run.get("run_id"))
        card.write_card(
            paths.MODEL_CARD,
            card.TableCard(
                model_name=name,
                version=version,
                keras_name=model.name,
                labels=labels,
                schema=schema.to_dict(),
                metrics=metrics,
                counts={"test": len(test)},
                params=to_dict(params),
                run_id=run.run_id,
                reproduce=f"python -m reprotrain reproduce {run.run_id}",
                baseline_gain=gain,
                importance=ranked,
                worst=worst[:8],
                promotion=promotion,
                floor=floor,
                export=export_report,
                data_source=params.data.source,
            ),
        )
        run.log_artifact(paths.REPORTS_DIR, artifact_path="reports")
        images.log_images(run, images.figure_keys({"evaluate": [IMAGES_DIR]}))
        registration.describe_version(run, name, version, paths.MODEL_CARD)
    return 0


def promote(  # noqa: PLR0913  (the scored challenger's parts, named)
    run: tracking.StageRun,
    params,
    test: Split,
    spec: InputSpec,
    labels: list[str],
    probs,
    floor: tuple[float, str],
    mode: str,
) -> dict:
    """Snapshot the champion, score it where the decision needs it, decide, then register
    the candidate and apply the decision (the image kind's order: anything failing before
    the registration leaves the registry as it was)."""
    cfg, name = params.evaluate, params.tracking.registered_model
    challenger = decision.Challenger(
        test.y,
        probs,
        tuple(labels),
        0,
        evaluation.test_digest(test.frame, test.y),
        kind="table",
        inputs=json.dumps(spec.to_dict(), sort_keys=True),
    )
    rule = gate.GateRule(
        floor[0],
        cfg.min_improvement,
        cfg.alpha,
        cfg.max_class_regression,
        seed=params.seed,
        floor_name=floor[1],
    )
    policy = decision.Policy(
        cfg.gate, rule, name, mode, run.reproduces, os.environ.get("DVC_EXP_NAME")
    )
    hint = "it cannot be scored on this test set"
    champion = registration.scored_champion(
        run,
        name,
        challenger,
        policy,
        lambda file: inference.predict_probs(
            inference.load(file, num_classes=len(labels), hint=hint), test.inputs, spec
        ),
    )
    verdict = decision.decide_promotion(challenger, champion, policy)
    version = registration.register_version(
        run,
        name,
        challenger,
        lambda: packaging.log_table_model(run, paths.TABLE_MODEL, labels, spec),
    )
    return registration.apply_decision(run, name, version, verdict, challenger.accuracy)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


if __name__ == "__main__":
    run_main(main)
