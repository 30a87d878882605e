"""The tf.data cache (``data.cache``): cache files per split and keyed by the data, memory
or file by the budget, and parallel experiments that never delete each other's live cache."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from reprotrain.config import PipelineConfig, PrepareConfig
from reprotrain.data import cache, pipeline
from reprotrain.data.fetch import fetch
from reprotrain.data.prepare import prepare
from reprotrain.paths import split_files
from tests.conftest import make_class_tree
from tests.data.conftest import epoch_arrays

SIZE = 32


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
    first, labels = epoch_arrays(ds)
    written = list((tmp_path / ".reprotrain" / "tfdata-cache").iterdir())
    key = cache.cache_path(cache.AUTO_CACHE_PREFIX, files, SIZE, False).name
    assert written and all(p.name.startswith(key) for p in written)
    for f in files:
        f.unlink()
    again, labels2 = epoch_arrays(ds)  # only the cache file can serve this
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
