"""finetune: unfreeze the top of the base and continue training at a low learning rate.

Reads models/head.keras and data/prepared, writes models/finetuned.keras (+ history,
TensorBoard logs, metrics and the MLflow run sidecar). BatchNormalization layers stay
frozen and the base stays in inference mode (see reprotrain.models.transfer).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from reprotrain import paths, runtime, tracking
from reprotrain.cli import run_main
from reprotrain.config import load_params, to_dict

STAGE = "finetune"
SECTIONS = ("seed", "model", "pipeline", "runtime", "finetune")
logger = logging.getLogger("reprotrain.stages.finetune")


def main() -> int:
    params = load_params()
    cfg = params.finetune
    info = runtime.configure(params.runtime, params.seed)
    from reprotrain import training  # TensorFlow: after the runtime is configured
    from reprotrain.models import transfer

    size = params.model.image_size
    data = training.load_stage_data(
        paths.PREPARED_DIR, params.pipeline, cfg, image_size=size, seed=params.seed
    )
    model = training.load_trained_model(paths.HEAD_MODEL, info, len(data.labels), size)
    names = transfer.unfreeze_top(model, cfg.unfreeze_top)
    summary = transfer.trainable_summary(model)
    logger.info(
        "finetune: %d trainable base layers (top %d, BatchNorm frozen), %d trainable params: %s",
        len(names), cfg.unfreeze_top, summary["trainable_params"], ", ".join(names) or "-",
    )  # fmt: skip
    tb_dir = paths.TENSORBOARD_DIR / STAGE
    shutil.rmtree(tb_dir, ignore_errors=True)
    key = training.fingerprint(
        STAGE, [to_dict(getattr(params, s)) for s in SECTIONS], data.digest,
        training.file_digest(paths.HEAD_MODEL),
    )  # fmt: skip
    with tracking.stage_run(
        STAGE, params, sections=SECTIONS, root=Path.cwd(),
        upstream=[paths.PREPARE_RUN, paths.HEAD_RUN], sidecar=paths.FINETUNED_RUN,
        environment=runtime.environment_info(info),
    ) as run:  # fmt: skip
        run.set_tags(
            {
                "reprotrain.trainable_layer_count": len(names),
                "reprotrain.trainable_layers": ",".join(names),
                "reprotrain.trainable_params": summary["trainable_params"],
            }
        )
        result = training.train(
            model, data.train, data.val, cfg, info,
            checkpoint_dir=paths.CHECKPOINTS_DIR / STAGE, tensorboard_dir=tb_dir,
            class_weight=data.class_weight, resume_key=key, keep_start_if_better=True,
            epoch_hook=lambda epoch, metrics: run.log_metrics(metrics, step=epoch),
        )  # fmt: skip
        metrics = training.save_outputs(
            model, result, model_path=paths.FINETUNED_MODEL,
            history_path=paths.FINETUNED_HISTORY, metrics_path=paths.METRICS_DIR / f"{STAGE}.json",
            extra=training.trainable_counts(model),
        )  # fmt: skip
        run.log_metrics(training.final_metrics(metrics))
        for path in (
            paths.FINETUNED_MODEL,
            paths.FINETUNED_HISTORY,
            paths.METRICS_DIR / f"{STAGE}.json",
        ):
            run.log_artifact(path)
        run.log_artifact(tb_dir, artifact_path=f"tensorboard/{STAGE}")
    return 0


if __name__ == "__main__":
    run_main(main)
