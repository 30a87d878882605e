"""finetune: unfreeze the top of the base and continue training at a low learning rate.

Reads models/head.keras and data/prepared, writes models/finetuned.keras (+ history,
TensorBoard logs, metrics and the MLflow run sidecar). BatchNormalization layers stay
frozen and the base stays in inference mode (see reprotrain.models.transfer).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from reprotrain import fsio, paths, runtime, stage_io, tracking, training
from reprotrain.cli import run_main
from reprotrain.config import load_params, to_dict
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
    size = params.model.image_size
    data = stage_io.load_stage_data(
        paths.PREPARED_DIR, params.pipeline, cfg, image_size=size, seed=params.seed
    )
    model = load_model(
        paths.HEAD_MODEL,
        num_classes=len(data.labels),
        image_size=size,
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
    tb_dir = paths.TENSORBOARD_DIR / STAGE
    if info.is_chief:  # multi-worker: the other workers write nothing shared
        shutil.rmtree(tb_dir, ignore_errors=True)
    checkpoint_dir = paths.CHECKPOINTS_DIR / STAGE
    sections = [to_dict(getattr(params, s)) for s in SECTIONS]
    key = stage_io.fingerprint(STAGE, sections, data.digest, fsio.file_sha256(paths.HEAD_MODEL))
    metrics_path = paths.METRICS_DIR / f"{STAGE}.json"
    with tracking.stage_run(
        STAGE,
        params,
        sections=SECTIONS,
        root=Path.cwd(),
        upstream=[paths.PREPARE_RUN, paths.HEAD_RUN],
        sidecar=paths.FINETUNED_RUN,
        environment=runtime.environment_info(info),
        chief=info.is_chief,
    ) as run:
        run.set_tags(
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
            checkpoint_dir=checkpoint_dir,
            tensorboard_dir=tb_dir,
            class_weight=data.class_weight,
            resume_key=key,
            keep_start_if_better=True,
            epoch_hook=lambda epoch, metrics: run.log_metrics(metrics, step=epoch),
        )
        metrics = stage_io.save_outputs(
            model,
            result,
            model_path=paths.FINETUNED_MODEL,
            history_path=paths.FINETUNED_HISTORY,
            metrics_path=metrics_path,
            write=info.is_chief,
            extra=stage_io.trainable_counts(model),
        )
        run.log_metrics(stage_io.final_metrics(metrics))
        for path in (paths.FINETUNED_MODEL, paths.FINETUNED_HISTORY, metrics_path):
            run.log_artifact(path)
        run.log_artifact(tb_dir, artifact_path=f"tensorboard/{STAGE}")
    # Only now: a kill before this line resumes from the backup instead of retraining.
    if info.is_chief:
        training.discard_checkpoint(checkpoint_dir)
    runtime.wait_for_workers(info)  # multi-worker: all leave together
    return 0


if __name__ == "__main__":
    run_main(main)
