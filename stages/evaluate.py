"""evaluate: score the fine-tuned and the head-only model on the held-out test split.

Reads data/prepared (test shards, labels, manifest), models/{head,finetuned}.keras and
their histories. Writes metrics/evaluate.json (finetuned metrics at the top level, the
head's under "head"), the DVC plot CSVs and PNGs under plots/, plots/predictions.csv, then
registers the fine-tuned model and applies the promotion gate (metrics/promotion.json).
The test split is decoded once and every model is scored from memory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from reprotrain import evaluation, fsio, paths, runtime, tracking
from reprotrain.cli import run_main
from reprotrain.config import load_params, to_dict
from reprotrain.data import pipeline, tfrecords
from reprotrain.errors import DataError
from reprotrain.evaluation import compare, gain, gate, plots
from reprotrain.models.loading import load_model
from reprotrain.reports import card
from reprotrain.serving import export_tags, packaging, pyfunc
from reprotrain.tracking import gating, images

STAGE = "evaluate"
SECTIONS = ("seed", "model", "evaluate", "tracking")
IMAGES_DIR = paths.PLOTS_DIR / "images"
PREDICTIONS = paths.PLOTS_DIR / "predictions.csv"
METRICS = paths.METRICS_DIR / "evaluate.json"
PROMOTION = paths.METRICS_DIR / "promotion.json"
logger = logging.getLogger("reprotrain.stages.evaluate")


def main() -> int:
    params = load_params()
    cfg = params.evaluate
    # Seeds, determinism and strategy: before any model or dataset is built.
    info = runtime.configure(params.runtime, params.seed)
    size = params.model.image_size
    labels = pipeline.read_labels(paths.PREPARED_DIR)
    stats = _read_json(paths.PREPARED_DIR / "stats.json") or {}
    manifest = paths.PREPARED_DIR / "manifest.csv"
    test_files = tfrecords.verify_shards(paths.PREPARED_DIR, "test")
    n_expected = len(evaluation.split_sha256(manifest, "test"))
    if not test_files or n_expected == 0:
        raise DataError(
            f"no test images in {paths.PREPARED_DIR}: the test split is empty "
            "(add images or raise prepare.test_fraction), then rerun prepare"
        )
    # Decoded once, kept in memory, scored by every model below (and the champion re-score).
    split = evaluation.EvalSplit(
        test_files,
        params.pipeline,
        batch_size=cfg.batch_size,
        seed=params.seed,
        expected=n_expected,
    )
    common = dict(image_size=size, top_k=cfg.top_k, calibration_bins=cfg.calibration_bins)
    with tracking.stage_run(
        STAGE,
        params,
        sections=SECTIONS,
        root=Path.cwd(),
        upstream=[
            paths.PREPARE_RUN,
            paths.HEAD_RUN,
            paths.FINETUNED_RUN,
            paths.BASELINE_RUN,
            paths.EXPORT_RUN,
        ],
        sidecar=paths.EVALUATE_RUN,
        environment=runtime.environment_info(info),
    ) as run:
        # Loaded once: scored here, and its Grad-CAM drawn on the model card below.
        finetuned = load_model(
            paths.FINETUNED_MODEL,
            num_classes=len(labels),
            image_size=size,
            hint="rerun training (dvc repro)",
        )
        metrics, preds = evaluation.evaluate_model(
            finetuned,
            split,
            labels,
            worst_k=cfg.worst_examples,
            top_k=cfg.top_k,
            calibration_bins=cfg.calibration_bins,
            name="finetuned",
        )
        # Finetune keeps the head's weights when no epoch beats them: then nothing to rescore.
        head_metrics, head_preds = evaluation.evaluate_model_file(
            paths.HEAD_MODEL, split, labels, same_as=(paths.FINETUNED_MODEL, preds), **common
        )
        # What transfer learning buys: the from-scratch baseline on the same test images.
        base_common = {**common, "image_size": params.baseline.image_size}
        baseline_metrics, baseline_preds = evaluation.evaluate_model_file(
            paths.BASELINE_MODEL, split, labels, **base_common
        )
        if len(preds.y_true) != n_expected:
            raise DataError(
                f"the test shards hold {len(preds.y_true)} images but manifest.csv lists "
                f"{n_expected}: data/prepared is incomplete; rerun prepare (dvc repro -f prepare)"
            )
        report = {
            **metrics,
            "transfer_gain": compare.transfer_gain(
                metrics["accuracy"], baseline_metrics["accuracy"]
            ),
            "head": head_metrics,
            "baseline": baseline_metrics,
            "n_test": len(preds.y_true),
        }
        fsio.atomic_write_json(METRICS, report)
        logger.info(
            "test accuracy: finetuned %.4f, head only %.4f, baseline %.4f (n=%d)",
            metrics["accuracy"],
            head_metrics["accuracy"],
            baseline_metrics["accuracy"],
            report["n_test"],
        )

        timeline = plots.training_timeline(
            [
                ("train_head", plots.read_history(paths.HEAD_HISTORY)),
                ("finetune", plots.read_history(paths.FINETUNED_HISTORY)),
            ]
        )
        plots.write_evaluation_plots(
            evaluation.plot_inputs(preds.y_true, preds.probs, labels),
            labels,
            timeline,
            preds.worst,
            plots_dir=paths.PLOTS_DIR,
            images_dir=IMAGES_DIR,
        )
        recalls = {
            name: compare.per_class_recall(p.y_true, p.probs.argmax(axis=1), len(labels))
            for name, p in (
                ("finetuned", preds),
                ("head", head_preds),
                ("baseline", baseline_preds),
            )
        }
        compare.write_recall_csv(paths.PLOTS_DIR / compare.RECALL_CSV, labels, recalls)
        compare.plot_recall_comparison(labels, recalls, IMAGES_DIR / compare.RECALL_PNG)
        rows = evaluation.prediction_rows(preds, labels)
        plots.write_csv(PREDICTIONS, rows, list(rows[0]))

        # The pipeline's headline numbers: on this run and on the pipeline (parent) row.
        run.log_pipeline_metrics(evaluation.flatten_metrics(report))
        run.log_artifact(METRICS)
        run.log_artifact(paths.PLOTS_DIR, artifact_path="plots")  # CSVs, PNGs, predictions

        def rescore(model_path: Path) -> float:
            return evaluation.accuracy_of(model_path, split, num_classes=len(labels))

        def paired(champion_file: Path | None) -> dict:
            champion_probs = None
            if champion_file is not None:
                champion_probs = evaluation.champion_predictions(
                    champion_file, paths.FINETUNED_MODEL, preds, split, num_classes=len(labels)
                ).probs
            return gate.decide_paired(
                preds.y_true,
                preds.probs,
                champion_probs,
                labels,
                min_accuracy=cfg.min_accuracy,
                min_improvement=cfg.min_improvement,
                alpha=cfg.alpha,
                max_class_regression=cfg.max_class_regression,
                seed=params.seed,
            )

        # The registered model takes photos (base64 JPEG/PNG/...), normalised exactly as
        # prepare normalised the training images (stats.json records how).
        norm = stats["normalization"]
        name = params.tracking.registered_model
        promotion = gating.register_and_promote(
            run,
            paths.FINETUNED_MODEL,
            name=name,
            accuracy=metrics["accuracy"],
            test_digest=evaluation.test_digest(manifest),
            rescore=rescore,
            min_accuracy=cfg.min_accuracy,
            min_improvement=cfg.min_improvement,
            image_size=size,
            labels=labels,
            paired=paired if cfg.gate == "paired" else None,
            log_model=lambda: packaging.log_photo_model(
                run,
                paths.FINETUNED_MODEL,
                labels,
                pyfunc.PhotoInput(size, norm["max_side"], norm["jpeg_quality"]),
            ),
        )
        fsio.atomic_write_json(PROMOTION, promotion)
        run.log_artifact(PROMOTION)
        logger.info("promotion: %s", promotion.get("reason"))

        export_report = _read_json(paths.EXPORT_METRICS)
        if export_report is not None:
            export_run = tracking.read_sidecar(paths.EXPORT_RUN) or {}
            export_tags.attach_exports(
                name, promotion["version"], export_report, export_run.get("run_id")
            )

        card.write_model_card(
            paths.MODEL_CARD,
            model=finetuned,
            worst=preds.worst,
            worst_k=4,
            model_name=name,
            version=promotion["version"],
            labels=labels,
            y_true=preds.y_true,
            probs=preds.probs,
            metrics=metrics,
            stats=stats,
            params=to_dict(params),
            environment=runtime.environment_info(info),
            run_id=run.run_id,
            data_source=params.data.source,
            data_digest=params.data.sha256 or "",
            epochs_run={
                stage: len(plots.read_history(path)["epoch"])
                for stage, path in (
                    ("train_head", paths.HEAD_HISTORY),
                    ("finetune", paths.FINETUNED_HISTORY),
                )
            },
            promotion=promotion,
            export=export_report,
            reproduce=f"python -m reprotrain reproduce {run.run_id}",
            seed=params.seed,
            finetune_gain=gain.finetune_gain(
                preds.y_true,
                head_preds.probs.argmax(axis=1),
                preds.probs.argmax(axis=1),
                alpha=cfg.alpha,
            ),
        )
        run.log_artifact(paths.REPORTS_DIR, artifact_path="reports")
        # The same PNGs as MLflow images: the run page's image view, compared across runs.
        figures = {"evaluate": [IMAGES_DIR], "model_card": [paths.MODEL_CARD.parent / card.FIGURES]}
        images.log_images(run, images.figure_keys(figures))
        gating.describe_version(run, name, promotion["version"], paths.MODEL_CARD)
    return 0


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


if __name__ == "__main__":
    run_main(main)
