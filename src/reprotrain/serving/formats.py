"""The serving formats an export can write: their names, where each lands, what to install.

Why a module of its own: the converters, the verdict, the export report and the registry
tags (``serving.export_tags``) all name the same formats and files; one table keeps them
from drifting apart.
"""

from __future__ import annotations

SAVED_MODEL = "saved_model"
TFLITE_KINDS = ("float32", "float16", "int8")
#: Formats Keras' ``model.export`` writes from the Keras model: format name → its ``format=``.
KERAS_FORMATS = {"onnx": "onnx", "openvino": "openvino"}
#: Format name → path under the export directory.
FILENAMES = {
    SAVED_MODEL: "saved_model",
    "tflite_float32": "model_float32.tflite",
    "tflite_float16": "model_float16.tflite",
    "tflite_int8": "model_int8.tflite",
    "onnx": "model.onnx",
    "openvino": "openvino",
}
#: Formats that are a directory (logged as their contents under ``export/<format>/``).
DIRECTORY_FORMATS = frozenset({SAVED_MODEL, "openvino"})
#: The OpenVINO IR's graph, in its directory beside the weights (``model.bin``).
OPENVINO_XML = "model.xml"
#: What to install when a format's converter or runtime is missing (docs/exports.md).
INSTALL_HINTS = {
    "onnx": "tf2onnx and onnxruntime are in the default install: rerun `make setup`",
    "openvino": "install the extra: `make setup EXTRAS=openvino`",
}
