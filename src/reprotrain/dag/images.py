"""The image pipeline: fetch → prepare → train_head → finetune → export → evaluate, and
prepare → baseline (a from-scratch model, for comparison)."""

from __future__ import annotations

from typing import Any

from reprotrain import paths
from reprotrain.dag.spec import (
    CLASSIFIER_PLOTS,
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

_MODEL_PARAMS = ("seed", "model", "pipeline", "runtime")

#: The image pipeline: fetch → prepare → train_head → finetune → export → evaluate, and
#: prepare → baseline.
STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        fetch_stage("images"),
        Stage(
            "prepare",
            params=("seed", "prepare"),
            reads=(str(paths.RAW_DIR),),
            outs=(
                Output(str(paths.PREPARED_DIR)),
                sidecar(paths.PREPARE_RUN),
                Output(
                    str(paths.SPLITS_LEDGER),
                    cache=False,
                    persist=True,
                    note=(
                        "The split ledger: read and extended by prepare (an image's split never\n"
                        "moves). Git-tracked (cache: false) and kept by DVC before each run\n"
                        "(persist: true)."
                    ),
                ),
            ),
            sidecar=str(paths.PREPARE_RUN),
        ),
        training(
            "train_head",
            paths.HEAD_MODEL,
            paths.HEAD_HISTORY,
            paths.HEAD_RUN,
            params=(*_MODEL_PARAMS, "train_head"),
            reads=(str(paths.PREPARED_DIR),),
            upstream=(str(paths.PREPARE_RUN),),
        ),
        training(
            "finetune",
            paths.FINETUNED_MODEL,
            paths.FINETUNED_HISTORY,
            paths.FINETUNED_RUN,
            params=("seed", "model.image_size", "pipeline", "runtime", "finetune"),
            reads=(str(paths.PREPARED_DIR), str(paths.HEAD_MODEL)),
            upstream=(str(paths.PREPARE_RUN), str(paths.HEAD_RUN)),
        ),
        export_stage(
            "images",
            paths.EXPORT_DIR,
            paths.EXPORT_RUN,
            params=("seed", "model.image_size", "pipeline", "runtime", "export"),
            reads=(str(paths.PREPARED_DIR), str(paths.FINETUNED_MODEL)),
            upstream=(str(paths.PREPARE_RUN), str(paths.FINETUNED_RUN)),
        ),
        training(
            "baseline",
            paths.BASELINE_MODEL,
            paths.BASELINE_HISTORY,
            paths.BASELINE_RUN,
            params=("seed", "pipeline", "runtime", "baseline"),
            reads=(str(paths.PREPARED_DIR),),
            upstream=(str(paths.PREPARE_RUN),),
            note=(
                "A from-scratch model (reprotrain.models.scratch) on the same TFRecords, parallel\n"
                "to train_head: evaluate compares it with the transfer models (transfer_gain)."
            ),
        ),
        evaluate_stage(
            "images",
            params=(
                "baseline.image_size",
                # Shown on the model card:
                "model",
                "prepare.max_side",
                "train_head",
                "finetune",
            ),
            reads=(
                str(paths.PREPARED_DIR),
                str(paths.HEAD_MODEL),
                str(paths.FINETUNED_MODEL),
                str(paths.HEAD_HISTORY),
                str(paths.FINETUNED_HISTORY),
                str(paths.BASELINE_MODEL),
            ),
            outs=(
                Output(str(paths.PLOTS_DIR / "images")),
                Output(str(paths.PLOTS_DIR / "predictions.csv")),
                Output(str(paths.REPORTS_DIR / "model_card")),
                *plot_data("confusion", "roc", "pr", "training_curves", "recall_by_model"),
            ),
            upstream=(
                str(paths.PREPARE_RUN),
                str(paths.HEAD_RUN),
                str(paths.FINETUNED_RUN),
                str(paths.BASELINE_RUN),
                str(paths.EXPORT_RUN),
            ),
        ),
    )
}

#: How ``dvc plots show/diff`` draws the files evaluate writes (dvc.yaml's top-level ``plots``).
PLOTS: list[dict[str, Any]] = [
    *CLASSIFIER_PLOTS,
    {
        "Training curves": {
            "template": "linear",
            "x": "step",
            "y": {"plots/training_curves.csv": ["val_accuracy", "accuracy"]},
            "title": "Accuracy across train_head then finetune epochs",
        }
    },
    {
        "Per-class recall by model": {
            "template": "simple",
            "x": "class",
            "y": {"plots/recall_by_model.csv": ["finetuned", "head", "baseline"]},
            "title": "Per-class test recall, fine-tuned vs head-only vs from-scratch baseline",
        }
    },
]


KIND = Kind(
    "images",
    STAGES,
    PLOTS,
    "fetch → prepare → train_head → finetune → export → evaluate, and\n"
    "# prepare → baseline (a from-scratch model, for comparison)",
)
