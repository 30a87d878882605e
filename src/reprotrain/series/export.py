"""The forecaster's exports: a TF Serving SavedModel and TFLite, each re-scored on the test
windows against the Keras model it came from.

What differs from the image exports (``serving.converters``, whose TFLite converter, LiteRT
runner, SavedModel runner, latency timer and atomic folders are reused here): the input is
``[batch, window, channels]`` raw values, and the verdict is a regression's: the largest
absolute forecast difference from the Keras model and the ratio of the test MAEs. A format
ships when its largest difference is at most ``series.export_max_diff`` × the Keras model's
test MAE (a difference far below the model's own error changes no decision).

Why TFLite converts from a second SavedModel with a batch of one: an LSTM traced with an open
batch dimension keeps a TensorList whose element shape is unknown, which the TFLite
converter refuses ("requires element_shape to be static"); with the batch fixed at 1 it
lowers to builtin ops, no Flex delegate needed. LiteRT runs one window per call anyway.
Formats with no series path (int8: the activations' ranges of raw values; ONNX and OpenVINO
are tried, and a failure is a not-shipped row) are reported with the reason, never fatal.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain.errors import ModelError
from reprotrain.serving import converters, runners
from reprotrain.serving.folders import atomic_directory
from reprotrain.serving.formats import FILENAMES, SAVED_MODEL
from reprotrain.serving.verdict import path_size

logger = logging.getLogger(__name__)

TFLITE_PREFIX = "tflite_"
#: The TFLite kinds a forecaster converts to (int8 needs integer inputs: not for raw values).
TFLITE_SERIES = ("float32", "float16")


def save_saved_model(model: Any, directory: Path, batch: int | None = None) -> Path:
    """A SavedModel with endpoints ``serve``/``serving_default``: raw windows
    ``[batch, window, channels]`` float32 (``history``) → forecasts ``[batch, horizon]``."""
    import tensorflow as tf

    window, channels = (int(d) for d in model.input_shape[1:])
    spec = tf.TensorSpec([batch, window, channels], tf.float32, name="history")
    serve = tf.function(lambda history: model(history, training=False), input_signature=[spec])
    concrete = serve.get_concrete_function()
    module = tf.Module()
    module.serve = serve
    module.captured_variables = list(concrete.variables)
    with atomic_directory(directory) as tmp:
        tf.saved_model.save(
            module, str(tmp), signatures={"serve": concrete, "serving_default": concrete}
        )
    return directory


def write_tflite(model: Any, kind: str, target: Path, scratch: Path) -> Path:
    """``kind`` TFLite (float32 | float16) at ``target``, via a batch-1 SavedModel."""
    if kind not in TFLITE_SERIES:
        raise ModelError(
            f"tflite_{kind} is not available for a forecaster: int8 quantises the inputs, and "
            "raw series values have no fixed range; use tflite_float32 or tflite_float16"
        )
    fixed = save_saved_model(model, scratch / "batch1_saved_model", batch=1)
    data = converters.convert_tflite(fixed, kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def write_format(name: str, model: Any, out_dir: Path, scratch: Path) -> tuple[Path, Any]:
    """Write format ``name`` under ``out_dir``; its path and a NumPy predictor for it."""
    path = out_dir / FILENAMES.get(name, name)
    if name == SAVED_MODEL:
        save_saved_model(model, path)
        return path, runners.saved_model_predictor(path)
    if name.startswith(TFLITE_PREFIX):
        write_tflite(model, name.removeprefix(TFLITE_PREFIX), path, scratch)
        return path, runners.TFLiteClassifier(path)
    if name in ("onnx", "openvino"):
        converters.export_keras_format(model, name, path)
        return path, runners.runtime_predictor(name, path)
    raise ModelError(f"unknown export format {name!r}")


def verdict(
    forecasts: np.ndarray, reference: np.ndarray, y: np.ndarray, max_diff: float
) -> dict[str, Any]:
    """A format's forecasts against the Keras model's: the largest absolute difference, the
    test MAE ratio, and whether it ships (pure)."""
    f, ref, y = (np.asarray(a, np.float64) for a in (forecasts, reference, y))
    ref_mae = float(np.abs(ref - y).mean())
    mae = float(np.abs(f - y).mean())
    diff = float(np.abs(f - ref).max()) if f.size else float("nan")
    limit = max_diff * ref_mae
    shipped = bool(diff <= limit)
    reason = (
        f"shipped: max |format − Keras| {diff:.4g} ≤ {limit:.4g} "
        f"(series.export_max_diff {max_diff:g} × Keras test MAE {ref_mae:.4g})"
        if shipped
        else f"not shipped: max |format − Keras| {diff:.4g} > {limit:.4g} "
        f"(series.export_max_diff {max_diff:g} × Keras test MAE {ref_mae:.4g})"
    )
    return {
        "mae": round(mae, 6),
        "mae_ratio": round(mae / ref_mae, 6) if ref_mae > 0 else None,
        "max_abs_diff": diff,
        "shipped": shipped,
        "reason": reason,
    }


def _failed(name: str, path: Path, exc: Exception) -> dict[str, Any]:
    what = "" if isinstance(exc, ModelError) else f"{name} could not be written or run: "
    reason = f"not shipped: {what}{converters.first_line(exc)}"
    logger.warning("%s: %s", name, reason)
    return {"format": name, "path": str(path), "shipped": False, "reason": reason}


def export_and_verify(  # noqa: PLR0913  (the model, its test windows and the export knobs)
    model: Any,
    model_path: Path,
    out_dir: Path,
    x: np.ndarray,
    y: np.ndarray,
    formats: Sequence[str],
    *,
    max_diff: float,
    latency_samples: int,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Write every format, re-score each on the test windows ``x``/``y``, time them; the
    ``metrics/export.json`` report (``formats`` rows as the image kind's, with regression
    figures instead of accuracy and agreement)."""
    x = np.asarray(x, np.float32)
    keras_call = _keras_predictor(model)
    reference = runners.predict_batched(keras_call, x, batch_size)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    scratch = out_dir.parent / f".{out_dir.name}.scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    rows: dict[str, dict[str, Any]] = {}
    predictors: dict[str, Any] = {"keras": keras_call}
    try:
        for name in formats:
            path = out_dir / FILENAMES.get(name, name)
            try:
                path, predict = write_format(name, model, out_dir, scratch)
                forecasts = runners.predict_batched(predict, x, batch_size)
            except Exception as exc:  # a converter's failure is a finding, not fatal
                rows[name] = _failed(name, path, exc)
                continue
            figures = verdict(forecasts, reference, y, max_diff)
            rows[name] = {"format": name, "path": str(path), **figures}
            rows[name]["size_bytes"] = path_size(path)
            predictors[name] = predict
            logger.info("%s: %s", name, rows[name]["reason"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    latencies = {
        name: round(runners.median_latency_ms(p, x, latency_samples), 3)
        for name, p in predictors.items()
    }
    for name, row in rows.items():
        row["latency_ms"] = latencies.get(name)
    keras_mae = float(np.abs(reference - np.asarray(y, np.float64)).mean())
    return {
        "kind": "series",
        "test_windows": len(x),
        "keras": {
            "mae": round(keras_mae, 6),
            "size_bytes": path_size(model_path),
            "latency_ms": latencies["keras"],
        },
        "formats": rows,
    }


def _keras_predictor(model: Any) -> Any:
    """The Keras model as one traced function of open-batch windows (as the image kind's
    ``runners.keras_predictor``, which assumes images)."""
    import tensorflow as tf

    window, channels = (int(d) for d in model.input_shape[1:])
    spec = tf.TensorSpec([None, window, channels], tf.float32)
    call = tf.function(lambda h: model(h, training=False), input_signature=[spec])

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(call(tf.constant(batch, dtype=tf.float32)))

    return predict
