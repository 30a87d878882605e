"""Augmentation inside the train step (``pipeline.augment.placement: model``).

Why: on a GPU machine the host's cores cannot resample images (rotation, zoom) as fast as
the GPU trains MobileNetV2; in the train step the same work runs on the GPU. The model
being trained is wrapped, not changed: :class:`AugmentingModel` owns no weights, so the
resumable backups, the kept epoch's restore and the saved ``.keras`` file are the wrapped
model's, and no exported model carries an augmentation layer.

The pixels are those the input pipeline would have produced: the same
:func:`reprotrain.data.augmentation.augment_batch`, with the batch seeds the pipeline draws
(it delivers ``(uint8 images, seeds)``; ``make_dataset(augment_in="model")``).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from reprotrain.config import AugmentConfig
from reprotrain.data.augmentation import augment_batch


class AugmentingModel(keras.Model):
    """``model`` behind the augmentation: ``(images, seeds)`` in, the model's output out.

    In training, each batch is augmented with its seed (row 0 of ``seeds``: every row holds
    the batch's seed, so each replica of a distribution strategy finds one); in inference
    (validation) the images go to the model unchanged. Plain image batches are accepted
    too, so validation data need no seeds.
    """

    def __init__(self, model: Any, cfg: AugmentConfig) -> None:
        super().__init__(name=f"{model.name}_augmenting")
        self.inner = model
        self.augment_cfg = cfg
        self.built = model.built  # no weights of its own to build

    def call(self, inputs: Any, training: bool = False) -> Any:
        if isinstance(inputs, (tuple, list)):
            images, seeds = inputs
            if training:
                images = augment_batch(images, self.augment_cfg, seeds[0])
        else:
            images = inputs
        return self.inner(tf.cast(images, tf.float32), training=training)

    @property
    def output_shape(self) -> Any:
        return self.inner.output_shape
