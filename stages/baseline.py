"""baseline: a small model trained from scratch on the same data, for comparison.

What the pretrained backbone buys is only visible next to a model without it: this stage
trains ``baseline.architecture`` (cnn | mlp | residual | package.module:function, see
reprotrain.models.scratch) on the same TFRecords at a small input size, and evaluate
reports the transfer gain. Reads data/prepared, writes models/baseline.keras (+ history,
TensorBoard logs, metrics and the MLflow run sidecar). ≈ 20-30 s on 2 CPU cores with the
defaults (cnn, 64 px, 10 epochs).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from reprotrain import paths, runtime, stage_io, tracking, training
from reprotrain.cli import run_main
from reprotrain.config import load_params, to_dict
from reprotrain.models import scratch

STAGE = "baseline"
SECTIONS = ("seed", "pipeline", "runtime", "baseline")
logger = logging.getLogger("reprotrain.stages.baseline")


def main() -> int:
    params = load_params()
    cfg = params.baseline
    # Seeds, dtype policy and strategy: before any model or dataset is built.
    info = runtime.configure(params.runtime, params.seed, multi_worker=True)
    data = stage_io.load_stage_data(
        paths.PREPARED_DIR, params.pipeline, cfg, image_size=cfg.image_size, seed=params.seed
    )
    tb_dir = paths.TENSORBOARD_DIR / STAGE
    if info.is_chief:  # multi-worker: the other workers write nothing shared
        shutil.rmtree(tb_dir, ignore_errors=True)
    checkpoint_dir = paths.CHECKPOINTS_DIR / STAGE
    key = stage_io.fingerprint(STAGE, [to_dict(getattr(params, s)) for s in SECTIONS], data.digest)
    with tracking.stage_run(
        STAGE,
        params,
        sections=SECTIONS,
        root=Path.cwd(),
        upstream=[paths.PREPARE_RUN],
        sidecar=paths.BASELINE_RUN,
        environment=runtime.environment_info(info),
        chief=info.is_chief,
    ) as run:
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
        run.set_tags({"reprotrain.architecture": cfg.architecture})
        result = training.train(
            model,
            data.train,
            data.val,
            cfg,
            info,
            checkpoint_dir=checkpoint_dir,
            tensorboard_dir=tb_dir,
            class_weight=data.class_weight,
            resume_key=key,
            epoch_hook=lambda epoch, metrics: run.log_metrics(metrics, step=epoch),
        )
        metrics_path = paths.METRICS_DIR / f"{STAGE}.json"
        metrics = stage_io.save_outputs(
            model,
            result,
            model_path=paths.BASELINE_MODEL,
            history_path=paths.BASELINE_HISTORY,
            metrics_path=metrics_path,
            write=info.is_chief,
            extra=counts,
        )
        run.log_metrics(stage_io.final_metrics(metrics))
        for path in (paths.BASELINE_MODEL, paths.BASELINE_HISTORY, metrics_path):
            run.log_artifact(path)
        run.log_artifact(tb_dir, artifact_path=f"tensorboard/{STAGE}")
    # Only now: a kill before this line resumes from the backup instead of retraining.
    if info.is_chief:
        training.discard_checkpoint(checkpoint_dir)
    runtime.wait_for_workers(info)  # multi-worker: all leave together
    return 0


if __name__ == "__main__":
    run_main(main)
