"""finetune: unfreeze the top of the base and continue training at a low learning rate.

Reads models/head.keras and data/prepared, writes models/finetuned.keras (+ history,
TensorBoard logs, metrics and the MLflow run sidecar). BatchNormalization layers stay
frozen and the base stays in inference mode (see reprotrain.models.transfer).
"""

from __future__ import annotations

import logging

from reprotrain import fsio, paths, runtime, stage_io, training
from reprotrain.cli import run_main
from reprotrain.config import load_params
from reprotrain.models import transfer
from reprotrain.models.loading import load_model

STAGE = "finetune"
SECTIONS = ("seed", "model", "pipeline", "runtime", "finetune")
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
    with stage_io.training_stage(
        STAGE,
        params,
        info,
        sections=SECTIONS,
        upstream=[paths.PREPARE_RUN, paths.HEAD_RUN],
        sidecar=paths.FINETUNED_RUN,
        model_path=paths.FINETUNED_MODEL,
        history_path=paths.FINETUNED_HISTORY,
        digests=[data.digest, fsio.file_sha256(paths.HEAD_MODEL)],
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
        stage.finish(model, result, stage_io.trainable_counts(model))
    return 0


if __name__ == "__main__":
    run_main(main)
