"""train_head: a new classification head on the frozen ImageNet MobileNetV2 base.

Reads data/prepared, writes models/head.keras (+ history, TensorBoard logs, metrics and the
MLflow run sidecar). ≈ 1 min on 2 CPU cores with the defaults (feature cache on).
"""

from __future__ import annotations

from reprotrain import dag, runtime, stage_io, training
from reprotrain.cli import run_main
from reprotrain.config import load_params
from reprotrain.models import transfer

STAGE = "train_head"
SPEC = dag.stage(STAGE)


def main() -> int:
    params = load_params()
    cfg = params.train_head
    # Seeds, dtype policy and strategy: before any model or dataset is built.
    info = runtime.configure(params.runtime, params.seed, multi_worker=True)
    cached = training.use_feature_cache(cfg, info.num_workers)
    data = stage_io.load_transfer_data(params, cfg, train_as_eval=cached)
    with stage_io.training_stage(SPEC, params, info, digests=[data.digest]) as stage:
        with info.strategy.scope():
            model = transfer.build_model(params.model, len(data.labels), cfg.dropout)
        run, weights = stage.fit_options(), data.class_weight
        if cached:  # features of unaugmented images: nothing to augment in the step
            result = training.train_head_cached(
                model, data.train, data.val, cfg, info, run, seed=params.seed, class_weight=weights
            )
        else:
            result = training.train(
                model,
                data.train,
                data.val,
                cfg,
                info,
                run,
                class_weight=weights,
                augment=data.augment_in_model,
            )
        stage.run.set_tags({"reprotrain.feature_cache": cached})
        stage.finish(model, result, {"feature_cache": cached, **stage_io.trainable_counts(model)})
    return 0


if __name__ == "__main__":
    run_main(main)
