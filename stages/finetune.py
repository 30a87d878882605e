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

import logging
from typing import Any

from reprotrain import dag, fsio, paths, runtime, stage_io, training
from reprotrain.cli import run_main
from reprotrain.config import Params, load_params
from reprotrain.data import tfrecords
from reprotrain.evaluation import gain
from reprotrain.evaluation.predictions import EvalSplit, score
from reprotrain.models import transfer
from reprotrain.models.loading import load_model

STAGE = "finetune"
SPEC = dag.stage(STAGE)
logger = logging.getLogger("reprotrain.stages.finetune")


def main() -> int:
    params = load_params()
    cfg = params.finetune
    # Seeds, dtype policy and strategy: before any model or dataset is built.
    info = runtime.configure(params.runtime, params.seed, multi_worker=True)
    data = stage_io.load_transfer_data(params, cfg)
    model = load_model(
        paths.HEAD_MODEL,
        num_classes=len(data.labels),
        image_size=params.model.image_size,
        strategy=info.strategy,
        hint="rerun train_head (dvc repro train_head)",
    )
    names = transfer.unfreeze_top(model, cfg.unfreeze_top)
    summary = transfer.trainable_summary(model)
    logger.info(
        "finetune: %d trainable base layers (top %d, BatchNorm frozen), %d trainable params: %s",
        len(names),
        cfg.unfreeze_top,
        summary["trainable_params"],
        ", ".join(names) or "-",
    )
    test = _test_split(params)
    head_preds = score(model, test, name="head") if test is not None else None
    with stage_io.training_stage(
        SPEC, params, info, digests=[data.digest, fsio.file_sha256(paths.HEAD_MODEL)]
    ) as stage:
        stage.run.set_tags(
            {
                "reprotrain.trainable_layer_count": len(names),
                "reprotrain.trainable_layers": ",".join(names),
                "reprotrain.trainable_params": summary["trainable_params"],
            }
        )
        result = training.train(
            model,
            data.train,
            data.val,
            cfg,
            info,
            class_weight=data.class_weight,
            augment=data.augment_in_model,
            keep_start_if_better=True,
            **stage.fit_options(),
        )
        extra: dict[str, Any] = dict(stage_io.trainable_counts(model))
        if head_preds is not None and test is not None:
            kept = result.best_epoch == 0
            tuned = head_preds if kept else score(model, test, name="finetuned")
            extra["vs_head"] = gain.finetune_gain(
                head_preds.y_true,
                head_preds.probs.argmax(axis=1),
                tuned.probs.argmax(axis=1),
                alpha=gain.ALPHA,
                kept_head=kept,
            )
            logger.info("%s", extra["vs_head"]["summary"])
        stage.finish(model, result, extra)
    return 0


def _test_split(params: Params) -> EvalSplit | None:
    """The test split (decoded once, scored before and after), or None when it is empty."""
    files = tfrecords.verify_shards(paths.PREPARED_DIR, "test")
    if not files:
        logger.info("no test split: metrics/finetune.json has no vs_head")
        return None
    batch = params.finetune.batch_size
    return EvalSplit(files, params.pipeline, batch_size=batch, seed=params.seed)


if __name__ == "__main__":
    run_main(main)
