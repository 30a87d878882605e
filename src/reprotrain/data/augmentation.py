"""Random augmentation of training batches: a hand-written, XLA-compiled resampler.

Why a module of its own: it is the pixel arithmetic of augmentation (an inverse affine map
per image, bilinear sampling with reflected borders, brightness/contrast as one multiply-add)
and the per-batch seed plumbing that keeps it reproducible, used by the tf.data pipeline
(:mod:`reprotrain.data.pipeline`, ``placement: input``) and by the train step
(:mod:`reprotrain.training.augment`, ``placement: model``).

Augmentation works on whole batches (:func:`augment_batch`): each op runs once per batch
with per-image random parameters drawn in one op, instead of a dozen small ops per image.
Determinism: ``Dataset.random(seed)`` (re-randomised each epoch) gives every batch one
``[2]`` seed, zipped to the batch in order; everything else is a stateless function of that
seed. Same ``seed`` and data → the same augmented batches, epoch by epoch; another epoch →
other augmentations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from reprotrain.config import AugmentConfig, PipelineConfig

AUTOTUNE = tf.data.AUTOTUNE

__all__ = ["affine_transforms", "augment_batch", "augment_batches", "with_seeds"]


def augment_batch(images: tf.Tensor, cfg: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Random flip, rotation, zoom, brightness and contrast of a batch ``[B, H, W, 3]``.

    uint8 or float 0..255 in, float32 0..255 out. Every image gets its own parameters, all
    drawn at once from ``seed`` (a ``[2]`` int tensor) with stateless ops: the same seed
    gives the same batch, eagerly and in a graph. The pixel work is one XLA-compiled
    function per batch (:func:`_resample_adjust` or :func:`_flip_adjust`): flip, rotation
    and zoom are one inverse affine map per image, sampled bilinearly with reflected borders
    (``ImageProjectiveTransformV3``'s ``BILINEAR``/``REFLECT``, tested equal), and
    brightness/contrast are one multiply-add, ``(x - mean) * c + mean + b`` (the formula of
    ``tf.image.adjust_contrast`` after ``adjust_brightness``; ``mean`` is the input image's
    per-channel mean). Fused, each output pixel is computed in one pass over memory instead
    of one pass per op: on a CPU that is what makes augmentation cheap.
    """
    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, num=5)
    flip = (
        tf.random.stateless_uniform([n], seeds[0]) < 0.5
        if cfg.flip
        else tf.zeros([n], dtype=tf.bool)
    )
    shape = tf.stack([n, 1, 1, 1])
    delta = tf.zeros(shape)
    if cfg.brightness > 0:
        top = cfg.brightness * 255.0
        delta = tf.random.stateless_uniform(shape, seeds[3], -top, top)
    factor = tf.ones(shape)
    if cfg.contrast > 0:
        factor = tf.random.stateless_uniform(
            shape, seeds[4], 1.0 - cfg.contrast, 1.0 + cfg.contrast
        )
    if cfg.rotation > 0 or cfg.zoom > 0:
        turn = cfg.rotation * 2 * math.pi
        angle = tf.random.stateless_uniform([n], seeds[1], -turn, turn)
        scale = tf.random.stateless_uniform([n], seeds[2], 1.0 - cfg.zoom, 1.0 + cfg.zoom)
        transforms = affine_transforms(tf.shape(images)[1:3], flip, angle, scale)
        return _resample_adjust(images, transforms, factor, delta)
    return _flip_adjust(images, flip, factor, delta)


def affine_transforms(
    size: tf.Tensor, flip: tf.Tensor, angle: tf.Tensor, scale: tf.Tensor
) -> tf.Tensor:
    """``[B, 8]`` inverse maps (``ImageProjectiveTransformV3``'s layout) that mirror (where
    ``flip``), rotate by ``angle`` and zoom by ``scale`` around the image centre: output
    pixel ``p`` samples the input at ``c + F·R(angle)·(p - c) / scale``, ``F`` the mirror."""
    h = tf.cast(size[0], tf.float32)
    w = tf.cast(size[1], tf.float32)
    mirror = tf.where(flip, -1.0, 1.0)
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    cx, cy = (w - 1) / 2, (h - 1) / 2
    a0, a1 = mirror * cos, -mirror * sin
    zeros = tf.zeros_like(cos)
    return tf.stack(
        [a0, a1, cx - a0 * cx - a1 * cy, sin, cos, cy - sin * cx - cos * cy, zeros, zeros],
        axis=1,
    )


def _adjust(images: tf.Tensor, pixels: tf.Tensor, factor: tf.Tensor, delta: tf.Tensor) -> Any:
    """``(x - mean) * factor + mean + delta``, clipped to 0..255 (mean of ``images``)."""
    mean = tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2], keepdims=True)
    return tf.clip_by_value(pixels * factor + (mean * (1.0 - factor) + delta), 0.0, 255.0)


@tf.function(jit_compile=True, reduce_retracing=True)
def _flip_adjust(
    images: tf.Tensor, flip: tf.Tensor, factor: tf.Tensor, delta: tf.Tensor
) -> tf.Tensor:
    """Mirror where ``flip``, then brightness/contrast: one fused XLA pass."""
    x = tf.cast(images, tf.float32)
    x = tf.where(flip[:, None, None, None], tf.reverse(x, axis=[2]), x)
    return _adjust(images, x, factor, delta)


@tf.function(jit_compile=True, reduce_retracing=True)
def _resample_adjust(
    images: tf.Tensor, transforms: tf.Tensor, factor: tf.Tensor, delta: tf.Tensor
) -> tf.Tensor:
    """Bilinear affine resampling with reflected borders, then brightness/contrast.

    Why not ``ImageProjectiveTransformV3`` itself: it has no XLA kernel, and unfused it
    costs more per image than decoding the JPEG (benchmarks/input_pipeline.py). Here XLA
    compiles the coordinates, the four-neighbour gather and the blend into one loop.
    """
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    xs = tf.range(w, dtype=tf.float32)[None, None, :]
    ys = tf.range(h, dtype=tf.float32)[None, :, None]
    t = [transforms[:, i][:, None, None] for i in range(6)]
    sx = _reflect(t[0] * xs + t[1] * ys + t[2], w)
    sy = _reflect(t[3] * xs + t[4] * ys + t[5], h)
    x0f, y0f = tf.floor(sx), tf.floor(sy)
    wx, wy = (sx - x0f)[..., None], (sy - y0f)[..., None]
    x0, y0 = tf.cast(x0f, tf.int32), tf.cast(y0f, tf.int32)
    x1, y1 = tf.minimum(x0 + 1, w - 1), tf.minimum(y0 + 1, h - 1)
    flat = tf.reshape(images, [-1, 3])
    first = (tf.range(b) * h * w)[:, None, None]

    def pixel(yy: tf.Tensor, xx: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.gather(flat, first + yy * w + xx), tf.float32)

    p00, p01, p10, p11 = pixel(y0, x0), pixel(y0, x1), pixel(y1, x0), pixel(y1, x1)
    top = p00 + (p01 - p00) * wx
    bottom = p10 + (p11 - p10) * wx
    return _adjust(images, top + (bottom - top) * wy, factor, delta)


def _reflect(coord: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Pixel-centre coordinates reflected into ``[0, size - 1]`` (``d c b a | a b c d | d c``:
    ``ImageProjectiveTransformV3``'s ``REFLECT``), for any distance outside the image."""
    n = tf.cast(size, tf.float32)
    period = 2.0 * n
    c = tf.math.floormod(coord + 0.5, period)
    c = tf.where(c >= n, period - c, c) - 0.5
    return tf.clip_by_value(c, 0.0, n - 1.0)


def _batch_seeds(seed: int) -> tf.data.Dataset:
    """One ``[2]`` seed per batch and epoch.

    A ``tf.data`` random generator seeded once would replay the same sequence each epoch
    when the pipeline is re-iterated; ``Dataset.random(seed)`` with
    ``rerandomize_each_iteration`` yields fresh seeds every epoch and is still reproducible.
    The seeds are zipped to the batches in order, so which batch gets which seed does not
    depend on the parallel map's scheduling.
    """
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)


def _per_batch(
    ds: tf.data.Dataset,
    cfg: PipelineConfig,
    seed: int,
    fn: Callable[[tf.Tensor, tf.Tensor], Any],
) -> tf.data.Dataset:
    """``(fn(images, batch_seed), labels, ...)`` for every batch (seeds: :func:`_batch_seeds`)."""
    zipped = tf.data.Dataset.zip((ds, _batch_seeds(seed)))

    def _apply(element: tuple[Any, ...], s: tf.Tensor) -> tuple[Any, ...]:
        image, *rest = element
        return (fn(image, s), *rest)

    return zipped.map(_apply, num_parallel_calls=AUTOTUNE, deterministic=cfg.deterministic)


def augment_batches(ds: tf.data.Dataset, cfg: PipelineConfig, seed: int) -> tf.data.Dataset:
    """Augment batches (:func:`augment_batch`) with one seed per batch and epoch."""
    return _per_batch(ds, cfg, seed, lambda image, s: augment_batch(image, cfg.augment, s))


def with_seeds(ds: tf.data.Dataset, cfg: PipelineConfig, seed: int) -> tf.data.Dataset:
    """``((uint8 images, seeds), labels, ...)``: the batch's seed repeated on every row.

    Per row, not one ``[2]`` tensor: a distribution strategy splits every input along the
    batch axis, and each replica then still finds its seed in row 0.
    """

    def pair(image: tf.Tensor, s: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return image, tf.tile(s[tf.newaxis], [tf.shape(image)[0], 1])

    return _per_batch(ds, cfg, seed, pair)
