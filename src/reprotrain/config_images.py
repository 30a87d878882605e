"""The images kind's model sections of ``params.yaml``: the backbone (``model``), the three
training stages (``train_head``, ``finetune``, ``baseline``) and ``export``.

Why apart from ``config.py``: these are the knobs of what is built, trained and shipped for
photos, read in one place, beside the builders' names they accept (the built-in backbones
and from-scratch architectures). ``config.Params`` assembles them with the sections every
kind shares (data, pipeline, runtime, prepare, evaluate, tracking) and re-exports every
name here. Help texts are the fields' descriptions (``docs/params.schema.json``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator

from reprotrain.config_kinds import TrainConfig
from reprotrain.config_validation import (
    Bool,
    Float,
    Int,
    Str,
    builtin_or_ref,
    rule_error,
    section,
)
from reprotrain.config_validation import field as _f

#: Built-in transfer backbones (``keras.applications``) → their default input size, used
#: when ``model.image_size`` is null. Builders live in ``reprotrain.models.backbones``.
BUILTIN_BACKBONES: dict[str, int] = {
    "mobilenet_v2": 224,
    "mobilenet_v3_small": 224,
    "mobilenet_v3_large": 224,
    "efficientnet_v2_b0": 224,
    "resnet50_v2": 224,
    "convnext_tiny": 224,
}
Backbone = Annotated[str, BeforeValidator(builtin_or_ref(BUILTIN_BACKBONES))]

#: From-scratch architectures of the baseline stage (``reprotrain.models.scratch``).
SCRATCH_ARCHITECTURES = ("cnn", "mlp", "residual")
Architecture = Annotated[str, BeforeValidator(builtin_or_ref(SCRATCH_ARCHITECTURES))]


@section
class ModelConfig:
    """The pretrained backbone; read by train_head (and image_size by every later stage)."""

    backbone: Backbone = _f(
        "mobilenet_v2",
        "transfer base: mobilenet_v2, mobilenet_v3_small, mobilenet_v3_large, "
        "efficientnet_v2_b0, resnet50_v2, convnext_tiny, or 'package.module:function' "
        "returning (base_model, preprocess_layer)",
    )
    alpha: Literal[0.35, 0.5, 0.75, 1.0, 1.3, 1.4] = _f(
        1.0, "width multiplier (mobilenet_v2, mobilenet_v3_*)"
    )
    image_size: Int | None = _f(
        224,
        "square input size in pixels (null: the backbone's default; required for a custom one)",
        min=32,
        max=1024,
    )
    weights: Str = _f(
        "imagenet",
        "'imagenet' (Keras download or $KERAS_HOME/models), 'none', or a path to a weights file",
    )
    api: Literal["functional", "sequential", "subclassed"] = _f(
        "functional",
        "table kind: functional (one encoder per column role, Concatenate, Dense head), "
        "sequential (numbers only: a Sequential stack), subclassed (MLPBlock layers)",
    )

    def __post_init__(self) -> None:
        """Resolve ``image_size: null`` to the backbone's default once, here, so every stage
        sees the same int."""
        if self.image_size is None:
            if self.backbone not in BUILTIN_BACKBONES:
                rule = f"must be set for a custom backbone ({self.backbone})"
                raise rule_error(rule, suffix=".image_size", value=None)
            object.__setattr__(self, "image_size", BUILTIN_BACKBONES[self.backbone])


@section
class TrainHeadConfig(TrainConfig):
    """Train a new head on the frozen base."""

    dropout: Float = _f(0.2, "dropout before the classification layer", min=0.0, lt=1.0)
    feature_cache: Literal["auto", "on", "off"] = _f(
        "auto", "train the head on cached base features ('auto' = when augment is off)"
    )


@section
class FinetuneConfig(TrainConfig):
    """Unfreeze the top of the base and continue at a low learning rate (the defaults are
    measured: docs/finetuning.md)."""

    learning_rate: Float = _f(1e-4, "initial learning rate", gt=0.0, max=1.0)
    epochs: Int = _f(10, "maximum epochs", min=1, max=10000)
    augment: Bool = _f(
        False,
        "apply random augmentation to training batches (off by default: measured, "
        "docs/finetuning.md; flips and rotations change what a glyph or a digit means)",
    )
    unfreeze_top: Int = _f(30, "number of base layers (from the top) to unfreeze", min=0)


@section
class BaselineConfig(TrainConfig):
    """A from-scratch model on the same data: what the pretrained backbone is compared to."""

    architecture: Architecture = _f(
        "cnn",
        "cnn (Functional), mlp (Sequential), residual (subclassed), or "
        "'package.module:function' returning a keras.Model",
    )
    image_size: Int = _f(64, "square input size in pixels (small: trains in seconds)", min=16)
    filters: tuple[Int, ...] = _f(
        (16, 32, 64), "convolution widths, one per block (cnn, residual)", min_length=1
    )
    hidden: Int = _f(64, "hidden units (mlp)", min=1)
    dropout: Float = _f(0.2, "dropout before the classification layer", min=0.0, lt=1.0)
    epochs: Int = _f(10, "maximum epochs", min=1, max=10000)
    early_stopping_patience: Int = _f(
        5, "epochs without val_loss improvement before stopping", min=1
    )


#: Serving formats the export stage can write (``reprotrain.serving.formats.FILENAMES``).
ExportFormat = Literal[
    "saved_model", "tflite_float32", "tflite_float16", "tflite_int8", "onnx", "openvino"
]


@section
class ExportConfig:
    """Serving formats of the fine-tuned model, each re-scored against it on the test split."""

    formats: tuple[ExportFormat, ...] = _f(
        ("saved_model", "tflite_float32", "tflite_float16", "tflite_int8", "onnx"),
        "formats to write and verify (saved_model, tflite_float32, tflite_float16, tflite_int8, "
        "onnx, openvino: needs `make setup EXTRAS=openvino`; docs/exports.md)",
        min_length=1,
    )
    min_agreement: Float = _f(
        0.98,
        "least share of test images whose top-1 label must equal the Keras model's for a "
        "format to ship",
        min=0.0,
        max=1.0,
    )
    max_accuracy_drop: Float = _f(
        0.01,
        "largest test-accuracy loss against the Keras model for a format to ship",
        min=0.0,
        max=1.0,
    )
    calibration_samples: Int = _f(
        100, "train images (seeded sample) that calibrate the int8 activation ranges", min=1
    )
    latency_samples: Int = _f(30, "test images timed one at a time (median latency)", min=1)
    batch_size: Int = _f(32, "batch size when re-scoring the test split", min=1)
