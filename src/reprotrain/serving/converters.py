"""The converters: a ``.keras`` model written as each serving format, one format per call.

A TensorFlow SavedModel (TF Serving); TFLite float32, float16 (weights) and full-integer
int8 with uint8 input, converted from that SavedModel by ``tf.lite.TFLiteConverter`` (TF
ships no other); ONNX (``model.onnx``) and an OpenVINO IR (``openvino/model.xml`` +
``model.bin``) written by Keras' own ``model.export``, which hands its traced endpoint to
tf2onnx and to ``openvino.convert_model``: the converters Keras maintains and tests, not a
copy of them.

Why one module: this is the only code that calls a converter, so it is where a converter's
failure becomes one :class:`ModelError` line (:func:`first_line`) instead of pages of C++
detail. Where the conversions run (this process or the second one) is
:mod:`reprotrain.serving.conversion_process`'s concern.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain.errors import ModelError
from reprotrain.fsio import atomic_path
from reprotrain.serving.folders import atomic_directory
from reprotrain.serving.formats import (
    DIRECTORY_FORMATS,
    INSTALL_HINTS,
    KERAS_FORMATS,
    OPENVINO_XML,
    TFLITE_KINDS,
)

logger = logging.getLogger(__name__)

#: Leading lines of converter errors that say nothing about the model (OpenVINO's frontend
#: opens with where in its C++ the check failed).
_BOILERPLATE = ("Check '", "FrontEnd API failed", "Model wasn't fully converted", "Summary:")


def first_line(exc: BaseException) -> str:
    """The first informative line of an error (TensorFlow's and the converters' run to pages
    of graph and C++ detail): OpenVINO's "-- No conversion rule found for operations: …",
    not the source line of its failed check."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_BOILERPLATE)]
    return (useful or lines or [type(exc).__name__])[0].removeprefix("-- ")


def export_saved_model(model: Any, directory: Path) -> Path:
    """A TF Serving SavedModel: endpoints ``serve`` and ``serving_default``, raw pixels in
    (``[None, S, S, 3]`` float32, named after the model's input), probabilities out
    (``output_0``), the same signature ``model.export`` writes.

    Why not ``model.export`` first: Keras' export archive traces the model four times and
    walks every layer's trackable children looking for lookup tables, 10–13 s for
    MobileNetV2 on 2 cores; the models built here hold nothing but variables, and one trace
    plus ``tf.saved_model.save`` of those variables takes 4–5 s. A model that captures any
    other TensorFlow resource (a user's backbone with a lookup table) makes the save fail
    loudly, and then Keras' export, which tracks such resources, writes it instead. Either
    way export_and_verify re-scores the result against the Keras model.

    The folder is swapped in atomically (:func:`atomic_directory`): a kill at any instant
    leaves the previous SavedModel or the new one, never neither, never half of one.
    """
    with atomic_directory(directory) as tmp:
        try:
            _save_serving_function(model, tmp)
        except (AssertionError, ValueError, TypeError) as exc:
            logger.info("direct SavedModel save failed (%s): using Keras' export", first_line(exc))
            shutil.rmtree(tmp, ignore_errors=True)
            model.export(str(tmp), format="tf_saved_model", verbose=False)
    return directory


def _save_serving_function(model: Any, directory: Path) -> None:
    """One traced inference function and the variables it reads, saved as a SavedModel."""
    import tensorflow as tf

    from reprotrain.models.loading import inference_function

    serve = inference_function(model, name=model.inputs[0].name)
    concrete = serve.get_concrete_function()
    module = tf.Module()
    module.serve = serve
    module.captured_variables = list(concrete.variables)  # tracked: saved with the graph
    tf.saved_model.save(
        module, str(directory), signatures={"serve": concrete, "serving_default": concrete}
    )


def _representative(images: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    def gen() -> Iterator[list[np.ndarray]]:
        for image in images:
            yield [image[np.newaxis].astype(np.float32)]

    return gen


def convert_tflite(
    saved_model_dir: Path, kind: str, calibration: np.ndarray | None = None
) -> bytes:
    """A TFLite flatbuffer from the SavedModel: ``float32``, ``float16`` (weights stored as
    float16, computed in float32 on CPU) or ``int8`` (weights and activations int8, uint8
    input and output; ``calibration`` images set the activation ranges)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if kind == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif kind == "int8":
        if calibration is None or len(calibration) == 0:
            raise ModelError("int8 conversion needs calibration images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    elif kind != "float32":
        raise ModelError(f"unknown TFLite kind {kind!r}: expected one of {TFLITE_KINDS}")
    try:
        return bytes(converter.convert())
    except Exception as exc:  # converter errors are long C++ dumps: keep the first line
        raise ModelError(f"TFLite {kind} conversion failed: {first_line(exc)}") from exc


def export_keras_format(model: Any, name: str, target: Path) -> Path:
    """``name`` (``onnx``, ``openvino``) written at ``target`` by Keras' own ``model.export``.

    Keras traces the same serving endpoint its SavedModel export has and hands it to tf2onnx
    (ONNX) or to ``openvino.convert_model`` (an IR directory: ``model.xml`` + ``model.bin``).
    The file or folder appears atomically once complete. Any failure, a missing package
    included, is one :class:`ModelError` line: the caller reports the format as not shipped.

    The ONNX file is checked (``onnx.checker``) before it is kept: tf2onnx only logs the ops it
    cannot convert (a string op, say) and writes a model no runtime can load.
    """
    fmt = KERAS_FORMATS[name]
    if not getattr(model, "_called", True):  # a loaded model: Keras' ONNX export wants a call
        model(np.zeros((1, *model.inputs[0].shape[1:]), np.float32), training=False)
    try:
        if name in DIRECTORY_FORMATS:
            with atomic_directory(target) as tmp:
                tmp.mkdir()
                model.export(str(tmp / OPENVINO_XML), format=fmt, verbose=False)
        else:
            with atomic_path(target) as tmp:
                model.export(str(tmp), format=fmt, verbose=False)
                import onnx

                onnx.checker.check_model(str(tmp))
    except ImportError as exc:
        raise ModelError(
            f"{name} export needs the {exc.name or 'missing'} package: {INSTALL_HINTS[name]}"
        ) from exc
    except Exception as exc:  # tf2onnx / OpenVINO errors run to pages: keep the first line
        raise ModelError(f"{name} conversion failed: {first_line(exc)}") from exc
    return target


#: The conversion process's copy of the Keras model, loaded once for all its Keras exports.
_worker_models: dict[Path, Any] = {}


def export_keras_format_from_file(model_path: Path, name: str, target: Path) -> Path:
    """:func:`export_keras_format` in the conversion process, from the ``.keras`` file."""
    from reprotrain.models.loading import load_model

    model = _worker_models.get(model_path)
    if model is None:
        model = _worker_models[model_path] = load_model(model_path)
    return export_keras_format(model, name, target)
