"""Export the table model and re-score each format on the test rows, as the image export
does (:mod:`reprotrain.serving.export`), with the same verdict and report.

What is the image export's and reused: the verdict on a format
(:func:`~reprotrain.serving.verdict.ship_decision`: agreement with the Keras model and
accuracy drop against ``export.min_agreement`` / ``export.max_accuracy_drop``), its row
(:class:`~reprotrain.serving.verdict.FormatResult`, :func:`~reprotrain.serving.verdict.
failed_format`), the file names (:data:`~reprotrain.serving.formats.FILENAMES`) and the
report's shape (``metrics/export.json``: ``keras`` and ``formats``), so ``flat_metrics``,
``shipped_formats``, the registry tags and the card read it unchanged.

What differs: the model takes a dict of raw columns (strings and numbers), not one pixel
tensor. The SavedModel's ``serving_default`` signature takes one ``[batch, 1]`` tensor
per column (named after the column: :func:`reprotrain.tables.model.layer_name`). TFLite
(float32, float16) is converted from it with ``SELECT_TF_OPS``: tokenising and lookups are
TensorFlow string ops that TFLite's builtins lack, and neither LiteRT's wheel nor
``tf.lite.Interpreter`` links the Flex delegate here, so a model with text is reported not
shipped with that reason; numbers and categories convert to builtins (lookups are TFLite
hash-table ops) and ship when they agree. int8 (no calibration of raw-column inputs), ONNX
and OpenVINO (no string tensors) are reported not shipped with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain.errors import ModelError
from reprotrain.fsio import atomic_write_bytes
from reprotrain.progress import progress
from reprotrain.serving.formats import FILENAMES, SAVED_MODEL
from reprotrain.serving.verdict import (
    FormatResult,
    accuracy,
    agreement,
    failed_format,
    path_size,
    ship_decision,
)
from reprotrain.tables.features import InputSpec
from reprotrain.tables.inference import feed, predict_probs
from reprotrain.tables.model import layer_name

logger = logging.getLogger(__name__)

#: Formats a table model cannot be written in, and why.
UNSUPPORTED = {
    "tflite_int8": "int8 calibration of raw-column inputs is not implemented for table models",
    "onnx": "ONNX has no tokenising or string-lookup ops for the raw text and category inputs",
    "openvino": "OpenVINO takes no string tensors (the raw text and category inputs)",
}
Predict = Callable[[Mapping[str, np.ndarray]], np.ndarray]


def _named(model: Any, inputs: Mapping[str, np.ndarray], spec: InputSpec) -> dict[str, Any]:
    """The inputs keyed as the exported signature names them."""
    data = feed(model, inputs, spec)
    if not isinstance(data, dict):
        return {"numbers": data}
    return {layer_name(k): v for k, v in data.items()}


def saved_model_predictor(directory: Path, model: Any, spec: InputSpec) -> Predict:
    """The SavedModel's ``serving_default`` as a function of the input dict."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(directory)).signatures["serving_default"]

    def predict(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        args = {
            k: tf.constant(v.astype(str) if v.dtype == object else v)
            for k, v in _named(model, inputs, spec).items()
        }
        return np.asarray(next(iter(fn(**args).values())), dtype=np.float64)

    return predict


def tflite_predictor(path: Path, model: Any, spec: InputSpec) -> Predict:
    """A TFLite file in LiteRT, row by row (its inputs are ``[1, 1]``; strings as UTF-8
    bytes). A file with TensorFlow ops (text: the Flex delegate, which neither LiteRT's
    wheel nor ``tf.lite.Interpreter`` links here) fails on its first row: not shipped."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()

    def row(named: Mapping[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
        return {
            k: np.array([[s.encode("utf-8") for s in v[i]]]) if v.dtype == object else v[i : i + 1]
            for k, v in named.items()
        }

    def predict(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        named = _named(model, inputs, spec)
        n = len(next(iter(named.values())))
        out = [next(iter(runner(**row(named, i)).values())) for i in range(n)]
        return np.asarray(out, dtype=np.float64)[:, 0]

    return predict


def convert_tflite(saved_dir: Path, kind: str) -> bytes:
    """TFLite bytes from the SavedModel, builtins plus TensorFlow ops (the string ops)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_dir))
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS,
        tf.lite.OpsSet.SELECT_TF_OPS,
    ]
    if kind == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def _score(
    name: str, path: Path, predict: Predict, reference: np.ndarray, test: tuple, cfg: Any
) -> FormatResult:
    inputs, y = test
    probs = predict(inputs)
    acc, agree = accuracy(y, probs), agreement(probs, reference)
    shipped, reason = ship_decision(
        acc, agree, accuracy(y, reference), cfg.min_agreement, cfg.max_accuracy_drop
    )
    logger.info("%s: accuracy %.4f, agreement %.4f → %s", name, acc, agree, reason)
    return FormatResult(
        name, str(path), round(acc, 6), round(agree, 6), path_size(path), None, shipped, reason
    )


def _latency_ms(predict: Predict, inputs: Mapping[str, np.ndarray], samples: int) -> float:
    """Median single-row latency over the first ``samples`` rows."""
    n = min(samples, len(next(iter(inputs.values()))))
    times = []
    for i in range(n):
        row = {k: v[i : i + 1] for k, v in inputs.items()}
        start = time.perf_counter()
        predict(row)
        times.append((time.perf_counter() - start) * 1000)
    return round(float(np.median(times)), 3) if times else float("nan")


def _write(name: str, out_dir: Path, model: Any, spec: InputSpec) -> tuple[Path, Predict]:
    path = out_dir / FILENAMES[name]
    if name == SAVED_MODEL:
        shutil.rmtree(path, ignore_errors=True)
        model.export(str(path), format="tf_saved_model", verbose=False)
        return path, saved_model_predictor(path, model, spec)
    if name in UNSUPPORTED:
        raise ModelError(f"{name} not written: {UNSUPPORTED[name]}")
    saved = out_dir / FILENAMES[SAVED_MODEL]
    if not saved.is_dir():
        raise ModelError(f"{name} not written: it is converted from the SavedModel, not exported")
    atomic_write_bytes(path, convert_tflite(saved, name.removeprefix("tflite_")))
    return path, tflite_predictor(path, model, spec)


def export_and_verify(
    model: Any,
    model_path: Path,
    out_dir: Path,
    spec: InputSpec,
    test: tuple[Mapping[str, np.ndarray], np.ndarray],
    cfg: Any,
) -> dict[str, Any]:
    """Write every format of ``cfg.formats`` (``params.export``) and re-score it on the
    ``test`` rows (input dict, class ids): the ``metrics/export.json`` report. The
    SavedModel is required (a failure is the stage's error); any other format that cannot
    be written or run is a not-shipped row with the reason."""
    inputs, y = test
    out_dir.mkdir(parents=True, exist_ok=True)
    reference = predict_probs(model, inputs, spec)
    keras_predict: Predict = lambda x: predict_probs(model, x, spec)  # noqa: E731
    formats: dict[str, dict[str, Any]] = {}
    latencies = {"keras": _latency_ms(keras_predict, inputs, cfg.latency_samples)}
    names = [SAVED_MODEL, *(f for f in cfg.formats if f != SAVED_MODEL)]
    with progress(len(names), desc="export", unit="format") as bar:
        for name in names:
            try:
                path, predict = _write(name, out_dir, model, spec)
                result = _score(name, path, predict, reference, test, cfg)
                result = dataclasses.replace(
                    result, latency_ms=_latency_ms(predict, inputs, cfg.latency_samples)
                )
            except Exception as exc:  # a failed converter or runtime is a finding
                if name == SAVED_MODEL:
                    raise ModelError(f"the SavedModel export failed: {exc}") from exc
                result = failed_format(name, out_dir / FILENAMES[name], exc)
            formats[name] = dataclasses.asdict(result)
            bar.update(1)
    return {
        "n_test": len(y),
        "n_calibration": 0,
        "min_agreement": cfg.min_agreement,
        "max_accuracy_drop": cfg.max_accuracy_drop,
        "keras": {
            "path": str(model_path),
            "accuracy": round(accuracy(y, reference), 6),
            "size_bytes": path_size(model_path),
            "latency_ms": latencies["keras"],
        },
        "formats": formats,
    }
