"""train_head: a new classification head on the frozen ImageNet MobileNetV2 base.

Reads data/prepared, writes models/head.keras (+ history, TensorBoard logs, metrics and the
MLflow run sidecar). ≈ 1 min on 2 CPU cores with the defaults (feature cache on).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from reprotrain import paths, runtime, stage_io, tracking, training
from reprotrain.cli import run_main
from reprotrain.config import load_params, to_dict
from reprotrain.models import transfer

STAGE = "train_head"
SECTIONS = ("seed", "model", "pipeline", "runtime", "train_head")


def main() -> int:
    params = load_params()
    cfg = params.train_head
    # Seeds, dtype policy and strategy: before any model or dataset is built.
    info = runtime.configure(params.runtime, params.seed, multi_worker=True)
    cached = training.use_feature_cache(cfg, info.num_workers)
    data = stage_io.load_stage_data(
        paths.PREPARED_DIR,
        params.pipeline,
        cfg,
        image_size=params.model.image_size,
        seed=params.seed,
        train_as_eval=cached,
    )
    tb_dir = paths.TENSORBOARD_DIR / STAGE
    if info.is_chief:  # multi-worker: the other workers write nothing shared
        shutil.rmtree(tb_dir, ignore_errors=True)
    checkpoint_dir = paths.CHECKPOINTS_DIR / STAGE
    sections = [to_dict(getattr(params, s)) for s in SECTIONS]
    key = stage_io.fingerprint(STAGE, sections, data.digest)
    metrics_path = paths.METRICS_DIR / f"{STAGE}.json"
    with tracking.stage_run(
        STAGE,
        params,
        sections=SECTIONS,
        root=Path.cwd(),
        upstream=[paths.PREPARE_RUN],
        sidecar=paths.HEAD_RUN,
        environment=runtime.environment_info(info),
        chief=info.is_chief,
    ) as run:
        with info.strategy.scope():
            model = transfer.build_model(params.model, len(data.labels), cfg.dropout)
        common = dict(
            checkpoint_dir=checkpoint_dir,
            tensorboard_dir=tb_dir,
            class_weight=data.class_weight,
            resume_key=key,
            epoch_hook=lambda epoch, metrics: run.log_metrics(metrics, step=epoch),
        )
        if cached:
            result = training.train_head_cached(
                model, data.train, data.val, cfg, info, seed=params.seed, **common
            )
        else:
            result = training.train(model, data.train, data.val, cfg, info, **common)
        metrics = stage_io.save_outputs(
            model,
            result,
            model_path=paths.HEAD_MODEL,
            history_path=paths.HEAD_HISTORY,
            metrics_path=metrics_path,
            write=info.is_chief,
            extra={"feature_cache": cached, **stage_io.trainable_counts(model)},
        )
        run.set_tags({"reprotrain.feature_cache": cached})
        run.log_metrics(stage_io.final_metrics(metrics))
        for path in (paths.HEAD_MODEL, paths.HEAD_HISTORY, metrics_path):
            run.log_artifact(path)
        run.log_artifact(tb_dir, artifact_path=f"tensorboard/{STAGE}")
    # Only now: a kill before this line resumes from the backup instead of retraining.
    if info.is_chief:
        training.discard_checkpoint(checkpoint_dir)
    runtime.wait_for_workers(info)  # multi-worker: all leave together
    return 0


if __name__ == "__main__":
    run_main(main)
