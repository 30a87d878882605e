"""Write prepared examples as sharded TFRecord files (format: ``reprotrain.data.schema``).

Why shards: parallel interleaved reads in tf.data need several files, and a shard count in
each name (``-of-NNNNN``) makes a missing shard visible. Why byte-determinism: DVC hashes the
output; identical input must give identical files so that downstream stages stay cached.
"""

from __future__ import annotations

import functools
import json
import logging
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reprotrain import fsio
from reprotrain.data import schema
from reprotrain.errors import DataError

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


# --------------------------------------------------------------------------- writing
# Why not tf.train.Example + tf.io.TFRecordWriter: prepare would import TensorFlow (≈ 5 s
# and ≈ 0.5 GB of memory per run, measured) only to frame bytes. Both formats are small and
# stable: tf.train.Example is serialised by protobuf from the same schema as TensorFlow's
# (tensorflow/core/example/{example,feature}.proto), and a TFRecord is length, masked
# CRC-32C of the length, data, masked CRC-32C of the data (google-crc32c computes the CRC).
# tests/data/test_tfrecords.py checks the shards byte for byte against TensorFlow's writer.

_MASK_DELTA = 0xA282EAD8


@functools.cache
def _example_type() -> Any:
    """The ``tensorflow.Example`` message class, built in a private descriptor pool (so it
    never collides with TensorFlow's own when both are loaded)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="reprotrain/example.proto", package="tensorflow", syntax="proto3"
    )

    def field(
        message: Any,
        name: str,
        number: int,
        kind: int,
        *,
        repeated: bool = False,
        ref: str | None = None,
        oneof: int | None = None,
    ) -> None:
        added = message.field.add(name=name, number=number, type=kind)
        added.label = fdp.LABEL_REPEATED if repeated else fdp.LABEL_OPTIONAL
        if ref is not None:
            added.type_name = f".tensorflow.{ref}"
        if oneof is not None:
            added.oneof_index = oneof

    msg = fdp.TYPE_MESSAGE
    for name, kind in (("BytesList", fdp.TYPE_BYTES), ("Int64List", fdp.TYPE_INT64)):
        field(proto.message_type.add(name=name), "value", 1, kind, repeated=True)
    feature = proto.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    field(feature, "bytes_list", 1, msg, ref="BytesList", oneof=0)
    field(feature, "int64_list", 3, msg, ref="Int64List", oneof=0)  # 2 (float_list): unused
    features = proto.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    field(entry, "key", 1, fdp.TYPE_STRING)
    field(entry, "value", 2, msg, ref="Feature")
    field(features, "feature", 1, msg, repeated=True, ref="Features.FeatureEntry")
    field(proto.message_type.add(name="Example"), "features", 1, msg, ref="Features")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def serialize(record: Record) -> bytes:
    """A ``tf.train.Example`` as bytes, keyed by the schema's feature names."""
    example = _example_type()()
    feature = example.features.feature
    for key, value in (
        (schema.IMAGE, record.jpeg),
        (schema.LABEL_NAME, record.label_name.encode("utf-8")),
        (schema.SOURCE_PATH, record.source_path.encode("utf-8")),
        (schema.SHA256, record.sha256.encode("ascii")),
    ):
        feature[key].bytes_list.value.append(value)
    for key, number in (
        (schema.LABEL, record.label),
        (schema.HEIGHT, record.height),
        (schema.WIDTH, record.width),
    ):
        feature[key].int64_list.value.append(int(number))
    return example.SerializeToString(deterministic=True)


def _masked_crc32c(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One TFRecord: what ``tf.io.TFRecordWriter.write(data)`` appends to its file."""
    length = struct.pack("<Q", len(data))
    return b"".join(
        (
            length,
            struct.pack("<I", _masked_crc32c(length)),
            data,
            struct.pack("<I", _masked_crc32c(data)),
        )
    )


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
    out_dir.mkdir(parents=True, exist_ok=True)
    count = max(1, -(-len(records) // shard_size)) if records else 0
    paths: list[Path] = []
    for index in range(count):
        path = out_dir / schema.shard_name(split, index, count)
        chunk = records[index * shard_size : (index + 1) * shard_size]
        with path.open("wb") as out:
            for record in chunk:
                out.write(frame(serialize(record)))
                if on_written:
                    on_written(1)
        paths.append(path)
    log.debug("wrote %d %s records in %d shard(s)", len(records), split, count)
    return paths


# --------------------------------------------------------------------------- shard integrity
# Why: a truncated or bit-flipped shard (interrupted copy, bad disk, a hand-edited cache)
# otherwise surfaces as a raw ``DataLossError`` deep inside ``fit``, or, with
# ``ignore_errors``, as silently training on fewer images. prepare records each shard's size,
# record count and sha256 in ``shards.json``; readers check them first (sizes + one streamed
# hash per shard: seconds even for gigabytes), and iteration errors get the same message.

SHARD_INDEX = "shards.json"


def _fix(prepared_dir: Path) -> str:
    return (
        f"restore it with `dvc checkout {prepared_dir}` (or `dvc pull`), or rebuild it with "
        "`dvc repro -f prepare`"
    )


def describe_shards(paths: Sequence[Path], records: int, shard_size: int) -> list[dict]:
    """``[{file, bytes, records, sha256}]`` for shards written by :func:`write_split`."""
    out = []
    for i, path in enumerate(paths):
        n = min(shard_size, records - i * shard_size)
        out.append(
            {
                "file": path.name,
                "bytes": path.stat().st_size,
                "records": n,
                "sha256": fsio.file_sha256(path),
            }
        )
    return out


def write_shard_index(out_dir: Path, index: dict[str, list[dict]]) -> Path:
    """``shards.json``: split → the shards' identity (see :func:`verify_shards`)."""
    return fsio.atomic_write_json(Path(out_dir) / SHARD_INDEX, index)


def read_shard_index(prepared_dir: Path | str) -> dict[str, list[dict]]:
    """The recorded shards of every split (a :class:`DataError` if missing or unreadable)."""
    prepared_dir = Path(prepared_dir)
    path = prepared_dir / SHARD_INDEX
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"{path} not found: {prepared_dir} is incomplete or from an older prepare; "
            f"{_fix(prepared_dir)}"
        ) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); {_fix(prepared_dir)}") from exc
    if not isinstance(index, dict):
        raise DataError(f"{path}: expected a JSON object of splits; {_fix(prepared_dir)}")
    return index


def verify_shards(prepared_dir: Path | str, split: str) -> list[Path]:
    """The shard files of ``split``, in order, after checking them against ``shards.json``.

    Checks that each recorded shard exists with its recorded size and sha256, and that no
    unrecorded shard of the split lies beside them. Raises :class:`DataError` naming the
    shard and the fix (``dvc checkout`` / rerun prepare).
    """
    prepared_dir = Path(prepared_dir)
    index = read_shard_index(prepared_dir)
    if split not in index:
        raise DataError(
            f"{prepared_dir / SHARD_INDEX} has no {split!r} split; {_fix(prepared_dir)}"
        )
    files = []
    for entry in index[split]:
        path = prepared_dir / entry["file"]
        if not path.is_file():
            raise DataError(f"TFRecord shard {path} is missing; {_fix(prepared_dir)}")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise DataError(
                f"TFRecord shard {path} is corrupt: {size} bytes, prepare wrote "
                f"{entry['bytes']} (truncated or overwritten); {_fix(prepared_dir)}"
            )
        if fsio.file_sha256(path) != entry["sha256"]:
            raise DataError(
                f"TFRecord shard {path} is corrupt: its sha256 differs from the one prepare "
                f"recorded (changed bytes); {_fix(prepared_dir)}"
            )
        files.append(path)
    recorded = {p.name for p in files}
    extra = sorted(
        p.name for p in prepared_dir.glob(f"{split}-*-of-*.tfrecord") if p.name not in recorded
    )
    if extra:
        raise DataError(
            f"{prepared_dir}: shard(s) {', '.join(extra)} were not written by the last prepare "
            f"(left from another run?); {_fix(prepared_dir)}"
        )
    return files


def find_corrupt_shards(files: Sequence[Path | str]) -> list[tuple[str, str]]:
    """Read every record of each file; ``[(file, TensorFlow's reason)]`` for those that fail."""
    import tensorflow as tf

    bad = []
    for f in files:
        try:
            for _ in tf.data.TFRecordDataset(str(f)):
                pass
        except (tf.errors.DataLossError, tf.errors.NotFoundError) as exc:
            bad.append((str(f), (exc.message or type(exc).__name__).splitlines()[0]))
    return bad


@contextmanager
def shard_errors(files: Sequence[Path | str]) -> Iterator[None]:
    """Turn a ``DataLossError`` while iterating ``files`` into a :class:`DataError` naming the
    corrupt shard(s) and the fix. Wrap the loop that consumes the dataset (``fit``,
    ``predict``)."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.DataLossError as exc:
        bad = find_corrupt_shards(files)
        where = "; ".join(f"{f} ({why})" for f, why in bad) or ", ".join(map(str, files))
        prepared = Path(bad[0][0] if bad else files[0]).parent
        raise DataError(f"corrupt TFRecord shard: {where}; {_fix(prepared)}") from exc
