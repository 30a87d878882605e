"""The table pipeline (``data.kind: table``): fetch → prepare → train → export → evaluate,
and prepare → baseline (scikit-learn on the same splits, for comparison). No finetune: there
is no pretrained backbone to fine-tune."""

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
    git_file,
    plot_data,
    sidecar,
    training,
)

KIND_NAME = "table"
_PREPARED = str(paths.TABLE_PREPARED)
#: The last prepare's schema.json, kept beside the ledger (git-tracked, persist).
LAST_SCHEMA = paths.TABLE_DIR / "schema.json"

STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        fetch_stage(KIND_NAME),
        Stage(
            "prepare",
            params=(
                "seed",
                "prepare.val_fraction",
                "prepare.test_fraction",
                "prepare.test_from_val",
                "prepare.shard_size",
                "data.columns",
                "table.max_categories",
                "table.sequence_length",
            ),
            reads=(str(paths.RAW_DIR),),
            outs=(
                Output(_PREPARED),
                sidecar(paths.TABLE_PREPARE_RUN),
                Output(
                    str(LAST_SCHEMA),
                    cache=False,
                    persist=True,
                    note=(
                        "The last prepare's schema (column roles), compared with the next one's\n"
                        "to report a changed schema (DVC deletes the prepared data first)."
                    ),
                ),
                Output(
                    str(paths.TABLE_LEDGER),
                    cache=False,
                    persist=True,
                    note=(
                        "The row ledger (row hash → split): read and extended by prepare (a\n"
                        "row's split never moves). Git-tracked and kept by DVC before each run."
                    ),
                ),
            ),
            sidecar=str(paths.TABLE_PREPARE_RUN),
            kind=KIND_NAME,
        ),
        training(
            "train",
            paths.TABLE_MODEL,
            paths.TABLE_HISTORY,
            paths.TABLE_RUN,
            params=("seed", "model.api", "pipeline.shuffle_buffer", "runtime", "table"),
            reads=(_PREPARED,),
            upstream=(str(paths.TABLE_PREPARE_RUN),),
            kind=KIND_NAME,
        ),
        Stage(
            "baseline",
            params=("seed", "table.max_tokens"),
            reads=(_PREPARED,),
            outs=(Output(str(paths.TABLE_BASELINE)), sidecar(paths.TABLE_BASELINE_RUN)),
            metrics=(git_file(paths.METRICS_DIR / "baseline.json"),),
            sidecar=str(paths.TABLE_BASELINE_RUN),
            upstream=(str(paths.TABLE_PREPARE_RUN),),
            kind=KIND_NAME,
            note="scikit-learn on the same splits: what evaluate says the network gains over.",
        ),
        export_stage(
            KIND_NAME,
            paths.TABLE_EXPORT_DIR,
            paths.TABLE_EXPORT_RUN,
            params=("seed", "runtime", "export"),
            reads=(_PREPARED, str(paths.TABLE_MODEL)),
            upstream=(str(paths.TABLE_PREPARE_RUN), str(paths.TABLE_RUN)),
        ),
        evaluate_stage(
            KIND_NAME,
            params=("model.api", "table"),
            reads=(
                _PREPARED,
                str(paths.TABLE_MODEL),
                str(paths.TABLE_HISTORY),
                str(paths.TABLE_BASELINE),
            ),
            outs=(
                Output(str(paths.PLOTS_DIR / "images")),
                Output(str(paths.PLOTS_DIR / "predictions.csv")),
                *plot_data("confusion", "roc", "pr", "training_curves", "worst_rows"),
            ),
            upstream=(
                str(paths.TABLE_PREPARE_RUN),
                str(paths.TABLE_RUN),
                str(paths.TABLE_BASELINE_RUN),
                str(paths.TABLE_EXPORT_RUN),
            ),
        ),
    )
}

#: How ``dvc plots show/diff`` draws the files evaluate writes (the image kind's, one stage).
PLOTS: list[dict[str, Any]] = [
    *CLASSIFIER_PLOTS,
    {
        "Training curves": {
            "template": "linear",
            "x": "step",
            "y": {"plots/training_curves.csv": ["val_accuracy", "accuracy"]},
            "title": "Accuracy over the train stage's epochs",
        }
    },
]

KIND = Kind(
    KIND_NAME,
    STAGES,
    PLOTS,
    "fetch → prepare → train → export → evaluate, and prepare → baseline\n"
    "# (scikit-learn on the same splits, for comparison); data.kind: table",
)
