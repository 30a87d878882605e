"""User backbones for the ``model.backbone: package.module:function`` tests."""

from __future__ import annotations

import keras


def tiny(image_size: int, weights: str | None):
    """A valid backbone: two conv layers and BatchNorm; preprocessing to [0, 1]."""
    if weights not in (None, "none"):
        raise ValueError(f"tiny has no pretrained weights, got {weights!r}")
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="c2")(x)
    return keras.Model(inputs, x, name="tiny"), keras.layers.Rescaling(1 / 255.0)


def pooled(image_size: int, weights: str | None):
    """Valid too: the base pools itself (2-D output) and takes raw pixels (preprocess None)."""
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(4, 3, name="c")(inputs)
    return keras.Model(inputs, keras.layers.GlobalMaxPooling2D()(x)), None


def not_a_tuple(image_size: int, weights: str | None):
    return keras.Sequential([keras.layers.Conv2D(4, 3)])


def lambda_preprocess(image_size: int, weights: str | None):
    base, _ = tiny(image_size, None)
    return base, keras.layers.Lambda(lambda x: x / 255.0)


def flat_output(image_size: int, weights: str | None):
    inputs = keras.Input((image_size, image_size, 3))
    return keras.Model(inputs, keras.layers.Reshape((-1, 3))(inputs)), None


def fails(image_size: int, weights: str | None):
    raise RuntimeError("no GPU found")
