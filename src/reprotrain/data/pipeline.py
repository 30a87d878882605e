"""The tf.data input pipeline every training and evaluation stage reads through.

Order matters and is the point of this module::

    interleave(shards) → parse → decode → resize → cache → shuffle → batch → augment → prefetch

Decoding and resizing are the expensive, deterministic part, so they sit *before*
``cache()``: from epoch 2 on, images come from memory (or a cache file). Augmentation is
random and must differ every epoch, so it sits *after* the cache; caching augmented images
would replay the same "random" crops forever. ``shuffle`` reshuffles each epoch from a
seeded generator, so a run is reproducible yet not the same order every epoch.

The two steps with their own subject live apart: which cache a split gets and the cache
files' safety in :mod:`reprotrain.data.cache`, the per-batch augmentation and its seeds in
:mod:`reprotrain.data.augmentation`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import tensorflow as tf

from reprotrain.config import PipelineConfig
from reprotrain.data import schema
from reprotrain.data.augmentation import augment_batches, with_seeds
from reprotrain.data.cache import cache_dataset, count_records
from reprotrain.data.images import decode_and_resize, to_uint8
from reprotrain.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE

# ``decode_and_resize`` lives in ``images`` (shared with predict and serving); re-exported.
__all__ = ["decode_and_resize", "make_dataset", "parse_example", "read_labels"]


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


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """One serialized ``tf.train.Example`` → the schema's feature dict."""
    return tf.io.parse_single_example(serialized, schema.feature_spec())


# --------------------------------------------------------------------------- the pipeline


def make_dataset(  # noqa: PLR0913  (keyword-only knobs of one tf.data pipeline)
    files: Sequence[Path | str],
    cfg: PipelineConfig,
    training: bool,
    *,
    image_size: int,
    batch_size: int,
    seed: int,
    augment: bool | None = None,
    with_metadata: bool = False,
    augment_in: Literal["input", "model"] = "input",
) -> tf.data.Dataset:
    """Batches of ``(images, labels)`` (or ``(images, labels, metadata)``) from TFRecord shards.

    ``training`` turns on shuffling (and augmentation unless ``augment`` says otherwise);
    evaluation reads in file order, so predictions line up with the manifest. Images are
    float32 0..255 ``[B, S, S, 3]``; labels int32 ``[B]``; metadata ``{"path", "sha256"}``.

    ``augment_in="model"`` (with augmentation on) leaves the augmentation to the train step
    (:class:`reprotrain.training.AugmentingModel`): batches are then
    ``((uint8 images, seeds [B, 2]), labels)``, the seeds being the ones this pipeline
    would have used, so the step draws the same augmentation.
    """
    files = [str(f) for f in files]
    if not files:
        raise DataError("no TFRecord shards given: run the prepare stage first")
    augment = training if augment is None else augment
    options = tf.data.Options()
    options.deterministic = cfg.deterministic

    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        # One seeded shard order, not a new one per epoch: what is cached is the first full
        # pass, and which pass that is differs between a run and its resumption (a resumed
        # run must see the same cached order). The element shuffle after the cache varies
        # the order every epoch.
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=False)
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
    count = count_records(files)
    ds = cache_dataset(ds, cfg, files, image_size, with_metadata, count)
    if training:
        ds = ds.shuffle(cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, num_parallel_calls=AUTOTUNE, deterministic=cfg.deterministic)
    if count is not None:
        # Reading TFRecords, tf.data cannot know the length: Keras then learns it by running
        # out of data in the first epoch and warns "Your input ran out of data" in every
        # stage. shards.json records it (checked against each shard's size).
        ds = ds.apply(tf.data.experimental.assert_cardinality(math.ceil(count / batch_size)))
    if augment and augment_in == "model":
        ds = with_seeds(ds, cfg, seed)
    elif augment:
        ds = augment_batches(ds, cfg, seed)
    else:  # float32 for the model, converted once per batch rather than per image.
        ds = ds.map(_to_float, num_parallel_calls=AUTOTUNE, deterministic=cfg.deterministic)
    return ds.prefetch(AUTOTUNE).with_options(options)


def _to_float(image: tf.Tensor, *rest: Any) -> tuple[Any, ...]:
    return (tf.cast(image, tf.float32), *rest)
