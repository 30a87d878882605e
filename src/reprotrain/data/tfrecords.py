"""Write prepared examples as sharded TFRecord files (format: ``reprotrain.data.schema``).

Why shards: parallel interleaved reads in tf.data need several files, and a shard count in
each name (``-of-NNNNN``) makes a missing shard visible. Why byte-determinism: DVC hashes the
output; identical input must give identical files so that downstream stages stay cached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from reprotrain.data import schema

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One prepared image, ready to serialise."""

    jpeg: bytes
    label: int
    label_name: str
    source_path: str
    sha256: str
    height: int
    width: int


def serialize(record: Record) -> bytes:
    """A ``tf.train.Example`` as bytes, keyed by the schema's feature names."""
    import tensorflow as tf

    def _bytes(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    feature = {
        schema.IMAGE: _bytes(record.jpeg),
        schema.LABEL: _int(record.label),
        schema.LABEL_NAME: _bytes(record.label_name.encode("utf-8")),
        schema.SOURCE_PATH: _bytes(record.source_path.encode("utf-8")),
        schema.SHA256: _bytes(record.sha256.encode("ascii")),
        schema.HEIGHT: _int(record.height),
        schema.WIDTH: _int(record.width),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


def write_split(
    records: Sequence[Record],
    out_dir: Path,
    split: str,
    shard_size: int,
    on_written: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write ``records`` in order into ``ceil(n / shard_size)`` shards; return their paths.

    ``on_written(n)`` is called after each record (progress reporting). An empty split
    writes no file (callers treat an empty split as an error before getting here).
    """
    import tensorflow as tf

    out_dir.mkdir(parents=True, exist_ok=True)
    count = max(1, -(-len(records) // shard_size)) if records else 0
    paths: list[Path] = []
    for index in range(count):
        path = out_dir / schema.shard_name(split, index, count)
        chunk = records[index * shard_size : (index + 1) * shard_size]
        with tf.io.TFRecordWriter(str(path)) as writer:
            for record in chunk:
                writer.write(serialize(record))
                if on_written:
                    on_written(1)
        paths.append(path)
    log.debug("wrote %d %s records in %d shard(s)", len(records), split, count)
    return paths
