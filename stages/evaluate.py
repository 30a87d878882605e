"""evaluate: score the models on the held-out test split, decide the promotion, apply it.

Reads data/prepared (test shards, labels, manifest), the fine-tuned, head-only and baseline
models and their histories, and metrics/export.json. Writes metrics/evaluate.json, the plots,
plots/predictions.csv, metrics/promotion.json and the model card. The test split is decoded
once; a model identical to one already scored reuses its predictions
(``evaluation.scoring``). Promotion is decided by one pure function
(``evaluation.decision``) from a snapshot of the champion, then applied by one registry call.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from reprotrain import dag, fsio, paths, runtime, tracking
from reprotrain.cli import run_main
from reprotrain.config import Params, load_params
from reprotrain.evaluation import decision, flatten_metrics, gate, results
from reprotrain.evaluation.scoring import ModelScorer
from reprotrain.evaluation.testset import TestSet, load_test_set
from reprotrain.models.loading import load_model
from reprotrain.reports import card
from reprotrain.serving import export_tags, packaging, pyfunc
from reprotrain.tracking import images, registration

SPEC = dag.stage("evaluate")
IMAGES_DIR = paths.PLOTS_DIR / "images"
METRICS = paths.METRICS_DIR / "evaluate.json"
PROMOTION = paths.METRICS_DIR / "promotion.json"
logger = logging.getLogger("reprotrain.stages.evaluate")


def main() -> int:
    params = load_params()
    cfg = params.evaluate
    mode = registration.promotion_mode()  # $REPROTRAIN_PROMOTE, checked before anything slow
    info = runtime.configure(params.runtime, params.seed)  # before any model is built
    size = params.model.image_size
    test = load_test_set(
        paths.PREPARED_DIR, params.pipeline, batch_size=cfg.batch_size, seed=params.seed
    )
    scorer = ModelScorer(
        test.split, test.labels, top_k=cfg.top_k, calibration_bins=cfg.calibration_bins
    )
    with tracking.stage_run(
        SPEC, params, Path.cwd(), environment=runtime.environment_info(info)
    ) as run:
        hint = "rerun training (dvc repro)"
        finetuned = load_model(
            paths.FINETUNED_MODEL, num_classes=len(test.labels), image_size=size, hint=hint
        )
        scores = {
            "finetuned": scorer.evaluate(
                paths.FINETUNED_MODEL, model=finetuned, worst_k=cfg.worst_examples
            ),
            "head": scorer.evaluate(paths.HEAD_MODEL, image_size=size),
            "baseline": scorer.evaluate(
                paths.BASELINE_MODEL, image_size=params.baseline.image_size
            ),
        }
        preds = scores["finetuned"][1]
        test.check_scored(len(preds.y_true))
        report = results.write_results(
            scores,
            test.labels,
            results.HISTORIES,
            metrics_file=METRICS,
            plots_dir=paths.PLOTS_DIR,
            images_dir=IMAGES_DIR,
        )
        run.log_pipeline_metrics(flatten_metrics(report))
        run.log_artifact(METRICS)
        run.log_artifact(paths.PLOTS_DIR, artifact_path="plots")  # CSVs, PNGs, predictions

        promotion = promote(run, params, test, scorer, mode)
        fsio.atomic_write_json(PROMOTION, promotion)
        run.log_artifact(PROMOTION)
        name, version = promotion["registered_model"], promotion["version"]
        export_report = _read_json(paths.EXPORT_METRICS)
        if export_report is not None:
            export_run = tracking.read_sidecar(paths.EXPORT_RUN) or {}
            export_tags.attach_exports(name, version, export_report, export_run.get("run_id"))

        fields = results.card_fields(
            params,
            scores,
            test,
            promotion,
            export_report,
            run_id=run.run_id,
            environment=runtime.environment_info(info),
        )
        card.write_model_card(
            paths.MODEL_CARD, model=finetuned, worst=preds.worst, worst_k=4, **fields
        )
        run.log_artifact(paths.REPORTS_DIR, artifact_path="reports")
        # The same PNGs as MLflow images: the run page's image view, compared across runs.
        figures = {"evaluate": [IMAGES_DIR], "model_card": [paths.MODEL_CARD.parent / card.FIGURES]}
        images.log_images(run, images.figure_keys(figures))
        registration.describe_version(run, name, version, paths.MODEL_CARD)
    return 0


def promote(
    run: tracking.StageRun, params: Params, test: TestSet, scorer: ModelScorer, mode: str
) -> dict:
    """Snapshot the champion, score it where the decision needs it, decide, then register
    the candidate and apply the decision. Anything that fails before the registration leaves
    the registry as it was."""
    cfg, name = params.evaluate, params.tracking.registered_model
    preds = scorer.predictions(paths.FINETUNED_MODEL)
    challenger = decision.Challenger(
        preds.y_true, preds.probs, tuple(test.labels), params.model.image_size, test.digest
    )
    rule = gate.GateRule(
        cfg.min_accuracy, cfg.min_improvement, cfg.alpha, cfg.max_class_regression, seed=params.seed
    )
    policy = decision.Policy(
        cfg.gate, rule, name, mode, run.reproduces, os.environ.get("DVC_EXP_NAME")
    )
    hint = "it cannot be scored on this test set"
    champion = registration.scored_champion(
        run, name, challenger, policy, lambda file: scorer.predictions(file, hint=hint).probs
    )
    verdict = decision.decide_promotion(challenger, champion, policy)
    # The registered model takes photos, normalised exactly as prepare normalised the
    # training images (stats.json records how).
    norm = test.stats["normalization"]
    version = registration.register_version(
        run,
        name,
        challenger,
        lambda: packaging.log_photo_model(
            run,
            paths.FINETUNED_MODEL,
            test.labels,
            pyfunc.PhotoInput(params.model.image_size, norm["max_side"], norm["jpeg_quality"]),
        ),
    )
    return registration.apply_decision(run, name, version, verdict, challenger.accuracy)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


if __name__ == "__main__":
    run_main(main)
