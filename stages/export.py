"""export: the fine-tuned model as a TF Serving SavedModel, TFLite (float32, float16, int8),
ONNX and OpenVINO IR (export.formats), each re-scored on the test split against the Keras
model in its own runtime (LiteRT, ONNX Runtime, OpenVINO Runtime).

Reads models/finetuned.keras and data/prepared (test split; a seeded sample of train images
calibrates int8). Writes models/export/ and metrics/export.json: per format the accuracy,
agreement with the Keras model's top-1 labels, file size, median batch-1 latency on this
CPU, and whether it ships (export.min_agreement, export.max_accuracy_drop). A format that
fails its check, or whose converter fails or is not installed, is reported, not fatal
(docs/exports.md). The conversions run in a second process started first, so that they
overlap this one's loading (serving.export.ModelExport; what that saves:
benchmarks/export_overlap.py).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from reprotrain import dag, paths, runtime, tracking
from reprotrain.cli import run_main
from reprotrain.config import load_params
from reprotrain.data import tfrecords
from reprotrain.serving import export, samples

STAGE = "export"
SPEC = dag.stage(STAGE)
logger = logging.getLogger("reprotrain.stages.export")


def main() -> int:
    params = load_params()
    cfg = params.export
    size = params.model.image_size
    # Entered first: the conversion process imports TensorFlow while this one does.
    with export.ModelExport(paths.FINETUNED_MODEL, paths.EXPORT_DIR, cfg) as job:
        # Seeds, determinism and strategy: before any model or dataset is built.
        info = runtime.configure(params.runtime, params.seed)
        calibration = samples.calibration_images(
            tfrecords.verify_shards(paths.PREPARED_DIR, "train"),
            params.pipeline,
            image_size=size,
            count=cfg.calibration_samples,
            seed=params.seed,
        )
        shutil.rmtree(paths.EXPORT_DIR, ignore_errors=True)  # no format left from another config
        # The TFLite conversions run from here on; MLflow's set-up and the test split in
        # the meantime.
        job.write_saved_model(calibration)
        test_images, test_labels = samples.load_split(
            tfrecords.verify_shards(paths.PREPARED_DIR, "test"),
            params.pipeline,
            image_size=size,
            batch_size=cfg.batch_size,
            seed=params.seed,
        )
        with tracking.stage_run(
            SPEC, params, Path.cwd(), environment=runtime.environment_info(info)
        ) as run:
            export.publish(run, job.verify(test_images, test_labels), paths.EXPORT_METRICS)
    return 0


if __name__ == "__main__":
    run_main(main)
