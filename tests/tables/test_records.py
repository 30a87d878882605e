"""The prepared rows' TFRecords: written without TensorFlow, read back exactly by TensorFlow
(:func:`dataset`) and by pandas (:func:`read_frame`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from reprotrain.data import tfrecords
from reprotrain.errors import DataError
from reprotrain.tables import records
from reprotrain.tables.schema import Schema

SCHEMA = Schema(
    label="label",
    labels=("bad", "good"),
    text=("review",),
    numeric=("price",),
    categorical=("country",),
)
ROWS = [
    {"review": "fine ünïcode ✓", "price": 1.5, "country": "fr", "label": "good"},
    {"review": "", "price": None, "country": None, "label": "bad"},
    {"review": "x " * 50, "price": -3.25e7, "country": "de", "label": "good"},
    {"review": 'a,"quoted"\nline', "price": 0.1, "country": "fr", "label": "bad"},
    {"review": "last", "price": 7.0, "country": "us", "label": "good"},
]


def write(out: Path, rows: list[dict], shard_size: int = 2) -> Path:
    SCHEMA.save(out / "schema.json")
    writer = records.SplitWriter(out, "train", len(rows), shard_size)
    for i, row in enumerate(rows):
        label_id = SCHEMA.labels.index(row["label"])
        writer.write(
            records.serialize_row(SCHEMA, row, label_id=label_id, row=i + 2, key=f"{i:032x}")
        )
    tfrecords.write_shard_index(out, {"train": writer.close()})
    return out


def test_read_frame_round_trips_values_in_file_order(tmp_path: Path) -> None:
    frame = records.read_frame(write(tmp_path, ROWS), "train")
    assert list(frame.columns) == ["review", "price", "country", "label"]
    assert list(frame.index) == [2, 3, 4, 5, 6]
    assert list(frame["review"]) == [r["review"] for r in ROWS]
    assert list(frame["country"]) == ["fr", "", "de", "fr", "us"]
    assert list(frame["label"]) == [r["label"] for r in ROWS]
    expected = [np.float32(r["price"]) if r["price"] is not None else math.nan for r in ROWS]
    np.testing.assert_array_equal(frame["price"].to_numpy(), np.asarray(expected, np.float64))
    assert frame["price"].dtype == np.float64
    assert list(records.label_ids(tmp_path, "train")) == [1, 0, 1, 0, 1]


def test_dataset_yields_exact_batches_and_shuffles_by_seed(tmp_path: Path) -> None:
    write(tmp_path, ROWS)
    ds = records.dataset(tmp_path, "train", SCHEMA, batch_size=2)
    batches = list(ds.as_numpy_iterator())
    assert [len(y) for _, y in batches] == [2, 2, 1]
    features = batches[0][0]
    assert set(features) == {"review", "price", "country"}
    assert features["price"].dtype == np.float32 and features["price"].shape == (2,)
    assert features["review"][0].decode() == ROWS[0]["review"]
    assert math.isnan(features["price"][1]) and features["country"][1] == b""
    assert list(np.concatenate([y for _, y in batches])) == [1, 0, 1, 0, 1]

    def order(seed: int) -> list[bytes]:
        ds = records.dataset(tmp_path, "train", SCHEMA, batch_size=5, shuffle_buffer=5, seed=seed)
        return list(next(iter(ds.as_numpy_iterator()))[0]["review"])

    assert order(1) == order(1)
    assert sorted(order(1)) == sorted(r["review"].encode() for r in ROWS)


def test_a_corrupt_shard_is_one_line(tmp_path: Path) -> None:
    write(tmp_path, ROWS)
    shard = sorted(tmp_path.glob("train-*.tfrecord"))[0]
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(DataError, match="corrupt"):
        records.read_frame(tmp_path, "train")


def test_serialised_rows_parse_with_tensorflow_example() -> None:
    import tensorflow as tf

    data = records.serialize_row(SCHEMA, ROWS[0], label_id=1, row=2, key="ab")
    example = tf.train.Example.FromString(data)
    feature = example.features.feature
    assert feature["price"].float_list.value[0] == pytest.approx(1.5)
    assert feature["label"].bytes_list.value[0] == b"good"
    assert feature["__label_id__"].int64_list.value[0] == 1


def test_the_hand_encoding_is_protobufs_byte_for_byte() -> None:
    for i, row in enumerate(ROWS):
        kw = {"label_id": i % 2, "row": 10**6 + i, "key": f"{i:032x}"}
        ours = records.serialize_row(SCHEMA, row, **kw)
        assert ours == records.serialize_row_protobuf(SCHEMA, row, **kw)
