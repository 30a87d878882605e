"""The tf.data input pipeline every training and evaluation stage reads through.

Order matters and is the point of this module::

    interleave(shards) → parse → decode → resize → cache → shuffle → augment → batch → prefetch

Decoding and resizing are the expensive, deterministic part, so they sit *before*
``cache()``: from epoch 2 on, images come from memory (or a cache file). Augmentation is
random and must differ every epoch, so it sits *after* the cache; caching augmented images
would replay the same "random" crops forever. ``shuffle`` reshuffles each epoch from a
seeded generator, so a run is reproducible yet not the same order every epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tensorflow as tf

from reprotrain.config import AugmentConfig, PipelineConfig
from reprotrain.data import schema, tfrecords
from reprotrain.data.images import decode_and_resize, to_uint8
from reprotrain.errors import DataError
from reprotrain.fsio import file_sha256

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE


def read_labels(prepared_dir: Path | str) -> list[str]:
    """Class names of a prepared dataset; list index = label id."""
    path = Path(prepared_dir) / "labels.json"
    if not path.is_file():
        raise DataError(f"{path} not found: run the prepare stage first (dvc repro prepare)")
    labels = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(labels, list) or not labels:
        raise DataError(f"{path}: expected a non-empty JSON list of class names")
    return [str(x) for x in labels]


# --------------------------------------------------------------------------- map functions
# Pure tensor → tensor functions: tested eagerly and inside tf.data (tests/data/).
# ``decode_and_resize`` lives in ``images`` (shared with predict and serving); re-exported.
__all__ = ["decode_and_resize", "make_dataset", "parse_example", "read_labels"]


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """One serialized ``tf.train.Example`` → the schema's feature dict."""
    return tf.io.parse_single_example(serialized, schema.feature_spec())


def augment_image(image: tf.Tensor, cfg: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Random flip, rotation, zoom, brightness and contrast of one image (0..255 float32).

    Stateless ops keyed by ``seed`` (a ``[2]`` int tensor derived per element and epoch):
    deterministic for a run, different across epochs and elements.
    """
    size = tf.shape(image)[0:2]
    seeds = tf.random.experimental.stateless_split(seed, num=5)
    if cfg.flip:
        image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    if cfg.rotation > 0 or cfg.zoom > 0:
        angle = tf.random.stateless_uniform(
            [], seeds[1], -cfg.rotation * 2 * math.pi, cfg.rotation * 2 * math.pi
        )
        scale = tf.random.stateless_uniform([], seeds[2], 1.0 - cfg.zoom, 1.0 + cfg.zoom)
        image = _rotate_zoom(image, angle, scale, size)
    if cfg.brightness > 0:
        image = tf.image.stateless_random_brightness(image, cfg.brightness * 255.0, seeds[3])
    if cfg.contrast > 0:
        image = tf.image.stateless_random_contrast(
            image, 1.0 - cfg.contrast, 1.0 + cfg.contrast, seeds[4]
        )
    return tf.clip_by_value(image, 0.0, 255.0)


def _rotate_zoom(
    image: tf.Tensor, angle: tf.Tensor, scale: tf.Tensor, size: tf.Tensor
) -> tf.Tensor:
    """Rotate by ``angle`` and zoom by ``scale`` around the centre (reflect at the borders)."""
    h = tf.cast(size[0], tf.float32)
    w = tf.cast(size[1], tf.float32)
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # Output pixel (x, y) samples input at A·(x - c) + c: the inverse transform.
    transform = tf.stack(
        [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0]
    )
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis],
        transforms=transform[tf.newaxis],
        output_shape=size,
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )
    return out[0]


# --------------------------------------------------------------------------- the pipeline


def make_dataset(
    files: Sequence[Path | str],
    cfg: PipelineConfig,
    training: bool,
    *,
    image_size: int,
    batch_size: int,
    seed: int,
    augment: bool | None = None,
    with_metadata: bool = False,
) -> tf.data.Dataset:
    """Batches of ``(images, labels)`` (or ``(images, labels, metadata)``) from TFRecord shards.

    ``training`` turns on shuffling (and augmentation unless ``augment`` says otherwise);
    evaluation reads in file order, so predictions line up with the manifest. Images are
    float32 0..255 ``[B, S, S, 3]``; labels int32 ``[B]``; metadata ``{"path", "sha256"}``.
    """
    files = [str(f) for f in files]
    if not files:
        raise DataError("no TFRecord shards given: run the prepare stage first")
    augment = training if augment is None else augment
    options = tf.data.Options()
    options.deterministic = cfg.deterministic

    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    # Interleave shard reads: sequential order when evaluating (cycle_length=1) keeps the
    # predictions aligned with the manifest; parallel when training.
    if training:
        ds = ds.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(len(files), 4),
            num_parallel_calls=AUTOTUNE,
            deterministic=cfg.deterministic,
        )
    else:
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=1)

    def _decode(serialized: tf.Tensor) -> tuple[Any, ...]:
        ex = parse_example(serialized)
        # Cached as uint8: a quarter of the memory and of the bytes copied per epoch
        # (rounding to whole pixel values is invisible to the model).
        image = to_uint8(decode_and_resize(ex[schema.IMAGE], image_size))
        label = tf.cast(ex[schema.LABEL], tf.int32)
        if not with_metadata:  # nothing per element that the consumer will not use
            return image, label
        meta = {"path": ex[schema.SOURCE_PATH], "sha256": ex[schema.SHA256]}
        return image, label, meta

    ds = ds.map(_decode, num_parallel_calls=AUTOTUNE, deterministic=cfg.deterministic)
    if cfg.cache not in ("none", "memory"):
        ds = ds.cache(str(cache_path(cfg.cache, files, image_size, with_metadata)))
    elif cfg.cache == "memory":
        ds = ds.cache()
    if training:
        ds = ds.shuffle(cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if augment:
        ds = _augment(ds, cfg.augment, seed)
    ds = ds.batch(batch_size, num_parallel_calls=AUTOTUNE, deterministic=cfg.deterministic)
    # float32 for the model, converted once per batch rather than per image.
    ds = ds.map(_to_float, num_parallel_calls=AUTOTUNE, deterministic=cfg.deterministic)
    return ds.prefetch(AUTOTUNE).with_options(options)


def _to_float(image: tf.Tensor, *rest: Any) -> tuple[Any, ...]:
    return (tf.cast(image, tf.float32), *rest)


def cache_path(
    prefix: str | Path, files: Sequence[Path | str], image_size: int, with_metadata: bool
) -> Path:
    """The tf.data cache file of one dataset: ``<prefix>-<split>-<S>px-<key>``.

    Why keyed: one ``pipeline.cache`` prefix serves every split and every run. With the bare
    prefix, train and val shared one cache and val silently read train's images; and a cache
    written before ``prepare`` reran would be read after it. The key hashes the shards'
    identity (name, size and sha256, taken from ``shards.json`` when its record matches the
    file's size, else computed), the image size and the element structure: other data,
    other split or other size → other file, so a stale cache is never read.
    """
    recorded: dict[Path, dict[str, dict]] = {}
    identity = []
    for f in sorted(Path(x) for x in files):
        if f.parent not in recorded:
            try:
                index = tfrecords.read_shard_index(f.parent)
            except DataError:
                index = {}
            recorded[f.parent] = {e["file"]: e for es in index.values() for e in es}
        size = f.stat().st_size
        entry = recorded[f.parent].get(f.name)
        sha = entry["sha256"] if entry and entry["bytes"] == size else file_sha256(f)
        identity.append([f.name, size, sha])
    payload = json.dumps(
        {"format": 1, "shards": identity, "image_size": image_size, "meta": with_metadata},
        sort_keys=True,
    )
    key = hashlib.sha256(payload.encode()).hexdigest()[:16]
    split = sorted({Path(f).name.split("-")[0] for f in files})
    path = Path(f"{prefix}-{'+'.join(split)}-{image_size}px-{key}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _augment(ds: tf.data.Dataset, cfg: AugmentConfig, seed: int) -> tf.data.Dataset:
    """Augment with per-element, per-epoch seeds.

    A ``tf.data`` random generator seeded once would replay the same sequence each epoch
    when the pipeline is re-iterated; ``Dataset.random(seed)`` with
    ``reshuffle_each_iteration`` yields fresh seeds every epoch and is still reproducible.
    """
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    zipped = tf.data.Dataset.zip((ds, seeds))

    def _apply(element: tuple[Any, ...], s: tf.Tensor) -> tuple[Any, ...]:
        image, *rest = element
        out = augment_image(tf.cast(image, tf.float32), cfg, s)
        return (tf.cast(tf.round(out), tf.uint8), *rest)

    return zipped.map(_apply, num_parallel_calls=AUTOTUNE, deterministic=True)
