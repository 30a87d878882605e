"""From-scratch baselines, one per Keras model API: Sequential, Functional, subclassed.

They answer "how much does the pretrained backbone buy us?" (the ``baseline`` stage) and
show the three ways Keras builds a model, each small enough to train in seconds on a CPU:

* :func:`mlp`: ``keras.Sequential`` — a plain stack, ``Rescaling → Flatten → Dense →
  Dropout → Dense``.
* :func:`cnn`: the Functional API — ``Conv2D``/``MaxPooling2D`` blocks, then
  ``GlobalAveragePooling2D → Dropout → Dense``.
* :class:`ResidualNet`: a subclassed ``keras.Model`` made of :class:`ResidualBlock` s, a
  custom layer. Both are registered serialisable and implement ``get_config``, which is
  what lets a ``.keras`` file holding them load with ``safe_mode=True`` (no pickled code).
  Importing this module registers them (``reprotrain.models`` imports it).

Every model takes raw 0–255 RGB ``[batch, S, S, 3]`` (``Rescaling`` inside) and outputs
float32 softmax probabilities, like the transfer model, so the same training loop,
evaluation and export code serve both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from reprotrain.config import SCRATCH_ARCHITECTURES
from reprotrain.errors import ModelError
from reprotrain.timing import timed

INPUT_NAME = "image"
OUTPUT_NAME = "predictions"
PACKAGE = "reprotrain"


def _rescale() -> Any:
    return keras.layers.Rescaling(1.0 / 255.0, name="rescale")


def _classifier(num_classes: int) -> Any:
    """Softmax in float32 even under mixed precision (the loss is fragile in float16)."""
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=OUTPUT_NAME)


def mlp(image_size: int, num_classes: int, *, hidden: int = 64, dropout: float = 0.2) -> Any:
    """Sequential API: a multi-layer perceptron on the flattened pixels."""
    return keras.Sequential(
        [
            keras.Input((image_size, image_size, 3), name=INPUT_NAME),
            _rescale(),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(hidden, activation="relu", name="hidden"),
            keras.layers.Dropout(dropout, name="dropout"),
            _classifier(num_classes),
        ],
        name="mlp",
    )


def cnn(
    image_size: int,
    num_classes: int,
    *,
    filters: Sequence[int] = (16, 32, 64),
    dropout: float = 0.2,
) -> Any:
    """Functional API: ``Conv2D``/``MaxPooling2D`` blocks, then pooling and the classifier."""
    inputs = keras.Input((image_size, image_size, 3), name=INPUT_NAME)
    x = _rescale()(inputs)
    for i, f in enumerate(filters, start=1):
        x = keras.layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, _classifier(num_classes)(x), name="cnn")


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResidualBlock(keras.layers.Layer):
    """``x + F(x)`` with F = Conv-BN-ReLU-Conv-BN (He et al., 2016), then ReLU.

    When the block changes the width or strides, the shortcut is a 1×1 convolution so the
    two branches can be added. ``get_config`` returns the constructor arguments, so Keras
    can rebuild the block from the saved file without executing any pickled code.
    """

    def __init__(self, filters: int, strides: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.strides = int(strides)
        conv = dict(kernel_size=3, padding="same", use_bias=False)
        self.conv1 = keras.layers.Conv2D(self.filters, strides=self.strides, **conv)
        self.bn1 = keras.layers.BatchNormalization()
        self.conv2 = keras.layers.Conv2D(self.filters, **conv)
        self.bn2 = keras.layers.BatchNormalization()
        self.project: Any = None
        self.project_bn: Any = None

    def build(self, input_shape: Any) -> None:
        if input_shape[-1] != self.filters or self.strides != 1:
            self.project = keras.layers.Conv2D(
                self.filters, 1, strides=self.strides, use_bias=False
            )
            self.project_bn = keras.layers.BatchNormalization()

    def call(self, x: Any, training: bool | None = None) -> Any:
        y = keras.ops.relu(self.bn1(self.conv1(x), training=training))
        y = self.bn2(self.conv2(y), training=training)
        if self.project is not None:
            x = self.project_bn(self.project(x), training=training)
        return keras.ops.relu(x + y)

    def compute_output_shape(self, input_shape: Any) -> Any:
        h, w = input_shape[1], input_shape[2]
        if self.strides != 1:
            h = None if h is None else -(-h // self.strides)
            w = None if w is None else -(-w // self.strides)
        return (input_shape[0], h, w, self.filters)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResidualNet(keras.Model):
    """Subclassed API: a stem convolution, one :class:`ResidualBlock` per stage (each after
    the first halves the resolution), global pooling, dropout and the classifier."""

    def __init__(
        self,
        num_classes: int,
        filters: Sequence[int] = (16, 32, 64),
        dropout: float = 0.2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.filters = [int(f) for f in filters]
        self.dropout_rate = float(dropout)
        self.rescale = _rescale()
        self.stem = keras.layers.Conv2D(
            self.filters[0], 3, strides=2, padding="same", activation="relu", name="stem"
        )
        self.blocks = [
            ResidualBlock(f, strides=1 if i == 0 else 2, name=f"block{i + 1}")
            for i, f in enumerate(self.filters)
        ]
        self.pool = keras.layers.GlobalAveragePooling2D(name="gap")
        self.drop = keras.layers.Dropout(self.dropout_rate, name="dropout")
        self.classifier = _classifier(self.num_classes)

    def call(self, x: Any, training: bool | None = None) -> Any:
        x = self.stem(self.rescale(x))
        for block in self.blocks:
            x = block(x, training=training)
        return self.classifier(self.drop(self.pool(x), training=training))

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "num_classes": self.num_classes,
            "filters": self.filters,
            "dropout": self.dropout_rate,
        }


def residual(
    image_size: int,
    num_classes: int,
    *,
    filters: Sequence[int] = (16, 32, 64),
    dropout: float = 0.2,
) -> Any:
    """A :class:`ResidualNet` behind a Functional ``Input``.

    The wrapper gives the model a known ``input_shape`` (a bare subclassed model has none
    until called), which the loader's size check and the export need; the subclassed model
    is its one inner layer, saved and restored through its own ``get_config``.
    """
    inputs = keras.Input((image_size, image_size, 3), name=INPUT_NAME)
    net = ResidualNet(num_classes, filters=filters, dropout=dropout, name="residual_net")
    return keras.Model(inputs, net(inputs), name="residual")


@timed("model")
def build(
    architecture: str,
    image_size: int,
    num_classes: int,
    *,
    filters: Sequence[int] = (16, 32, 64),
    hidden: int = 64,
    dropout: float = 0.2,
) -> Any:
    """The model for ``baseline.architecture``: ``cnn``, ``mlp``, ``residual`` or
    ``package.module:function``.

    A user function is called as ``fn(image_size, num_classes)`` and must return a
    ``keras.Model`` taking raw 0–255 ``[batch, S, S, 3]`` images to ``[batch, num_classes]``
    probabilities (softmax); custom layers in it must be registered serialisable for the
    saved model to load with ``safe_mode=True``.
    """
    if num_classes < 2:
        raise ModelError(f"need at least 2 classes to train a classifier, got {num_classes}")
    if architecture == "mlp":
        return mlp(image_size, num_classes, hidden=hidden, dropout=dropout)
    if architecture == "cnn":
        return cnn(image_size, num_classes, filters=filters, dropout=dropout)
    if architecture == "residual":
        return residual(image_size, num_classes, filters=filters, dropout=dropout)
    if ":" in architecture:
        return _custom(architecture, image_size, num_classes)
    raise ModelError(
        f"baseline.architecture = {architecture!r}: must be one of "
        f"{', '.join(SCRATCH_ARCHITECTURES)} or 'package.module:function'"
    )


def _custom(ref: str, image_size: int, num_classes: int) -> Any:
    from reprotrain.models.backbones import import_function

    where = f"baseline.architecture = {ref!r}"
    fn = import_function(ref, key="baseline.architecture")
    try:
        model = fn(image_size, num_classes)
    except Exception as exc:
        raise ModelError(f"{where}: the function failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, keras.Model):
        raise ModelError(
            f"{where}: returned {type(model).__name__}; expected a keras.Model taking "
            f"[batch, {image_size}, {image_size}, 3] raw 0-255 images to "
            f"[batch, {num_classes}] probabilities"
        )
    try:
        out = model.compute_output_spec(keras.KerasTensor((None, image_size, image_size, 3)))
    except Exception as exc:
        raise ModelError(
            f"{where}: the model does not accept [batch, {image_size}, {image_size}, 3] "
            f"images ({type(exc).__name__}: {exc})"
        ) from exc
    if tuple(out.shape)[1:] != (num_classes,):
        raise ModelError(
            f"{where}: the model outputs {tuple(out.shape)}; expected [batch, {num_classes}] "
            "class probabilities"
        )
    return model


def parameter_count(model: Any) -> dict[str, int]:
    """Trainable and non-trainable parameter counts (for the stage's metrics)."""
    import numpy as np

    def count(weights: list[Any]) -> int:
        return int(sum(int(np.prod(w.shape)) for w in weights))

    return {
        "trainable_params": count(model.trainable_weights),
        "non_trainable_params": count(model.non_trainable_weights),
    }
