"""Corrupt prepared data, for real: a truncated and a bit-flipped TFRecord shard, a stray
shard, a lost shards.json. Each is one clear DataError naming the shard and the fix, never a
raw DataLossError and never training on fewer images."""

from __future__ import annotations

from pathlib import Path

import pytest

from reprotrain.config import PipelineConfig, PrepareConfig
from reprotrain.data import pipeline, tfrecords
from reprotrain.data.fetch import fetch
from reprotrain.data.prepare import prepare
from reprotrain.errors import DataError
from tests.conftest import make_class_tree


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    src = make_class_tree(tmp_path / "src", {"cats": 20, "dogs": 20}, size=40)
    fetch(str(src), tmp_path / "raw")
    prepare(tmp_path / "raw", tmp_path / "prepared", PrepareConfig(shard_size=8, max_side=None), 1)
    return tmp_path / "prepared"


def _read_all(files: list[Path]) -> int:
    ds = pipeline.make_dataset(
        files, PipelineConfig(cache="none"), True, image_size=32, batch_size=4, seed=0
    )
    n = 0
    with tfrecords.shard_errors(files):
        for _x, y in ds:
            n += int(y.shape[0])
    return n


def test_intact_shards_verify_and_read_completely(prepared: Path) -> None:
    files = tfrecords.verify_shards(prepared, "train")
    assert [f.name for f in files] == sorted(f.name for f in prepared.glob("train-*.tfrecord"))
    index = tfrecords.read_shard_index(prepared)
    assert _read_all(files) == sum(e["records"] for e in index["train"]) == 28


def test_truncated_shard_is_named_with_the_fix(prepared: Path) -> None:
    files = tfrecords.verify_shards(prepared, "train")
    shard = files[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        tfrecords.verify_shards(prepared, "train")
    message = str(err.value)
    assert str(shard) in message and "truncated" in message
    assert "dvc checkout" in message and "dvc repro -f prepare" in message
    # Read without the check (the lead's stages verify first): still a named DataError.
    with pytest.raises(DataError, match=rf"corrupt TFRecord shard: {shard}.*dvc checkout") as e2:
        _read_all(files)
    assert "DataLossError" in repr(e2.value.__cause__)


def test_bit_flipped_shard_is_named_with_the_fix(prepared: Path) -> None:
    files = tfrecords.verify_shards(prepared, "val")
    shard = files[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{shard} is corrupt: its sha256 differs.*dvc checkout"):
        tfrecords.verify_shards(prepared, "val")
    with pytest.raises(DataError, match=rf"corrupt TFRecord shard: {shard} \(.*corrupted record"):
        _read_all(files)


def test_missing_stray_and_unrecorded_shards(prepared: Path) -> None:
    files = tfrecords.verify_shards(prepared, "test")
    stray = prepared / "test-00009-of-00010.tfrecord"
    stray.write_bytes(files[0].read_bytes())
    with pytest.raises(DataError, match=r"test-00009-of-00010\.tfrecord were not written by the"):
        tfrecords.verify_shards(prepared, "test")
    stray.unlink()
    files[0].unlink()
    with pytest.raises(DataError, match=rf"shard {files[0]} is missing; restore it"):
        tfrecords.verify_shards(prepared, "test")
    (prepared / "shards.json").unlink()
    with pytest.raises(DataError, match=r"shards\.json not found.*dvc checkout"):
        tfrecords.verify_shards(prepared, "train")
