"""baseline: a small model trained from scratch on the same data, for comparison.

What the pretrained backbone buys is only visible next to a model without it: this stage
trains ``baseline.architecture`` (cnn | mlp | residual | package.module:function, see
reprotrain.models.scratch) on the same TFRecords at a small input size, and evaluate
reports the transfer gain. Reads data/prepared, writes models/baseline.keras (+ history,
TensorBoard logs, metrics and the MLflow run sidecar). ≈ 18 s on 2 CPU cores with the
defaults (cnn, 64 px, 10 epochs).
"""

from __future__ import annotations

import logging

from reprotrain import dag, paths, runtime, stage_io, training
from reprotrain.cli import run_main
from reprotrain.config import load_params
from reprotrain.models import scratch

STAGE = "baseline"
SPEC = dag.stage(STAGE)
logger = logging.getLogger("reprotrain.stages.baseline")


def main() -> int:
    params = load_params()
    cfg = params.baseline
    # Seeds, dtype policy and strategy: before any model or dataset is built.
    info = runtime.configure(params.runtime, params.seed, multi_worker=True)
    data = stage_io.load_stage_data(
        paths.PREPARED_DIR, params.pipeline, cfg, image_size=cfg.image_size, seed=params.seed
    )
    with stage_io.training_stage(SPEC, params, info, digests=[data.digest]) as stage:
        with info.strategy.scope():
            model = scratch.build(
                cfg.architecture,
                cfg.image_size,
                len(data.labels),
                filters=cfg.filters,
                hidden=cfg.hidden,
                dropout=cfg.dropout,
            )
        counts = scratch.parameter_count(model)
        logger.info(
            "baseline: %s (%s), %d trainable params",
            cfg.architecture,
            model.name,
            counts["trainable_params"],
        )
        stage.run.set_tags({"reprotrain.architecture": cfg.architecture})
        run, weights, augment = stage.fit_options(), data.class_weight, data.augment_in_model
        result = training.train(
            model, data.train, data.val, cfg, info, run, class_weight=weights, augment=augment
        )
        stage.finish(model, result, counts)
    return 0


if __name__ == "__main__":
    run_main(main)
