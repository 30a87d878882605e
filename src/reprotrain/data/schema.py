"""The ONE TFRecord feature spec: imported by the writer, the parser and the tests.

Why one module: a key renamed in the writer but not in the parser fails only at training
time, deep inside tf.data; with one spec both sides (and the round-trip test) agree by
construction.
"""

from __future__ import annotations

from typing import Any

IMAGE = "image/encoded"  # JPEG bytes, 8-bit RGB, longer side ≤ prepare.max_side
LABEL = "image/class/label"  # int64 index into labels.json
LABEL_NAME = "image/class/text"  # class name (bytes)
SOURCE_PATH = "image/source_path"  # path relative to data/raw (bytes)
SHA256 = "image/sha256"  # hex content hash of the ORIGINAL file (bytes)
HEIGHT = "image/height"  # int64, of the stored (possibly downscaled) image
WIDTH = "image/width"  # int64

SPLITS = ("train", "val", "test")


def feature_spec() -> dict[str, Any]:
    """``tf.io.parse_single_example`` spec (TF imported lazily: light processes skip it)."""
    import tensorflow as tf

    return {
        IMAGE: tf.io.FixedLenFeature([], tf.string),
        LABEL: tf.io.FixedLenFeature([], tf.int64),
        LABEL_NAME: tf.io.FixedLenFeature([], tf.string),
        SOURCE_PATH: tf.io.FixedLenFeature([], tf.string),
        SHA256: tf.io.FixedLenFeature([], tf.string),
        HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        WIDTH: tf.io.FixedLenFeature([], tf.int64),
    }


def shard_name(split: str, index: int, count: int) -> str:
    """``train-00000-of-00003.tfrecord``: sortable, and the count tells if a shard is missing."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"
