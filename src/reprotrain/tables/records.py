"""Prepared rows as sharded TFRecords: the writer (no TensorFlow) and the two readers other
code uses, :func:`read_frame` (pandas, for scikit-learn and reports) and :func:`dataset`
(tf.data, for the network).

The layout is :mod:`.schema`'s: one feature per input column keyed by its name, the label
as its class name and as ``__label_id__``, the row's line number and ledger key. Shards are
named and indexed (``shards.json``: size, record count, sha256) as the image kind's
(:mod:`reprotrain.data.tfrecords`), so the same integrity check guards both.
"""

from __future__ import annotations

import functools
import logging
import math
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reprotrain.data import tfrecords
from reprotrain.data.schema import shard_name
from reprotrain.errors import DataError
from reprotrain.tables.schema import KEY, LABEL_ID, ROW, Schema

if TYPE_CHECKING:
    import pandas as pd
    import tensorflow as tf

log = logging.getLogger(__name__)


@functools.cache
def example_type() -> Any:
    """``tensorflow.Example`` with all three value lists (the image kind's module leaves
    out ``float_list``), built in a private descriptor pool: serialising needs no
    TensorFlow (seconds and half a gigabyte per prepare, measured by the image kind)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="reprotrain/table_example.proto", package="tensorflow", syntax="proto3"
    )

    def add(message: Any, name: str, number: int, kind: int, **kw: Any) -> None:
        f = message.field.add(name=name, number=number, type=kind)
        f.label = fdp.LABEL_REPEATED if kw.get("repeated") else fdp.LABEL_OPTIONAL
        if "ref" in kw:
            f.type_name = f".tensorflow.{kw['ref']}"
        if "oneof" in kw:
            f.oneof_index = kw["oneof"]

    msg = fdp.TYPE_MESSAGE
    lists = (
        ("bytes_list", "BytesList", fdp.TYPE_BYTES),
        ("float_list", "FloatList", fdp.TYPE_FLOAT),
        ("int64_list", "Int64List", fdp.TYPE_INT64),
    )
    feature = proto.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, (key, name, kind) in enumerate(lists, start=1):  # feature.proto's numbers
        add(proto.message_type.add(name=name), "value", 1, kind, repeated=True)
        add(feature, key, number, msg, ref=name, oneof=0)
    features = proto.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    add(entry, "key", 1, fdp.TYPE_STRING)
    add(entry, "value", 2, msg, ref="Feature")
    add(features, "feature", 1, msg, repeated=True, ref="Features.FeatureEntry")
    add(proto.message_type.add(name="Example"), "features", 1, msg, ref="Features")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_VARINTS = [_varint(i) for i in range(1 << 14)]  # lengths below 16 KiB: a lookup


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2) with its tag byte ``tag``."""
    n = len(payload)
    return tag + (_VARINTS[n] if n < 16384 else _varint(n)) + payload


_T = b"\x0a"  # field 1, length-delimited: Example.features, Features.feature, *List.value
_FLOAT = struct.Struct("<f")


@functools.cache
def _layout(schema: Schema) -> tuple[tuple[str, str, bytes], ...]:
    """(column, kind, encoded start of its map entry) per feature, in the order protobuf's
    deterministic serialisation writes map entries (keys sorted). A float entry has a
    fixed length, so its whole head is precomputed; the others start with the key."""
    kinds = {c: "bytes" for c in (*schema.text, *schema.categorical, schema.label)}
    kinds.update({c: "float" for c in schema.numeric})
    kinds.update({LABEL_ID: "int", ROW: "int", KEY: "bytes"})
    out = []
    for c in sorted(kinds, key=lambda k: k.encode("utf-8")):
        key = _field(_T, c.encode("utf-8"))
        if kinds[c] == "float":  # entry{key, value: Feature{float_list: {value: [x]}}}
            body = len(key) + 10
            out.append((c, "float", _T + _varint(body) + key + b"\x12\x08\x12\x06\x0a\x04"))
        else:
            out.append((c, kinds[c], key))
    return tuple(out)


def serialize_row(
    schema: Schema,
    values: Mapping[str, Any],
    *,
    label_id: int,
    row: int,
    key: str,
) -> bytes:
    """One row as a serialised ``tf.train.Example``. ``values``: column → value (numbers
    as float, NaN or None for missing; strings, None for missing), the label column's
    class name among them.

    Encoded by hand from feature.proto's field numbers (BytesList 1, FloatList 2,
    Int64List 3; packed values): a row is a few dozen small byte strings, several times
    faster than filling the message (measured on churn). tests/tables/test_records.py
    checks the bytes against protobuf's deterministic serialisation."""
    extra = {LABEL_ID: label_id, ROW: row, KEY: key}
    entries = []
    for col, kind, head in _layout(schema):
        v = extra[col] if col in extra else values.get(col)
        if kind == "float":
            entries.append(head + _FLOAT.pack(math.nan if v is None else float(v)))
            continue
        if kind == "bytes":
            data = b"" if v is None else str(v).encode("utf-8", "surrogateescape")
            feature = _field(_T, _field(_T, data))
        else:
            feature = _field(b"\x1a", _field(_T, _varint(int(v))))
        entries.append(_field(_T, head + _field(b"\x12", feature)))
    return _field(_T, b"".join(entries))


def serialize_row_protobuf(
    schema: Schema, values: Mapping[str, Any], *, label_id: int, row: int, key: str
) -> bytes:
    """:func:`serialize_row` by protobuf (the reference the hand encoding is tested on)."""
    example = example_type()()
    feature = example.features.feature
    for col in (*schema.text, *schema.categorical, schema.label):
        v = values.get(col)
        feature[col].bytes_list.value.append(b"" if v is None else str(v).encode("utf-8"))
    for col in schema.numeric:
        v = values.get(col)
        feature[col].float_list.value.append(math.nan if v is None else float(v))
    feature[LABEL_ID].int64_list.value.append(int(label_id))
    feature[ROW].int64_list.value.append(int(row))
    feature[KEY].bytes_list.value.append(key.encode("ascii"))
    return example.SerializeToString(deterministic=True)


class SplitWriter:
    """Streams one split's records into ``ceil(total / shard_size)`` shards, in the order
    written. ``total`` is known before writing (prepare's first pass counted it), so each
    shard's name carries the count and no record is held in memory."""

    def __init__(self, out_dir: Path, split: str, total: int, shard_size: int) -> None:
        self.out_dir, self.split, self.total, self.shard_size = out_dir, split, total, shard_size
        self.count = max(1, -(-total // shard_size)) if total else 0
        self.paths: list[Path] = []
        self.written = 0
        self._file: Any = None
        out_dir.mkdir(parents=True, exist_ok=True)

    def write(self, data: bytes) -> None:
        if self.written >= self.total:
            raise DataError(f"prepare wrote more {self.split} rows than it counted ({self.total})")
        if self.written % self.shard_size == 0:
            self._next()
        self._file.write(tfrecords.frame(data))
        self.written += 1

    def _next(self) -> None:
        if self._file is not None:
            self._file.close()
        path = self.out_dir / shard_name(self.split, len(self.paths), self.count)
        self.paths.append(path)
        self._file = path.open("wb")

    def close(self) -> list[dict]:
        """Close the last shard; the shards' index entries (``shards.json``)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.written != self.total:
            raise DataError(
                f"prepare wrote {self.written} {self.split} rows but counted {self.total}: the "
                "source changed while it was read; rerun prepare"
            )
        return tfrecords.describe_shards(self.paths, self.total, self.shard_size)


# ------------------------------------------------------------------ reading


def shard_files(prepared: Path | str, split: str) -> list[Path]:
    """The split's shards after the integrity check (a one-line DataError otherwise)."""
    return tfrecords.verify_shards(Path(prepared), split)


def iter_records(path: Path) -> Iterator[bytes]:
    """The records of one TFRecord file (lengths checked; CRCs are TensorFlow's job and
    the shard's sha256, checked by :func:`shard_files`, covers them)."""
    with path.open("rb") as f:
        while header := f.read(12):
            if len(header) < 12:
                raise DataError(f"TFRecord shard {path} is truncated")
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            if len(data) != length or len(f.read(4)) != 4:
                raise DataError(f"TFRecord shard {path} is truncated")
            yield data


def read_frame(prepared: Path, split: str) -> pd.DataFrame:
    """The split's rows in file order: the raw input columns (numbers float with NaN for
    missing, strings; a missing string is "") and the label column (class names); the
    index is each row's line number in the source (``row``)."""
    import pandas as pd

    schema = Schema.load(Path(prepared))
    parse = example_type()()
    strings = (*schema.text, *schema.categorical, schema.label)
    cols: dict[str, list[Any]] = {c: [] for c in (*schema.inputs, schema.label)}
    rows: list[int] = []
    for path in shard_files(prepared, split):
        for data in iter_records(path):
            parse.ParseFromString(data)
            feature = parse.features.feature
            for c in strings:
                cols[c].append(feature[c].bytes_list.value[0].decode("utf-8"))
            for c in schema.numeric:
                cols[c].append(feature[c].float_list.value[0])
            rows.append(feature[ROW].int64_list.value[0])
    frame = pd.DataFrame(
        {c: np.asarray(v, dtype=np.float64) if c in schema.numeric else v for c, v in cols.items()},
        index=pd.Index(rows, name="row", dtype="int64"),
    )
    return frame


def label_ids(prepared: Path, split: str) -> np.ndarray:
    """The split's class ids in file order (int64), without TensorFlow."""
    parse = example_type()()
    out = []
    for path in shard_files(prepared, split):
        for data in iter_records(path):
            parse.ParseFromString(data)
            out.append(parse.features.feature[LABEL_ID].int64_list.value[0])
    return np.asarray(out, dtype=np.int64)


def dataset(
    prepared: Path,
    split: str,
    schema: Schema,
    *,
    batch_size: int,
    shuffle_buffer: int | None = None,
    seed: int = 0,
) -> tf.data.Dataset:
    """``(dict[column → tensor], label_id)`` batches of the split: strings tf.string and
    numbers float32 (NaN for missing), each of shape (batch,). File order unless
    ``shuffle_buffer``; shuffled, the order is fixed by ``seed`` (every epoch reshuffles,
    the same way on every run). Wrap the loop that consumes it in
    ``reprotrain.data.tfrecords.shard_errors(shard_files(...))`` for a readable error on a
    shard corrupted after the check."""
    import tensorflow as tf

    from reprotrain.tables.schema import feature_spec

    files = [str(p) for p in shard_files(prepared, split)]
    spec = feature_spec(schema)
    inputs = schema.inputs
    ds = tf.data.TFRecordDataset(files)
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    def parse(batch: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        parsed = tf.io.parse_example(batch, spec)
        return {c: parsed[c] for c in inputs}, parsed[LABEL_ID]

    ds = ds.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
