"""train_head: a new classification head on the frozen ImageNet MobileNetV2 base.

Reads data/prepared, writes models/head.keras (+ history, TensorBoard logs, metrics and the
MLflow run sidecar). ≈ 1 min on 2 CPU cores with the defaults (feature cache on).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from reprotrain import paths, runtime, tracking
from reprotrain.cli import run_main
from reprotrain.config import load_params, to_dict

STAGE = "train_head"
SECTIONS = ("seed", "model", "pipeline", "runtime", "train_head")


def main() -> int:
    params = load_params()
    cfg = params.train_head
    info = runtime.configure(params.runtime, params.seed)
    from reprotrain import training  # TensorFlow: after the runtime is configured
    from reprotrain.models import transfer

    cached = training.use_feature_cache(cfg)
    data = training.load_stage_data(
        paths.PREPARED_DIR, params.pipeline, cfg,
        image_size=params.model.image_size, seed=params.seed, train_as_eval=cached,
    )  # fmt: skip
    tb_dir = paths.TENSORBOARD_DIR / STAGE
    shutil.rmtree(tb_dir, ignore_errors=True)
    key = training.fingerprint(STAGE, [to_dict(getattr(params, s)) for s in SECTIONS], data.digest)
    with tracking.stage_run(
        STAGE, params, sections=SECTIONS, root=Path.cwd(), upstream=[paths.PREPARE_RUN],
        sidecar=paths.HEAD_RUN, environment=runtime.environment_info(info),
    ) as run:  # fmt: skip
        with info.strategy.scope():
            model = transfer.build_model(params.model, len(data.labels), cfg.dropout)
        common = dict(
            checkpoint_dir=paths.CHECKPOINTS_DIR / STAGE, tensorboard_dir=tb_dir,
            class_weight=data.class_weight, resume_key=key,
            epoch_hook=lambda epoch, metrics: run.log_metrics(metrics, step=epoch),
        )  # fmt: skip
        if cached:
            result = training.train_head_cached(
                model, data.train, data.val, cfg, info, seed=params.seed, **common
            )
        else:
            result = training.train(model, data.train, data.val, cfg, info, **common)
        metrics = training.save_outputs(
            model, result, model_path=paths.HEAD_MODEL, history_path=paths.HEAD_HISTORY,
            metrics_path=paths.METRICS_DIR / f"{STAGE}.json",
            extra={"feature_cache": cached, **training.trainable_counts(model)},
        )  # fmt: skip
        run.set_tags({"reprotrain.feature_cache": cached})
        run.log_metrics(training.final_metrics(metrics))
        for path in (paths.HEAD_MODEL, paths.HEAD_HISTORY, paths.METRICS_DIR / f"{STAGE}.json"):
            run.log_artifact(path)
        run.log_artifact(tb_dir, artifact_path=f"tensorboard/{STAGE}")
    return 0


if __name__ == "__main__":
    run_main(main)
