"""The tf.data pipeline: map functions eagerly and inside tf.data, the stage order (decode is
cached, augmentation is not), determinism, and metadata aligned with the manifest. The cache
and augmentation steps themselves: test_cache.py, test_augmentation.py."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from reprotrain.config import AugmentConfig, PipelineConfig
from reprotrain.data import pipeline
from reprotrain.paths import split_files
from tests.data.conftest import epoch_arrays, jpeg_bytes

SIZE = 32
NO_AUG = AugmentConfig(flip=False, rotation=0.0, zoom=0.0, brightness=0.0, contrast=0.0)


def test_decode_and_resize_eager_equals_in_dataset() -> None:
    data = jpeg_bytes()
    eager = pipeline.decode_and_resize(tf.constant(data), SIZE).numpy()
    ds = tf.data.Dataset.from_tensors(data).map(lambda b: pipeline.decode_and_resize(b, SIZE))
    graph = next(iter(ds)).numpy()
    assert eager.shape == (SIZE, SIZE, 3) and eager.dtype == np.float32
    assert eager.min() >= 0.0 and eager.max() <= 255.0 and eager.max() > 100  # raw 0..255
    np.testing.assert_allclose(eager, graph, atol=1e-4)


@pytest.mark.slow
def test_decoding_is_cached_and_augmentation_differs_between_epochs(
    prepared: Path, tmp_path: Path
) -> None:
    """The pipeline order, observed: after epoch 1 the shards are deleted, so epoch 2 can
    only come from the cache; its images still differ (augmentation runs after the cache)."""
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(prepared, copy)
    files = split_files(copy, "train")
    base = PipelineConfig(shuffle_buffer=1)  # no element shuffle: compare position by position
    plain = pipeline.make_dataset(files, base, False, image_size=SIZE, batch_size=8, seed=1)
    reference, _ = epoch_arrays(plain)
    augmented = pipeline.make_dataset(files, base, True, image_size=SIZE, batch_size=8, seed=1)
    x1, y1 = epoch_arrays(augmented)
    for f in files:
        f.unlink()  # from now on, nothing can be decoded from disk
    x2, y2 = epoch_arrays(augmented)
    assert x1.shape == x2.shape == (len(y1), SIZE, SIZE, 3)
    assert sorted(y1.tolist()) == sorted(y2.tolist())
    assert np.abs(x1 - x2).mean() > 1.0  # a fresh augmentation each epoch
    assert np.abs(x1 - reference[: len(x1)]).mean() > 1.0  # and not the raw images
    no_aug = dataclasses.replace(base, augment=NO_AUG)
    for f, g in zip(split_files(prepared, "train"), files, strict=True):
        shutil.copy(f, g)
    still = pipeline.make_dataset(files, no_aug, True, image_size=SIZE, batch_size=8, seed=1)
    e1, _ = epoch_arrays(still)
    for f in files:
        f.unlink()
    e2, _ = epoch_arrays(still)
    np.testing.assert_array_equal(e1, e2)  # cached decode, no augmentation: identical


def test_training_order_is_seeded_and_reshuffled_each_epoch(prepared: Path) -> None:
    files = split_files(prepared, "train")
    cfg = PipelineConfig(augment=NO_AUG)

    def build(seed: int) -> tf.data.Dataset:
        return pipeline.make_dataset(files, cfg, True, image_size=SIZE, batch_size=8, seed=seed)

    a, b = build(5), build(5)
    ya1, ya2 = epoch_arrays(a)[1], epoch_arrays(a)[1]
    assert (ya1 == epoch_arrays(b)[1]).all()  # same seed, same order
    assert not (ya1 == ya2).all()  # reshuffled for the next epoch
    assert not (ya1 == epoch_arrays(build(6))[1]).all()


def test_evaluation_reads_in_manifest_order_with_metadata(prepared: Path) -> None:
    files = split_files(prepared, "val")
    ds = pipeline.make_dataset(
        files, PipelineConfig(), False, image_size=SIZE, batch_size=5, seed=0, with_metadata=True
    )
    paths, labels = [], []
    for x, y, meta in ds:
        assert x.dtype == tf.float32 and y.dtype == tf.int32 and x.shape[1:] == (SIZE, SIZE, 3)
        paths += [p.decode() for p in meta["path"].numpy()]
        labels += y.numpy().tolist()
    with (prepared / "manifest.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "val"]
    assert paths == [r["path"] for r in rows]
    assert labels == [int(r["label_index"]) for r in rows]


def test_labels_reader_and_errors(prepared: Path, tmp_path: Path) -> None:
    assert pipeline.read_labels(prepared) == ["cats", "dogs"]
    from reprotrain.errors import DataError

    with pytest.raises(DataError, match="run the prepare stage first"):
        pipeline.read_labels(tmp_path)
    with pytest.raises(DataError, match="no TFRecord shards"):
        pipeline.make_dataset([], PipelineConfig(), True, image_size=SIZE, batch_size=2, seed=0)
