"""The table model's own layers, registered so a saved model loads with ``safe_mode=True``.

Keras has no layer that imputes missing numbers, and a ``Lambda`` does not load in safe
mode; :class:`ImputeMissing` fills NaN with the train split's means and appends one
missing-indicator channel per column, so the saved model takes raw numbers (NaN included)
the way the photo model takes raw pixels. :class:`MLPBlock` is the seed's block (Dense →
BatchNorm → Dropout) that ``model.api: subclassed`` repeats.

Imported before any table model is loaded (training, evaluate, predict, and the served
model: ``tables.packaging`` ships this module as ``code_paths``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

PACKAGE = "reprotrain.tables"


@keras.saving.register_keras_serializable(package=PACKAGE)
class ImputeMissing(keras.layers.Layer):
    """``[batch, n]`` numbers with NaN → ``[batch, 2n]``: NaN replaced by ``fill`` (the train
    means), then one 0/1 channel per column saying the value was missing."""

    def __init__(self, fill: Sequence[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fill = [float(v) for v in fill]

    def call(self, inputs: Any) -> Any:
        x = keras.ops.cast(inputs, "float32")
        missing = keras.ops.isnan(x)
        fill = keras.ops.convert_to_tensor(self.fill, dtype="float32")
        filled = keras.ops.where(missing, fill, x)  # fill [n] broadcasts over the batch
        return keras.ops.concatenate([filled, keras.ops.cast(missing, "float32")], axis=-1)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (*input_shape[:-1], 2 * len(self.fill))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "fill": list(self.fill)}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MLPBlock(keras.layers.Layer):
    """Dense (ReLU) → BatchNormalization → Dropout: one block of the subclassed head."""

    def __init__(self, units: int, dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = int(units)
        self.dropout_rate = float(dropout)
        self.dense = keras.layers.Dense(self.units, activation="relu")
        self.norm = keras.layers.BatchNormalization()
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def build(self, input_shape: Any) -> None:
        self.dense.build(input_shape)
        self.norm.build((*input_shape[:-1], self.units))
        self.built = True

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        x = self.norm(self.dense(inputs), training=training)
        return self.dropout(x, training=training)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (*input_shape[:-1], self.units)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units, "dropout": self.dropout_rate}
