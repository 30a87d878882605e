"""Export a trained ``.keras`` model to serving formats and check each one against it.

This module is the export as one job (:class:`ModelExport`) and its report
(``metrics/export.json``, read back by :func:`flat_metrics` and :func:`shipped_formats`). The
parts it strings together each have a module: which formats exist
(:mod:`~reprotrain.serving.formats`), the images it scores and calibrates on
(:mod:`~reprotrain.serving.samples`), the converters (:mod:`~reprotrain.serving.converters`),
where they run (:mod:`~reprotrain.serving.conversion_process`), each format as one NumPy
function (:mod:`~reprotrain.serving.runners`) and the verdict on it
(:mod:`~reprotrain.serving.verdict`).

Every model takes raw 0–255 RGB pixels (preprocessing is inside the model), so all formats
are fed the same pixels. A format whose converter or runtime fails, or that fails its
check, is a not-shipped row with the reason; only the SavedModel, which the TFLite models
come from, is required.

TFLite models run in LiteRT (``ai_edge_litert``): ``tf.lite.Interpreter`` is deprecated in
TF 2.21 and warns so.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain.config import ExportConfig
from reprotrain.fsio import atomic_write_bytes, atomic_write_json
from reprotrain.serving.conversion_process import Conversions
from reprotrain.serving.converters import export_saved_model
from reprotrain.serving.formats import FILENAMES, KERAS_FORMATS, SAVED_MODEL
from reprotrain.serving.runners import (
    Predictor,
    TFLiteClassifier,
    keras_predictor,
    runtime_predictor,
    saved_model_predictor,
)
from reprotrain.serving.verdict import (
    KerasReference,
    failed_format,
    path_size,
    score_format,
    time_formats,
)
from reprotrain.timing import timed

__all__ = ["ModelExport", "export_and_verify", "flat_metrics", "publish", "shipped_formats"]

logger = logging.getLogger(__name__)


class ModelExport:
    """Export one ``.keras`` model to every format in ``cfg.formats`` and verify each.

    Three steps, so a stage can put its other work in the gaps (the one speed arrangement
    of the export stage, kept because it saves more than a tenth of it:
    ``benchmarks/export_overlap.py``; :func:`export_and_verify` runs them in a row):

    - entering starts the conversion process (:class:`Conversions`), whose
      TensorFlow import then overlaps the stage's own;
    - :meth:`write_saved_model` loads the model and writes the SavedModel every TFLite
      model is converted from, and hands the conversions (TFLite, ONNX, OpenVINO) to the
      second process: from here the stage's MLflow set-up and test-data loading run while it
      converts;
    - :meth:`verify` re-scores every format on the test images and returns the report
      written to ``metrics/export.json``. A format whose converter or runtime fails is a
      not-shipped row; only the SavedModel, which the TFLite models come from, is required.
    """

    def __init__(
        self,
        model_path: Path | str,
        out_dir: Path | str,
        cfg: ExportConfig,
        *,
        hint: str = "rerun finetune (dvc repro finetune)",
    ) -> None:
        self.model_path = Path(model_path)
        self.out_dir = Path(out_dir)
        self.cfg = cfg
        self.hint = hint
        self.saved_dir = self.out_dir / FILENAMES[SAVED_MODEL]
        self.conversions = Conversions(cfg.formats, self.model_path)
        self.model: Any = None

    def __enter__(self) -> ModelExport:
        if self.model_path.is_file():  # else write_saved_model's load names the problem
            self.conversions.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.conversions.close()

    @timed("export")
    def write_saved_model(self, calibration: np.ndarray) -> None:
        """Load the model, write the SavedModel and start the TFLite conversions from it."""
        from reprotrain.models.loading import load_model

        self.model = load_model(self.model_path, hint=self.hint)
        export_saved_model(self.model, self.saved_dir)
        self.conversions.submit(self.saved_dir, calibration, self.out_dir)

    def _write(self, name: str, path: Path) -> Predictor:
        """Format ``name`` on disk at ``path`` (converted if not yet), as a predictor."""
        if name == SAVED_MODEL:
            return saved_model_predictor(self.saved_dir)
        if name in KERAS_FORMATS:
            self.conversions.keras_format(name, path)
            return runtime_predictor(name, path)
        kind = name.removeprefix("tflite_")
        atomic_write_bytes(path, self.conversions.tflite(self.saved_dir, kind))
        return TFLiteClassifier(path)

    def _score_formats(
        self, reference: KerasReference, predictors: dict[str, Predictor]
    ) -> dict[str, dict[str, Any]]:
        """Every format written and scored, in ``cfg.formats``' order whichever process
        converted it; each format that runs is added to ``predictors`` for the timing."""
        from reprotrain.progress import progress

        formats: dict[str, dict[str, Any]] = {}
        with progress(len(self.cfg.formats), desc="export", unit="format") as bar:
            for name in self.cfg.formats:
                path = self.out_dir / FILENAMES[name]
                try:
                    predict = self._write(name, path)
                    result = score_format(name, path, predict, reference, self.cfg)
                except Exception as exc:  # a failed converter or runtime is a finding
                    if name == SAVED_MODEL:
                        raise
                    result = failed_format(name, path, exc)
                else:
                    predictors[name] = predict
                formats[name] = dataclasses.asdict(result)
                bar.update(1)
        return formats

    @timed("export")
    def verify(self, test_images: np.ndarray, test_labels: np.ndarray) -> dict[str, Any]:
        """Every format written and re-scored against the Keras model: the report."""
        calibration = self.conversions.calibration
        if self.model is None or calibration is None:
            raise RuntimeError("ModelExport.verify before write_saved_model")
        cfg = self.cfg
        keras_predict = keras_predictor(self.model)
        predictors: dict[str, Predictor] = {"keras": keras_predict}
        # The reference predictions, while the second process converts.
        reference = KerasReference.of(keras_predict, test_images, test_labels, cfg.batch_size)
        formats = self._score_formats(reference, predictors)
        self.conversions.close()  # all converted: its teardown overlaps the timing below
        latencies = time_formats(predictors, test_images, cfg.latency_samples)
        for name, row in formats.items():
            row["latency_ms"] = latencies.get(name)
        return {
            "n_test": len(test_labels),
            "n_calibration": len(calibration),
            "min_agreement": cfg.min_agreement,
            "max_accuracy_drop": cfg.max_accuracy_drop,
            "keras": {
                "path": str(self.model_path),
                "accuracy": round(reference.accuracy, 6),
                "size_bytes": path_size(self.model_path),
                "latency_ms": latencies["keras"],
            },
            "formats": formats,
        }


def export_and_verify(
    model_path: Path,
    out_dir: Path,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    calibration: np.ndarray,
    cfg: ExportConfig,
    *,
    hint: str = "rerun finetune (dvc repro finetune)",
) -> dict[str, Any]:
    """:class:`ModelExport`'s three steps in a row, for callers with everything at hand."""
    with ModelExport(model_path, out_dir, cfg, hint=hint) as job:
        job.write_saved_model(calibration)
        return job.verify(test_images, test_labels)


def shipped_formats(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The formats of an export report that passed their checks."""
    return {k: v for k, v in report.get("formats", {}).items() if v.get("shipped")}


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """``export.<format>.<metric>`` numbers (MLflow metrics, registry version tags)."""
    out: dict[str, float] = {}
    for name, row in report.get("formats", {}).items():
        for key in ("accuracy", "agreement", "size_bytes", "latency_ms"):
            if row.get(key) is not None:  # None: the format could not be written or run
                out[f"export.{name}.{key}"] = float(row[key])
        out[f"export.{name}.shipped"] = 1.0 if row["shipped"] else 0.0
    keras_row = report.get("keras") or {}
    for key in ("accuracy", "size_bytes", "latency_ms"):
        if key in keras_row:
            out[f"export.keras.{key}"] = float(keras_row[key])
    return out


def publish(run: Any, report: dict[str, Any], metrics_file: Path) -> None:
    """Write the report to ``metrics_file`` and give it to the stage's MLflow ``run``: its
    numbers as metrics, the shipped formats as a tag, the report and each shipped format's
    files as artifacts (``export/<format>``). Every kind's export stage ends with this."""
    atomic_write_json(metrics_file, report)
    run.log_metrics(flat_metrics(report))
    shipped = shipped_formats(report)
    run.set_tags({"reprotrain.export.shipped": ",".join(shipped) or "none"})
    run.log_artifact(metrics_file)
    for name, row in shipped.items():
        run.log_artifact(Path(row["path"]), artifact_path=f"export/{name}")
