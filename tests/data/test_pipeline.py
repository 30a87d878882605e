"""The tf.data pipeline: map functions eagerly and inside tf.data, the stage order (decode is
cached, augmentation is not), determinism, and metadata aligned with the manifest."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from reprotrain.config import AugmentConfig, PipelineConfig, PrepareConfig
from reprotrain.data import augmentation, cache, pipeline
from reprotrain.data.fetch import fetch
from reprotrain.data.prepare import prepare
from reprotrain.paths import split_files
from tests.conftest import make_class_tree, prepared_tree

SIZE = 32
NO_AUG = AugmentConfig(flip=False, rotation=0.0, zoom=0.0, brightness=0.0, contrast=0.0)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("pipeline")
    return prepared_tree(tmp, {"cats": 24, "dogs": 24}, shard_size=8)


def _jpeg(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    return tf.io.encode_jpeg(arr, quality=95).numpy()


def _epoch(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def test_decode_and_resize_eager_equals_in_dataset() -> None:
    data = _jpeg()
    eager = pipeline.decode_and_resize(tf.constant(data), SIZE).numpy()
    ds = tf.data.Dataset.from_tensors(data).map(lambda b: pipeline.decode_and_resize(b, SIZE))
    graph = next(iter(ds)).numpy()
    assert eager.shape == (SIZE, SIZE, 3) and eager.dtype == np.float32
    assert eager.min() >= 0.0 and eager.max() <= 255.0 and eager.max() > 100  # raw 0..255
    np.testing.assert_allclose(eager, graph, atol=1e-4)


def _batch(n: int = 4) -> tf.Tensor:
    return tf.stack([pipeline.decode_and_resize(tf.constant(_jpeg(i)), SIZE) for i in range(n)])


@pytest.mark.slow
def test_augment_batch_is_seeded_eager_equals_graph_and_identity_when_off() -> None:
    images = _batch()
    cfg = AugmentConfig(flip=True, rotation=0.1, zoom=0.2, brightness=0.2, contrast=0.3)
    seed = tf.constant([3, 4], dtype=tf.int64)
    a = augmentation.augment_batch(images, cfg, seed).numpy()
    np.testing.assert_array_equal(a, augmentation.augment_batch(images, cfg, seed).numpy())
    fn = tf.function(lambda im, s: augmentation.augment_batch(im, cfg, s))
    np.testing.assert_allclose(a, fn(images, seed).numpy(), atol=1e-3)
    b = augmentation.augment_batch(images, cfg, tf.constant([5, 6], dtype=tf.int64)).numpy()
    assert np.abs(a - b).mean() > 1.0  # another seed, another augmentation
    assert a.shape == images.shape and a.dtype == np.float32 and a.min() >= 0 and a.max() <= 255
    pixels = tf.cast(tf.round(images), tf.uint8)  # what the cache holds
    same = augmentation.augment_batch(pixels, NO_AUG, seed).numpy()
    np.testing.assert_array_equal(same, pixels.numpy().astype(np.float32))  # off: identity
    # A partial last batch works too (the parameters are drawn for the batch's own size).
    assert augmentation.augment_batch(images[:1], cfg, seed).shape == (1, SIZE, SIZE, 3)


def test_augment_batch_draws_parameters_per_image() -> None:
    """Identical images in one batch come out differently: the randomness is per image,
    not one draw for the whole batch."""
    one = pipeline.decode_and_resize(tf.constant(_jpeg(2)), SIZE)
    images = tf.stack([one] * 8)
    for cfg in (
        AugmentConfig(flip=False, rotation=0.1, zoom=0.0, brightness=0.0, contrast=0.0),
        AugmentConfig(flip=False, rotation=0.0, zoom=0.0, brightness=0.3, contrast=0.0),
    ):
        out = augmentation.augment_batch(images, cfg, tf.constant([1, 2], dtype=tf.int64)).numpy()
        assert len({o.tobytes() for o in out}) == 8
    # Flip alone: each image is either itself or its exact mirror, and both occur.
    flip_only = dataclasses.replace(NO_AUG, flip=True)
    out = augmentation.augment_batch(images, flip_only, tf.constant([7, 8], dtype=tf.int64)).numpy()
    mirrored = [np.array_equal(o, one.numpy()[:, ::-1]) for o in out]
    assert all(m or np.array_equal(o, one.numpy()) for m, o in zip(mirrored, out, strict=True))
    assert 0 < sum(mirrored) < 8


def test_fused_resampling_equals_tensorflows_projective_transform() -> None:
    """The XLA-fused bilinear/reflect resampling samples exactly what
    ``ImageProjectiveTransformV3`` (BILINEAR, REFLECT) does with the same maps, borders
    included; at angle 0 and scale 1 the flip is the exact mirror."""
    images = tf.cast(tf.round(_batch(6)), tf.uint8)
    flip = tf.constant([True, False, True, False, True, False])
    angle = tf.constant([0.0, 0.0, 0.3, -0.3, 1.2, 3.0])
    scale = tf.constant([1.0, 1.0, 0.9, 1.1, 0.5, 0.2])  # far outside: several reflections
    transforms = augmentation.affine_transforms(tf.constant([SIZE, SIZE]), flip, angle, scale)
    ones, zeros = tf.ones([6, 1, 1, 1]), tf.zeros([6, 1, 1, 1])
    ours = augmentation._resample_adjust(images, transforms, ones, zeros).numpy()
    reference = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32),
        transforms=transforms,
        output_shape=[SIZE, SIZE],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    ).numpy()
    np.testing.assert_allclose(ours, reference, atol=0.05)
    np.testing.assert_allclose(ours[0], images.numpy()[0, :, ::-1], atol=1e-3)
    np.testing.assert_allclose(ours[1], images.numpy()[1], atol=1e-3)


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
    reference, _ = _epoch(plain)
    augmented = pipeline.make_dataset(files, base, True, image_size=SIZE, batch_size=8, seed=1)
    x1, y1 = _epoch(augmented)
    for f in files:
        f.unlink()  # from now on, nothing can be decoded from disk
    x2, y2 = _epoch(augmented)
    assert x1.shape == x2.shape == (len(y1), SIZE, SIZE, 3)
    assert sorted(y1.tolist()) == sorted(y2.tolist())
    assert np.abs(x1 - x2).mean() > 1.0  # a fresh augmentation each epoch
    assert np.abs(x1 - reference[: len(x1)]).mean() > 1.0  # and not the raw images
    no_aug = dataclasses.replace(base, augment=NO_AUG)
    for f, g in zip(split_files(prepared, "train"), files, strict=True):
        shutil.copy(f, g)
    still = pipeline.make_dataset(files, no_aug, True, image_size=SIZE, batch_size=8, seed=1)
    e1, _ = _epoch(still)
    for f in files:
        f.unlink()
    e2, _ = _epoch(still)
    np.testing.assert_array_equal(e1, e2)  # cached decode, no augmentation: identical


def test_training_order_is_seeded_and_reshuffled_each_epoch(prepared: Path) -> None:
    files = split_files(prepared, "train")
    cfg = PipelineConfig(augment=NO_AUG)

    def build(seed: int) -> tf.data.Dataset:
        return pipeline.make_dataset(files, cfg, True, image_size=SIZE, batch_size=8, seed=seed)

    a, b = build(5), build(5)
    ya1, ya2 = _epoch(a)[1], _epoch(a)[1]
    assert (ya1 == _epoch(b)[1]).all()  # same seed, same order
    assert not (ya1 == ya2).all()  # reshuffled for the next epoch
    assert not (ya1 == _epoch(build(6))[1]).all()


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


def _paths(ds: tf.data.Dataset) -> list[str]:
    return [p.decode() for _, _, meta in ds for p in meta["path"].numpy()]


@pytest.mark.slow
def test_cache_files_are_per_split_and_keyed_by_the_data(prepared: Path, tmp_path: Path) -> None:
    """One `pipeline.cache` prefix for train and val: each reads its own images, and a cache
    written before the data changed is never read after it."""
    import shutil

    copy = tmp_path / "prepared"
    shutil.copytree(prepared, copy)
    cfg = PipelineConfig(cache=str(tmp_path / "cache" / "tfdata"))

    def build(split: str, root: Path = copy) -> tf.data.Dataset:
        files = split_files(root, split)
        return pipeline.make_dataset(
            files, cfg, False, image_size=SIZE, batch_size=8, seed=0, with_metadata=True
        )

    train, val = _paths(build("train")), _paths(build("val"))  # both written to the cache
    assert _paths(build("val")) == val  # read back from the cache
    assert not set(train) & set(val)
    with (copy / "manifest.csv").open() as f:
        assert val == [r["path"] for r in csv.DictReader(f) if r["split"] == "val"]
    names = {p.name.split(".")[0].split("_")[0] for p in (tmp_path / "cache").iterdir()}
    assert len(names) == 2 and all(
        n.startswith(("tfdata-train-32px-", "tfdata-val-32px-")) for n in names
    )
    # New data under the same shard names (prepare reran): a new key, not the stale cache.
    files = split_files(copy, "val")
    key_before = cache.cache_path(cfg.cache, files, SIZE, True)
    other = tmp_path / "other"
    src = make_class_tree(tmp_path / "src2", {"cats": 24, "dogs": 24}, size=40, seed=5)
    fetch(str(src), tmp_path / "raw2")
    prepare(tmp_path / "raw2", other, PrepareConfig(shard_size=8, max_side=None), 42)
    for f in files:
        f.unlink()
    for f in split_files(other, "val"):
        shutil.copy(f, copy / f.name)
    shutil.copy(other / "shards.json", copy / "shards.json")
    assert cache.cache_path(cfg.cache, split_files(copy, "val"), SIZE, True) != key_before
    assert _paths(build("val")) == _paths(build("val", other))  # the new images
    new_val = split_files(copy, "val")  # another image size is another cache too
    assert cache.cache_path(cfg.cache, new_val, 64, True) != (
        cache.cache_path(cfg.cache, new_val, SIZE, True)
    )


def test_choose_cache_memory_when_the_split_fits_else_a_file() -> None:
    fits = cache.choose_cache("auto", 1000, 224, 2048)  # 1000 × 224² × 3 ≈ 144 MB
    assert fits.kind == "memory" and "fit pipeline.cache_memory_mb=2048" in fits.reason
    big = cache.choose_cache("auto", 100_000, 224, 2048)  # ≈ 14 GB
    assert big.kind == "file" and big.prefix == str(cache.AUTO_CACHE_PREFIX)
    assert "exceed pipeline.cache_memory_mb=2048" in big.reason and "100000 images" in big.reason
    edge = cache.cache_bytes(1000, 224) / 2**20
    assert cache.choose_cache("auto", 1000, 224, int(edge)).kind == "file"
    assert cache.choose_cache("auto", 1000, 224, int(edge) + 1).kind == "memory"
    assert cache.choose_cache("auto", None, 224, 2048).kind == "file"  # unknown: safe
    assert cache.choose_cache("auto", 10, 32, 0).kind == "file"
    assert cache.choose_cache("memory", 10**9, 224, 0).kind == "memory"  # explicit wins
    assert cache.choose_cache("none", 1, 32, 2048).kind == "none"
    explicit = cache.choose_cache("/tmp/c/tfdata", 1, 32, 2048)
    assert explicit.kind == "file" and explicit.prefix == "/tmp/c/tfdata"


def test_cache_auto_over_budget_writes_a_keyed_cache_file(
    prepared: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A budget of 0 MB forces the file cache: it lands under .reprotrain/tfdata-cache/ of
    the working directory, keyed like an explicit prefix, and serves epoch 2 after the shards
    are gone. The choice and its reason are logged."""
    import logging
    import shutil

    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "prepared"
    shutil.copytree(prepared, copy)
    files = split_files(copy, "val")
    assert cache.count_records(files) == sum(
        1 for _ in tf.data.TFRecordDataset([str(f) for f in files])
    )
    cfg = PipelineConfig(cache="auto", cache_memory_mb=0)
    with caplog.at_level(logging.INFO, logger="reprotrain.data.cache"):
        ds = pipeline.make_dataset(files, cfg, False, image_size=SIZE, batch_size=8, seed=0)
    assert "tf.data cache for val: file" in caplog.text and "exceed" in caplog.text
    first, labels = _epoch(ds)
    written = list((tmp_path / ".reprotrain" / "tfdata-cache").iterdir())
    key = cache.cache_path(cache.AUTO_CACHE_PREFIX, files, SIZE, False).name
    assert written and all(p.name.startswith(key) for p in written)
    for f in files:
        f.unlink()
    again, labels2 = _epoch(ds)  # only the cache file can serve this
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(labels, labels2)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="reprotrain.data.cache"):
        pipeline.make_dataset(
            split_files(prepared, "val"),
            PipelineConfig(),
            False,
            image_size=SIZE,
            batch_size=8,
            seed=0,
        )
    assert "tf.data cache for val: memory" in caplog.text and "fit" in caplog.text


CACHE_USER = r"""
import hashlib, os, sys
from pathlib import Path
from reprotrain.config import PipelineConfig
from reprotrain.data import pipeline
from reprotrain.paths import split_files

prepared, prefix, pause = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "pause"
files = split_files(prepared, "train")
cfg = PipelineConfig(cache=prefix)
ds = pipeline.make_dataset(files, cfg, False, image_size=32, batch_size=2, seed=0)
digest = hashlib.sha256()
for x, _ in ds:
    digest.update(x.numpy().tobytes())
    if pause and any(n.endswith(".lockfile") for n in os.listdir(Path(prefix).parent)):
        pause = False
        print("writing", flush=True)  # mid-epoch, the cache unfinished: wait for the test
        sys.stdin.buffer.read(1)
print("pixels", digest.hexdigest(), flush=True)
"""


def _pixels(ds: tf.data.Dataset) -> str:
    digest = hashlib.sha256()
    for x, _ in ds:
        digest.update(x.numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.slow
def test_parallel_experiments_never_delete_each_others_live_cache(
    prepared: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two real processes in two workdirs, one absolute `pipeline.cache` prefix, the same
    data (`dvc queue start -j 2`): while a subprocess writes the cache, this process reads
    the shards uncached and touches none of its files; the writer then finishes a complete
    cache, which is read from then on, and every read saw the pixels of an uncached one."""
    import logging
    import subprocess
    import sys

    from tests.conftest import REPO, subprocess_env

    prefix = tmp_path / "shared-cache" / "tfdata"
    prefix.parent.mkdir()
    (tmp_path / "exp1").mkdir()
    (tmp_path / "exp2").mkdir()
    files = split_files(prepared, "train")
    cfg = PipelineConfig(cache=str(prefix))
    writer = subprocess.Popen(
        [sys.executable, "-c", CACHE_USER, str(prepared), str(prefix), "pause"],
        cwd=tmp_path / "exp1",
        env=subprocess_env(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdin is not None
        assert writer.stdout.readline() == "writing\n", writer.poll()
        live = sorted(p.name for p in prefix.parent.iterdir())
        assert any(n.endswith(".lockfile") for n in live)
        monkeypatch.chdir(tmp_path / "exp2")  # the other experiment's workdir
        with caplog.at_level(logging.INFO, logger="reprotrain.data.cache"):
            ds = pipeline.make_dataset(files, cfg, False, image_size=SIZE, batch_size=2, seed=0)
            mine = _pixels(ds)
        assert "being written by another live process" in caplog.text
        assert "reading the shards uncached" in caplog.text
        still = sorted(p.name for p in prefix.parent.iterdir())
        assert set(live) <= set(still), f"this process deleted {set(live) - set(still)}"
        writer.stdin.write("c")
        writer.stdin.flush()
        out, _ = writer.communicate(timeout=300)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == 0
    key = cache.cache_path(prefix, files, SIZE, False)
    assert Path(f"{key}.index").is_file()  # the writer's cache completed
    assert not list(prefix.parent.glob("*.lockfile"))
    plain = pipeline.make_dataset(
        files, PipelineConfig(cache="none"), False, image_size=SIZE, batch_size=2, seed=0
    )
    expected = _pixels(plain)
    assert out.endswith(f"pixels {expected}\n") and mine == expected
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="reprotrain.data.cache"):  # now complete
        cached = pipeline.make_dataset(files, cfg, False, image_size=SIZE, batch_size=2, seed=0)
        assert _pixels(cached) == expected
    assert f"file {key}" in caplog.text and "another live process" not in caplog.text
