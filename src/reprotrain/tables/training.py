"""What the table kind's train stage reads around ``training.train``: the prepared splits as
input dicts, the class weights, a digest for the resume key, and the tf.data pipeline.

Why in-memory arrays instead of streaming the shards per epoch: a table's rows are small
(hundreds of bytes) and the model preprocesses them itself, so the splits are read once
(:func:`reprotrain.tables.records.read_frame`) into the arrays the model takes
(:func:`reprotrain.tables.features.model_inputs`, the same conversion the served model
runs); each epoch then shuffles them with a seeded buffer (``pipeline.shuffle_buffer``), as
the image pipeline does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain import fsio, stage_io
from reprotrain.errors import DataError
from reprotrain.tables import records
from reprotrain.tables.features import InputSpec, model_inputs
from reprotrain.tables.schema import SCHEMA_FILE, Schema
from reprotrain.timing import timed

logger = logging.getLogger(__name__)


@dataclass
class Split:
    """One prepared split: the model's input dict, the class ids and the raw frame."""

    inputs: dict[str, np.ndarray]
    y: np.ndarray
    frame: Any  # pandas DataFrame (raw columns and the label's class names)

    def __len__(self) -> int:
        return len(self.y)


@timed("data")
def load_split(prepared: Path, split: str, schema: Schema) -> Split:
    """One split's rows, converted as the served model converts a request."""
    frame = records.read_frame(Path(prepared), split)
    y = records.label_ids(Path(prepared), split)
    if len(frame) != len(y):
        raise DataError(f"{prepared}: the {split} split's rows and labels disagree; rerun prepare")
    return Split(model_inputs(frame, InputSpec.from_schema(schema)), y, frame)


def data_digest(prepared: Path) -> str:
    """The prepared data's identity (schema and shard index): part of the resume key."""
    prepared = Path(prepared)
    parts = [fsio.file_sha256(prepared / name) for name in (SCHEMA_FILE, "shards.json")]
    return stage_io.fingerprint(*parts)


@dataclass
class TableData:
    """What the train stage trains on."""

    schema: Schema
    spec: InputSpec
    train: Split
    val: Split
    class_weight: dict[int, float] | None
    counts: dict[str, int]
    digest: str


def load_train_data(prepared: Path, class_weight: Any) -> TableData:
    """The train and val splits, class weights (``none|balanced|{class: weight}``) and the
    data digest. An empty split is a one-line DataError naming the fix."""
    prepared = Path(prepared)
    schema = Schema.load(prepared)
    train, val = (load_split(prepared, s, schema) for s in ("train", "val"))
    for name, split in (("train", train), ("val", val)):
        if not len(split):
            raise DataError(
                f"the {name} split is empty: add rows or adjust prepare.val_fraction, then rerun"
            )
    counts = {label: int(np.sum(train.y == i)) for i, label in enumerate(schema.labels)}
    weights = stage_io.class_weights(class_weight, schema.labels, counts)
    return TableData(
        schema, InputSpec.from_schema(schema), train, val, weights, counts, data_digest(prepared)
    )


def make_dataset(
    features: Any, y: np.ndarray, *, batch_size: int, shuffle_buffer: int = 0, seed: int = 0
) -> Any:
    """A tf.data pipeline of ``(features, label)`` batches; ``shuffle_buffer`` > 0 shuffles
    (seeded, reshuffled each epoch: the same order on a rerun, another each epoch).
    ``features`` is what the model takes (``tables.model.feed``)."""
    import tensorflow as tf

    if isinstance(features, dict):
        features = {k: (v.astype(str) if v.dtype == object else v) for k, v in features.items()}
    ds = tf.data.Dataset.from_tensor_slices((features, y.astype(np.int64)))
    if shuffle_buffer > 0:
        ds = ds.shuffle(min(shuffle_buffer, len(y)), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
