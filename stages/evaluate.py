"""evaluate: score the fine-tuned and the head-only model on the held-out test split.

Reads data/prepared (test shards, labels, manifest), models/{head,finetuned}.keras and
their histories. Writes metrics/evaluate.json (finetuned metrics at the top level, the
head's under "head"), the DVC plot CSVs and PNGs under plots/, plots/predictions.csv, then
registers the fine-tuned model and applies the promotion gate (metrics/promotion.json).
≈ 20 s on 2 CPU cores for the default data.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from reprotrain import paths, runtime, tracking
from reprotrain.cli import run_main
from reprotrain.config import load_params
from reprotrain.errors import DataError

STAGE = "evaluate"
SECTIONS = ("seed", "model", "evaluate", "tracking")
IMAGES_DIR = paths.PLOTS_DIR / "images"
PREDICTIONS = paths.PLOTS_DIR / "predictions.csv"
METRICS = paths.METRICS_DIR / "evaluate.json"
PROMOTION = paths.METRICS_DIR / "promotion.json"
logger = logging.getLogger("reprotrain.stages.evaluate")


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def main() -> int:
    params = load_params()
    cfg = params.evaluate
    info = runtime.configure(params.runtime, params.seed)
    from reprotrain import evaluation  # TensorFlow: after the runtime is configured
    from reprotrain.data import pipeline
    from reprotrain.evaluation import plots

    size = params.model.image_size
    labels = pipeline.read_labels(paths.PREPARED_DIR)
    manifest = paths.PREPARED_DIR / "manifest.csv"
    test_files = paths.split_files(paths.PREPARED_DIR, "test")
    n_expected = len(evaluation.split_sha256(manifest, "test"))
    if not test_files or n_expected == 0:
        raise DataError(
            f"no test images in {paths.PREPARED_DIR}: the test split is empty "
            "(add images or raise prepare.test_fraction), then rerun prepare"
        )
    common = dict(
        pipeline_cfg=params.pipeline, image_size=size, batch_size=cfg.batch_size,
        seed=params.seed, top_k=cfg.top_k, calibration_bins=cfg.calibration_bins,
    )  # fmt: skip
    with tracking.stage_run(
        STAGE, params, sections=SECTIONS, root=Path.cwd(),
        upstream=[paths.PREPARE_RUN, paths.HEAD_RUN, paths.FINETUNED_RUN],
        sidecar=paths.EVALUATE_RUN, environment=runtime.environment_info(info),
    ) as run:  # fmt: skip
        metrics, preds = evaluation.evaluate_model_file(
            paths.FINETUNED_MODEL, test_files, labels, worst_k=cfg.worst_examples, **common
        )
        head_metrics, _ = evaluation.evaluate_model_file(
            paths.HEAD_MODEL, test_files, labels, **common
        )
        if len(preds.y_true) != n_expected:
            raise DataError(
                f"the test shards hold {len(preds.y_true)} images but manifest.csv lists "
                f"{n_expected}: data/prepared is incomplete; rerun prepare (dvc repro -f prepare)"
            )
        report = {**metrics, "head": head_metrics, "n_test": len(preds.y_true)}
        _write_json(METRICS, report)
        logger.info(
            "test accuracy: finetuned %.4f, head only %.4f (n=%d)",
            metrics["accuracy"], head_metrics["accuracy"], report["n_test"],
        )  # fmt: skip

        timeline = plots.training_timeline(
            [
                ("train_head", plots.read_history(paths.HEAD_HISTORY)),
                ("finetune", plots.read_history(paths.FINETUNED_HISTORY)),
            ]
        )
        plots.write_evaluation_plots(
            preds.y_true, preds.probs, labels, timeline, preds.worst,
            plots_dir=paths.PLOTS_DIR, images_dir=IMAGES_DIR,
        )  # fmt: skip
        rows = evaluation.prediction_rows(preds, labels)
        plots.write_csv(PREDICTIONS, rows, list(rows[0]))

        # The pipeline's headline numbers: on this run and on the pipeline (parent) row.
        run.log_pipeline_metrics(evaluation.flatten_metrics(report))
        run.log_artifact(METRICS)
        run.log_artifact(paths.PLOTS_DIR, artifact_path="plots")  # CSVs, PNGs, predictions

        def rescore(model_path: Path) -> float:
            return evaluation.accuracy_of(
                model_path, test_files, pipeline_cfg=params.pipeline,
                batch_size=cfg.batch_size, seed=params.seed, num_classes=len(labels),
            )  # fmt: skip

        promotion = tracking.register_and_promote(
            run, paths.FINETUNED_MODEL, name=params.tracking.registered_model,
            accuracy=metrics["accuracy"], test_digest=evaluation.test_digest(manifest),
            rescore=rescore, min_accuracy=cfg.min_accuracy,
            min_improvement=cfg.min_improvement, image_size=size, labels=labels,
        )  # fmt: skip
        _write_json(PROMOTION, promotion)
        run.log_artifact(PROMOTION)
        logger.info("promotion: %s", promotion.get("reason"))
    return 0


if __name__ == "__main__":
    run_main(main)
