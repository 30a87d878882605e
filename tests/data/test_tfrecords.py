"""TFRecord writing without TensorFlow: the shards prepare writes are, byte for byte, the
files ``tf.train.Example`` + ``tf.io.TFRecordWriter`` write, and TensorFlow reads them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from reprotrain.data import schema
from reprotrain.data.tfrecords import Record, write_split

RECORDS = [
    Record(b"\xff\xd8 not really a jpeg", 0, "ants", "train/ants/a.jpg", "ab" * 32, 375, 500),
    Record(b"", 1, "bées", "val/bées/ü b.png", "cd" * 32, 1, 2**40),  # empty, non-ASCII, int64
    *(Record(bytes([i]) * (i * 997), i % 3, "c", f"x/{i}.jpg", "ef" * 32, i, i) for i in range(9)),
]


def _tensorflow_shard(records: list[Record], path: Path) -> None:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for r in records:
            feature = {
                schema.IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[r.jpeg])),
                schema.LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[r.label])),
                schema.LABEL_NAME: tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[r.label_name.encode()])
                ),
                schema.SOURCE_PATH: tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[r.source_path.encode()])
                ),
                schema.SHA256: tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[r.sha256.encode()])
                ),
                schema.HEIGHT: tf.train.Feature(int64_list=tf.train.Int64List(value=[r.height])),
                schema.WIDTH: tf.train.Feature(int64_list=tf.train.Int64List(value=[r.width])),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString(deterministic=True))


def test_shards_are_tensorflows_bytes_and_read_back(tmp_path: Path) -> None:
    import tensorflow as tf

    ours = write_split(RECORDS, tmp_path / "ours", "train", shard_size=4)
    assert [p.name for p in ours] == [schema.shard_name("train", i, 3) for i in range(3)]
    for i, path in enumerate(ours):
        theirs = tmp_path / f"tf-{i}.tfrecord"
        _tensorflow_shard(RECORDS[i * 4 : (i + 1) * 4], theirs)
        assert path.read_bytes() == theirs.read_bytes()
    # TensorFlow checks both CRCs of every record while reading.
    read = list(tf.data.TFRecordDataset([str(p) for p in ours]))
    assert len(read) == len(RECORDS)
    parsed = tf.train.Example.FromString(read[1].numpy()).features.feature
    assert parsed[schema.LABEL_NAME].bytes_list.value[0].decode() == "bées"
    assert parsed[schema.WIDTH].int64_list.value[0] == 2**40


def test_writing_shards_does_not_import_tensorflow(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from tests.data.test_tfrecords import RECORDS; "
        "from reprotrain.data.tfrecords import write_split; "
        f"write_split(RECORDS, Path({str(tmp_path)!r}), 'val', 4); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
