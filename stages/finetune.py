"""finetune: unfreeze the top of the base and continue training at a low learning rate.

Reads models/head.keras and data/prepared, writes models/finetuned.keras (+ history,
TensorBoard logs, metrics and the MLflow run sidecar). BatchNormalization layers stay
frozen and the base stays in inference mode (see reprotrain.models.transfer).

metrics/finetune.json's ``vs_head`` says what the stage added over the head on the test
split (both accuracies, the delta, the gate's paired McNemar test, one ``summary`` line):
reported, never used to choose (the kept weights are chosen on validation). The defaults
and the recipes behind them: docs/finetuning.md.
"""

from __future__ import annotations

from typing import Any

from reprotrain import dag, fsio, paths, runtime, stage_io, training
from reprotrain.cli import run_main
from reprotrain.config import load_params
from reprotrain.evaluation import gain
from reprotrain.evaluation.predictions import score
from reprotrain.models import transfer

SPEC = dag.stage("finetune")


def main() -> int:
    params = load_params()
    cfg = params.finetune
    # Seeds, dtype policy and strategy: before any model or dataset is built.
    info = runtime.configure(params.runtime, params.seed, multi_worker=True)
    data = stage_io.load_transfer_data(params, cfg)
    model = stage_io.load_head_model(params, len(data.labels), info)
    tags = transfer.unfreeze_for_finetuning(model, cfg.unfreeze_top)
    test = gain.test_split(params, cfg.batch_size)  # None (empty): no vs_head
    head = score(model, test, name="head") if test is not None else None
    inputs = [data.digest, fsio.file_sha256(paths.HEAD_MODEL)]
    with stage_io.training_stage(SPEC, params, info, digests=inputs) as stage:
        stage.run.set_tags(tags)
        result = training.train(
            model,
            data.train,
            data.val,
            cfg,
            info,
            stage.fit_options(),
            class_weight=data.class_weight,
            augment=data.augment_in_model,
            keep_start_if_better=True,
        )
        extra: dict[str, Any] = dict(stage_io.trainable_counts(model))
        if head is not None and test is not None:
            kept = result.best_epoch == 0
            tuned = head if kept else score(model, test, name="finetuned")
            extra["vs_head"] = gain.vs_head(head, tuned, kept_head=kept)
        stage.finish(model, result, extra)
    return 0


if __name__ == "__main__":
    run_main(main)
