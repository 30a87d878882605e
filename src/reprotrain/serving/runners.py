"""Every exported format as the same NumPy function, and how fast it answers.

``Predictor``: float32 ``[B, S, S, 3]`` pixels 0..255 → probabilities ``[B, C]``, for the
Keras reference, the SavedModel, each TFLite model, the ONNX model (ONNX Runtime) and the
OpenVINO IR (OpenVINO Runtime) alike, so the export checks compare like with like. Each
format runs in the runtime it ships to, never through TensorFlow again: that is what a user
of the file would run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain.errors import ModelError
from reprotrain.serving.formats import INSTALL_HINTS, OPENVINO_XML

Predictor = Callable[[np.ndarray], np.ndarray]  # float32 [B, S, S, 3] 0..255 → probs [B, C]


class TFLiteClassifier:
    """A TFLite model in the LiteRT interpreter, fed float 0..255 pixels one image at a time
    (quantising them when the model's input is integer, dequantising its output)."""

    def __init__(self, path: Path | str, num_threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def _quantize(self, image: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if np.issubdtype(dtype, np.floating):
            return image.astype(dtype)
        scale, zero = self.input["quantization"]
        info = np.iinfo(dtype)
        q = np.round(image / (scale or 1.0) + zero)
        return np.clip(q, info.min, info.max).astype(dtype)

    def _dequantize(self, out: np.ndarray) -> np.ndarray:
        if np.issubdtype(out.dtype, np.floating):
            return out.astype(np.float32)
        scale, zero = self.output["quantization"]
        return ((out.astype(np.float32) - zero) * scale).astype(np.float32)

    def predict_one(self, image: np.ndarray) -> np.ndarray:
        """Probabilities ``[C]`` for one ``[S, S, 3]`` image."""
        self.interpreter.set_tensor(self.input["index"], self._quantize(image[np.newaxis]))
        self.interpreter.invoke()
        return self._dequantize(self.interpreter.get_tensor(self.output["index"]))[0]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.stack([self.predict_one(image) for image in images])


class OnnxClassifier:
    """An ONNX model in ONNX Runtime on the CPU, fed the whole batch at once (the export
    keeps Keras' dynamic batch dimension)."""

    def __init__(self, path: Path | str) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.asarray(images, dtype=np.float32)}
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)


class OpenVINOClassifier:
    """An OpenVINO IR (``model.xml`` + ``model.bin``) compiled for the CPU by OpenVINO
    Runtime. One infer request is reused: compiling is the slow part, a call is not."""

    def __init__(self, xml_path: Path | str) -> None:
        import openvino

        self.compiled = openvino.Core().compile_model(str(xml_path), "CPU")
        self.request = self.compiled.create_infer_request()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        result = self.request.infer([np.asarray(images, dtype=np.float32)])
        return np.array(result[self.compiled.output(0)], dtype=np.float32)  # a copy


def runtime_predictor(name: str, path: Path) -> Predictor:
    """The ONNX or OpenVINO file in its own runtime (never TensorFlow: what users run)."""
    try:
        if name == "onnx":
            return OnnxClassifier(path)
        return OpenVINOClassifier(path / OPENVINO_XML)
    except ImportError as exc:
        raise ModelError(
            f"{name} needs the {exc.name or 'missing'} runtime: {INSTALL_HINTS[name]}"
        ) from exc


def saved_model_predictor(directory: Path) -> Predictor:
    """The SavedModel's ``serve`` endpoint as a NumPy function."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(directory))  # must stay referenced: it owns the variables

    def predict(images: np.ndarray) -> np.ndarray:
        return np.asarray(loaded.serve(tf.constant(images, dtype=tf.float32)))

    return predict


def keras_predictor(model: Any) -> Predictor:
    """The Keras model in inference mode (the reference every format is compared with),
    traced once as a ``tf.function`` as ``model.predict`` does: an eager call per image runs
    every layer op by op and would make Keras look ~20× slower than it serves. One graph
    serves the batches and the batch-1 latency calls (``inference_function``)."""
    import tensorflow as tf

    from reprotrain.models.loading import inference_function

    call = inference_function(model)

    def predict(images: np.ndarray) -> np.ndarray:
        return np.asarray(call(tf.constant(images, dtype=tf.float32)))

    return predict


def predict_batched(predict: Predictor, images: np.ndarray, batch_size: int) -> np.ndarray:
    """``predict`` over ``images`` in batches of ``batch_size`` (bounded memory per call)."""
    return np.concatenate(
        [predict(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    )


def median_latency_ms(predict: Predictor, images: np.ndarray, samples: int) -> float:
    """Median wall time of one single-image call, in ms, after one warm-up call.

    The median, not the mean: on a shared CPU a few calls are slowed by other processes.
    """
    picks = images[: max(1, min(samples, len(images)))]
    predict(picks[:1])
    times = []
    for image in picks:
        start = time.perf_counter()
        predict(image[np.newaxis])
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))
