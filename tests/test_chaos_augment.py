"""Chaos for the input pipeline's file cache (``pipeline.cache: auto`` over budget, or a
prefix): a process SIGKILLed while writing the cache must not break the next run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reprotrain.config import PipelineConfig, PrepareConfig
from reprotrain.data import pipeline
from reprotrain.data.fetch import fetch
from reprotrain.data.prepare import prepare
from reprotrain.paths import split_files
from tests.conftest import make_class_tree, subprocess_env

pytestmark = pytest.mark.slow

SIZE = 32

WRITER = """
import os, signal, sys
from reprotrain.config import PipelineConfig
from reprotrain.data import pipeline
from reprotrain.paths import split_files
from pathlib import Path

files = split_files(Path(sys.argv[1]), "train")
cfg = PipelineConfig(cache="auto", cache_memory_mb=0)  # forces the file cache
ds = pipeline.make_dataset(files, cfg, False, image_size=32, batch_size=2, seed=0)
for _ in ds:  # stop as soon as the cache writer is mid-epoch (lockfile on disk)
    names = sorted(os.listdir(".reprotrain/tfdata-cache"))
    if any(n.endswith(".lockfile") for n in names):
        print("\\n".join(names), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
print("epoch finished before a lockfile was seen", flush=True)
"""


def test_a_writer_killed_mid_epoch_leaves_no_poisoned_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_class_tree(tmp_path / "src", {"cats": 48, "dogs": 48}, size=40)
    fetch(str(src), tmp_path / "raw")
    prepared = tmp_path / "prepared"
    prepare(tmp_path / "raw", prepared, PrepareConfig(shard_size=4, max_side=None), 42)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", WRITER, str(prepared)],
        cwd=work,
        env=subprocess_env(TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert ".lockfile" in proc.stdout  # the kill really left a writer's lock behind
    files = split_files(prepared, "train")
    cfg = PipelineConfig(cache="auto", cache_memory_mb=0)
    key = pipeline.cache_path(work / pipeline.AUTO_CACHE_PREFIX, files, SIZE, False)
    removed = pipeline.clear_unfinished_cache(key)
    assert any(p.name.endswith(".lockfile") for p in removed)
    # Rerun in the same folder, as the next `dvc repro` would: reads fine, same pixels as an
    # uncached read, and the finished cache (index written) is kept from now on.
    monkeypatch.chdir(work)
    for leftover in removed:  # put the dead writer's files back: make_dataset cleans them
        leftover.touch()
    ds = pipeline.make_dataset(files, cfg, False, image_size=SIZE, batch_size=8, seed=0)
    cached = np.concatenate([x.numpy() for x, _ in ds])
    plain = pipeline.make_dataset(
        files, PipelineConfig(cache="none"), False, image_size=SIZE, batch_size=8, seed=0
    )
    np.testing.assert_array_equal(cached, np.concatenate([x.numpy() for x, _ in plain]))
    assert Path(f"{key}.index").is_file()
    assert pipeline.clear_unfinished_cache(key) == []  # a complete cache is never touched
