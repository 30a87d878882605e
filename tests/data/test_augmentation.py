"""Batch augmentation (``data.augmentation``): seeded, eager equal to graph, identity when
off, parameters drawn per image, and the fused resampler equal to TensorFlow's projective
transform."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from reprotrain.config import AugmentConfig
from reprotrain.data import augmentation
from reprotrain.data.images import decode_and_resize
from tests.data.conftest import jpeg_bytes

SIZE = 32
NO_AUG = AugmentConfig(flip=False, rotation=0.0, zoom=0.0, brightness=0.0, contrast=0.0)


def _batch(n: int = 4) -> tf.Tensor:
    return tf.stack([decode_and_resize(tf.constant(jpeg_bytes(i)), SIZE) for i in range(n)])


@pytest.mark.slow
def test_augment_batch_is_seeded_eager_equals_graph_and_identity_when_off() -> None:
    images = _batch()
    cfg = AugmentConfig(flip=True, rotation=0.1, zoom=0.2, brightness=0.2, contrast=0.3)
    seed = tf.constant([3, 4], dtype=tf.int64)
    a = augmentation.augment_batch(images, cfg, seed).numpy()
    np.testing.assert_array_equal(a, augmentation.augment_batch(images, cfg, seed).numpy())
    fn = tf.function(lambda im, s: augmentation.augment_batch(im, cfg, s))
    np.testing.assert_allclose(a, fn(images, seed).numpy(), atol=1e-3)
    b = augmentation.augment_batch(images, cfg, tf.constant([5, 6], dtype=tf.int64)).numpy()
    assert np.abs(a - b).mean() > 1.0  # another seed, another augmentation
    assert a.shape == images.shape and a.dtype == np.float32 and a.min() >= 0 and a.max() <= 255
    pixels = tf.cast(tf.round(images), tf.uint8)  # what the cache holds
    same = augmentation.augment_batch(pixels, NO_AUG, seed).numpy()
    np.testing.assert_array_equal(same, pixels.numpy().astype(np.float32))  # off: identity
    # A partial last batch works too (the parameters are drawn for the batch's own size).
    assert augmentation.augment_batch(images[:1], cfg, seed).shape == (1, SIZE, SIZE, 3)


def test_augment_batch_draws_parameters_per_image() -> None:
    """Identical images in one batch come out differently: the randomness is per image,
    not one draw for the whole batch."""
    one = decode_and_resize(tf.constant(jpeg_bytes(2)), SIZE)
    images = tf.stack([one] * 8)
    for cfg in (
        AugmentConfig(flip=False, rotation=0.1, zoom=0.0, brightness=0.0, contrast=0.0),
        AugmentConfig(flip=False, rotation=0.0, zoom=0.0, brightness=0.3, contrast=0.0),
    ):
        out = augmentation.augment_batch(images, cfg, tf.constant([1, 2], dtype=tf.int64)).numpy()
        assert len({o.tobytes() for o in out}) == 8
    # Flip alone: each image is either itself or its exact mirror, and both occur.
    flip_only = dataclasses.replace(NO_AUG, flip=True)
    out = augmentation.augment_batch(images, flip_only, tf.constant([7, 8], dtype=tf.int64)).numpy()
    mirrored = [np.array_equal(o, one.numpy()[:, ::-1]) for o in out]
    assert all(m or np.array_equal(o, one.numpy()) for m, o in zip(mirrored, out, strict=True))
    assert 0 < sum(mirrored) < 8


def test_fused_resampling_equals_tensorflows_projective_transform() -> None:
    """The XLA-fused bilinear/reflect resampling samples exactly what
    ``ImageProjectiveTransformV3`` (BILINEAR, REFLECT) does with the same maps, borders
    included; at angle 0 and scale 1 the flip is the exact mirror."""
    images = tf.cast(tf.round(_batch(6)), tf.uint8)
    flip = tf.constant([True, False, True, False, True, False])
    angle = tf.constant([0.0, 0.0, 0.3, -0.3, 1.2, 3.0])
    scale = tf.constant([1.0, 1.0, 0.9, 1.1, 0.5, 0.2])  # far outside: several reflections
    transforms = augmentation.affine_transforms(tf.constant([SIZE, SIZE]), flip, angle, scale)
    ones, zeros = tf.ones([6, 1, 1, 1]), tf.zeros([6, 1, 1, 1])
    ours = augmentation._resample_adjust(images, transforms, ones, zeros).numpy()
    reference = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32),
        transforms=transforms,
        output_shape=[SIZE, SIZE],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    ).numpy()
    np.testing.assert_allclose(ours, reference, atol=0.05)
    np.testing.assert_allclose(ours[0], images.numpy()[0, :, ::-1], atol=1e-3)
    np.testing.assert_allclose(ours[1], images.numpy()[1], atol=1e-3)
