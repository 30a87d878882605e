"""evaluate: score the models on the held-out test split, decide the promotion, apply it.

Reads data/prepared, the fine-tuned, head-only and baseline models and their histories, and
metrics/export.json. Writes metrics/evaluate.json, the plots, plots/predictions.csv,
metrics/promotion.json and the model card. The test split is decoded once and a model
identical to one already scored reuses its predictions (evaluation.scoring); the decision is
one pure function, applied by one registry call (evaluation.promotion).
"""

from __future__ import annotations

from pathlib import Path

from reprotrain import dag, paths, runtime, tracking
from reprotrain.cli import run_main
from reprotrain.config import load_params
from reprotrain.evaluation import flatten_metrics, promotion, publication, results
from reprotrain.evaluation.scoring import ModelScorer
from reprotrain.evaluation.testset import load_test_set
from reprotrain.models.loading import load_model
from reprotrain.reports import card
from reprotrain.tracking import images, registration

SPEC = dag.stage("evaluate")
METRICS = paths.METRICS_DIR / "evaluate.json"


def main() -> int:
    params = load_params()
    cfg, size = params.evaluate, params.model.image_size
    mode = registration.promotion_mode()  # $REPROTRAIN_PROMOTE, checked before anything slow
    info = runtime.configure(params.runtime, params.seed)  # before any model is built
    env = runtime.environment_info(info)
    test = load_test_set(
        paths.PREPARED_DIR, params.pipeline, batch_size=cfg.batch_size, seed=params.seed
    )
    scorer = ModelScorer(
        test.split, test.labels, top_k=cfg.top_k, calibration_bins=cfg.calibration_bins
    )
    with tracking.stage_run(SPEC, params, Path.cwd(), environment=env) as run:
        n, hint = len(test.labels), "rerun training (dvc repro)"
        model = load_model(paths.FINETUNED_MODEL, num_classes=n, image_size=size, hint=hint)
        scores = results.score_models(scorer, model, params)
        test.check_scored(len(scores["finetuned"][1].y_true))
        report = results.write_results(scores, test.labels, metrics_file=METRICS)
        publication.log_report(run, flatten_metrics(report), METRICS)

        promoted = promotion.promote(run, params, promotion.Candidate(test, scorer), mode)
        export = publication.record_promotion(run, promoted, paths.EXPORT_RUN)
        fields = results.card_fields(
            params, scores, test, promoted, export, run_id=run.run_id, environment=env
        )
        worst = scores["finetuned"][1].worst
        card.write_model_card(paths.MODEL_CARD, model=model, worst=worst, worst_k=4, **fields)
        # The same PNGs as MLflow images: the run page's image view, compared across runs.
        figures = {
            "evaluate": [results.IMAGES_DIR],
            "model_card": [paths.MODEL_CARD.parent / card.FIGURES],
        }
        images.log_images(run, images.figure_keys(figures))
        publication.publish_card(run, promoted, paths.MODEL_CARD)
    return 0


if __name__ == "__main__":
    run_main(main)
