"""What evaluate writes for people and for DVC: ``metrics/evaluate.json`` (the fine-tuned
model's metrics at the top level, the head's and the baseline's beside them), the plot CSVs
and PNGs, per-class recall by model and one prediction row per test image; and what the
model card is made of (:func:`card_fields`), gathered from the same scores
(:func:`score_models`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reprotrain import paths
from reprotrain.config import Params, to_dict
from reprotrain.evaluation import compare, gain, plots
from reprotrain.evaluation.metrics import plot_inputs
from reprotrain.evaluation.predictions import SplitPredictions
from reprotrain.evaluation.rows import prediction_rows
from reprotrain.evaluation.scoring import ModelScorer
from reprotrain.evaluation.testset import TestSet
from reprotrain.fsio import atomic_write_json

#: The models evaluate scores, by name: the candidate first.
Scores = Mapping[str, tuple[dict[str, Any], SplitPredictions]]
#: The training histories evaluate reads (the timeline plot, the card's epochs), by stage.
HISTORIES = (("train_head", paths.HEAD_HISTORY), ("finetune", paths.FINETUNED_HISTORY))
#: The PNGs (the DVC plots' CSVs are in ``paths.PLOTS_DIR``; MLflow shows these as images).
IMAGES_DIR = paths.PLOTS_DIR / "images"


def score_models(scorer: ModelScorer, finetuned: Any, params: Params) -> Scores:
    """The candidate (the fine-tuned model, already loaded: the card reads it), the head and
    the from-scratch baseline on the test split, in that order."""
    return {
        "finetuned": scorer.evaluate(
            paths.FINETUNED_MODEL, model=finetuned, worst_k=params.evaluate.worst_examples
        ),
        "head": scorer.evaluate(paths.HEAD_MODEL, image_size=params.model.image_size),
        "baseline": scorer.evaluate(paths.BASELINE_MODEL, image_size=params.baseline.image_size),
    }


def metrics_report(scores: Scores) -> dict[str, Any]:
    """The candidate's (``finetuned``) metrics at the top level, the others under their
    names, the transfer gain over the from-scratch baseline and the test-set size."""
    metrics, preds = scores["finetuned"]
    baseline = scores["baseline"][0]
    return {
        **metrics,
        "transfer_gain": compare.transfer_gain(metrics["accuracy"], baseline["accuracy"]),
        **{name: m for name, (m, _) in scores.items() if name != "finetuned"},
        "n_test": len(preds.y_true),
    }


def write_results(
    scores: Scores,
    labels: Sequence[str],
    *,
    metrics_file: Path,
    histories: Sequence[tuple[str, Path]] = HISTORIES,
    plots_dir: Path = paths.PLOTS_DIR,
    images_dir: Path = IMAGES_DIR,
) -> dict[str, Any]:
    """Write every evaluation output; returns the metrics report."""
    report = metrics_report(scores)
    atomic_write_json(metrics_file, report)
    preds = scores["finetuned"][1]
    timeline = plots.training_timeline([(stage, plots.read_history(p)) for stage, p in histories])
    plots.write_evaluation_plots(
        plot_inputs(preds.y_true, preds.probs, labels),
        labels,
        timeline,
        preds.worst,
        plots_dir=plots_dir,
        images_dir=images_dir,
    )
    recalls = {
        name: compare.per_class_recall(p.y_true, p.probs.argmax(axis=1), len(labels))
        for name, (_, p) in scores.items()
    }
    compare.write_recall_csv(plots_dir / compare.RECALL_CSV, labels, recalls)
    compare.plot_recall_comparison(labels, recalls, images_dir / compare.RECALL_PNG)
    rows = prediction_rows(preds, labels)
    plots.write_csv(plots_dir / "predictions.csv", rows, list(rows[0]))
    return report


def card_fields(
    params: Params,
    scores: Scores,
    test: TestSet,
    promotion: Mapping[str, Any],
    export: Mapping[str, Any] | None,
    *,
    run_id: str,
    environment: Mapping[str, Any],
) -> dict[str, Any]:
    """The model card's fields (``reports.card.CardData``'s) for the candidate
    (``scores["finetuned"]``): its test predictions and metrics, the registered version and
    promotion (``metrics/promotion.json``), the export report, the data and params it was
    trained from, the epochs each training stage ran (:data:`HISTORIES`) and what
    fine-tuning added over the head on the same images."""
    metrics, preds = scores["finetuned"]
    return {
        "model_name": promotion["registered_model"],
        "version": promotion["version"],
        "labels": test.labels,
        "y_true": preds.y_true,
        "probs": preds.probs,
        "metrics": metrics,
        "stats": test.stats,
        "params": to_dict(params),
        "environment": environment,
        "run_id": run_id,
        "data_source": params.data.source,
        "data_digest": params.data.sha256 or "",
        "epochs_run": {s: len(plots.read_history(p)["epoch"]) for s, p in HISTORIES},
        "promotion": promotion,
        "export": export,
        "reproduce": f"python -m reprotrain reproduce {run_id}",
        "seed": params.seed,
        "finetune_gain": gain.finetune_gain(
            preds.y_true,
            scores["head"][1].probs.argmax(axis=1),
            preds.probs.argmax(axis=1),
            alpha=params.evaluate.alpha,
        ),
    }
