"""Grad-CAM points where the evidence is: a model whose score depends on a known region."""

from __future__ import annotations

import numpy as np
import pytest

from reprotrain.reports.figures import grad_cam, grad_cams


def _brightness_model():
    """Class 0's logit is the image's mean brightness, class 1's its negative: the evidence for
    class 0 is exactly where the image is bright. The last 4-D layer (Grad-CAM's feature map)
    is a 1×1 convolution summing the channels, so the features are the image itself."""
    import keras

    inputs = keras.Input((16, 16, 3))
    conv = keras.layers.Conv2D(1, 1, use_bias=False, name="last")
    dense = keras.layers.Dense(2, activation="softmax")
    x = keras.layers.GlobalAveragePooling2D()(conv(inputs))
    model = keras.Model(inputs, dense(x))
    conv.set_weights([np.ones((1, 1, 3, 1), np.float32) / 255.0])
    dense.set_weights([np.array([[1.0, -1.0]], np.float32), np.zeros(2, np.float32)])
    return model


def _image_with_bright(rows: slice, cols: slice) -> np.ndarray:
    image = np.full((16, 16, 3), 2, np.uint8)
    image[rows, cols] = 250
    return image


@pytest.mark.parametrize(
    ("rows", "cols"),
    [(slice(0, 8), slice(0, 8)), (slice(8, 16), slice(8, 16)), (slice(4, 12), slice(0, 4))],
)
def test_the_map_mass_lies_on_the_evidence(rows: slice, cols: slice) -> None:
    model = _brightness_model()
    image = _image_with_bright(rows, cols)
    heat = grad_cam(model, image, class_index=0)
    assert heat.shape == (16, 16) and heat.max() == pytest.approx(1.0)
    inside = heat[rows, cols].sum() / heat.sum()
    assert inside > 0.8, inside  # bright pixels are 125× the rest; an all-zero map fails
    assert heat[rows, cols].min() > heat.max() * 0.9  # the whole region lights up


def test_evidence_against_a_class_is_not_shown_and_a_batch_keeps_each_map() -> None:
    model = _brightness_model()
    left = _image_with_bright(slice(0, 16), slice(0, 8))
    right = _image_with_bright(slice(0, 16), slice(8, 16))
    # Brightness lowers class 1's score everywhere: ReLU leaves nothing to show.
    assert not grad_cam(model, left, class_index=1).any()
    batch = grad_cams(model, np.stack([left, right]), [0, 0])
    assert batch[0][:, :8].sum() > 0.8 * batch[0].sum()
    assert batch[1][:, 8:].sum() > 0.8 * batch[1].sum()
    np.testing.assert_allclose(batch[1], grad_cam(model, right, 0), atol=1e-6)
