"""Faults lose nothing: real processes, real signals, real files and a real MLflow server.

One module for the failure guarantees the README's "Failure behaviour" section states:

- Two `dvc repro` in one project: the second refuses cleanly, the first is not disturbed.

  DVC guards the repository (``Unable to acquire lock``) and each stage's outputs and deps
  (``... is busy, it is being blocked by: (PID ...)``, its read/write locks in
  ``.dvc/tmp/rwlock``); the stages add no lock of their own.
- Corrupt prepared data, for real: a truncated and a bit-flipped TFRecord shard, a stray
  shard, a lost shards.json. Each is one clear DataError naming the shard and the fix, never a
  raw DataLossError and never training on fewer images.
- SIGKILL during training through real `dvc repro`: the rerun resumes from the last
  finished epoch and ends with the best weights over all epochs, before and after the kill,
  and with the TensorBoard logs of every run (each epoch once). finetune, train_head with
  and without the feature cache (the default path), and baseline.

  Real processes and real signals: `dvc repro` runs in its own process group and the whole
  group (dvc, the stage's python) gets SIGKILL at chosen moments: right after an epoch's
  state is committed, and at a random moment inside an epoch.
- Chaos for tracking: the MLflow server stops while `train_head` trains (real `mlflow server`,
  real `dvc repro`, real TensorFlow). The stage must end with one clear error line, and the
  rerun after the server is back must resume from the per-epoch backup and finish; the run the
  dead stage left RUNNING is then marked KILLED.
- A process SIGKILLed while writing the tf.data file cache (`pipeline.cache: auto` over its
  budget, or a path prefix) leaves a lockfile; the next run removes it and reads correct
  pixels, instead of failing on TensorFlow's "concurrent caching iterator" error.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest

from reprotrain.commands import ui
from reprotrain.config import PipelineConfig, PrepareConfig
from reprotrain.data import cache, pipeline, tfrecords
from reprotrain.data.fetch import fetch
from reprotrain.data.prepare import prepare
from reprotrain.errors import DataError
from reprotrain.paths import split_files
from tests.conftest import (
    TINY_PARAMS,
    deep_update,
    free_port,
    http_server,
    make_class_tree,
    make_project,
    run,
    subprocess_env,
)
from tests.models.tiny import tensorboard_steps, tiny_weights

# Real processes, signals, servers and pipelines: the whole module is slow.
pytestmark = pytest.mark.slow

# ---- Concurrency: two `dvc repro` in one project


@pytest.mark.slow
def test_second_repro_in_the_same_project_refuses_and_corrupts_nothing(tiny_project: Path) -> None:
    env = subprocess_env()
    # Up to train_head: long enough to overlap, without paying for the whole DAG.
    first = subprocess.Popen(
        ["dvc", "repro", "train_head"],
        cwd=tiny_project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Wait until the first one is inside a training stage (it holds DVC's repo lock).
        deadline = time.monotonic() + 300
        while not (tiny_project / "data" / "prepared" / "labels.json").is_file():
            assert first.poll() is None, first.stdout.read() if first.stdout else ""
            assert time.monotonic() < deadline, "the first dvc repro never reached prepare"
            time.sleep(0.2)
        second = run(["dvc", "repro"], tiny_project, env, check=False, timeout=300)
        out_first, _ = first.communicate(timeout=900)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode != 0
    text = second.stdout + second.stderr
    assert "Unable to acquire lock" in text or "is busy, it is being blocked by" in text, text
    assert "Traceback" not in text
    assert first.returncode == 0, out_first[-4000:]
    # Nothing corrupted: everything is up to date and the metrics are readable.
    status = run(["dvc", "status"], tiny_project, env).stdout
    for stage in ("prepare", "train_head"):  # fetch is `always_changed`
        assert f"{stage}:" not in status, status
    assert json.loads((tiny_project / "metrics" / "train_head.json").read_text())["epochs_run"]


# ---- Corrupt data: TFRecord shards


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


# ---- SIGKILL during training


EPOCHS = 6


def _project(tmp_path: Path, stage_params: dict) -> Path:
    data = make_class_tree(tmp_path / "images", {"cats": 24, "dogs": 24})
    # The real 0.35 ImageNet weights (2 MB) so that epochs differ; 32 px keeps it fast.
    params = deep_update(
        TINY_PARAMS,
        {"data": {"source": str(data), "sha256": None}, "model": {"weights": str(tiny_weights())}},
    )
    return make_project(tmp_path / "proj", deep_update(params, stage_params))


def _state(proj: Path, stage: str) -> dict | None:
    path = proj / ".reprotrain" / "checkpoints" / stage / "state.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@dataclass(frozen=True)
class Kill:
    """Where a killed run stopped: its committed epochs, and how long one of its epochs took
    (None when the run committed fewer than two epochs of its own)."""

    done: int
    epoch_seconds: float | None


def _repro_killed(
    proj: Path,
    env: dict,
    stage: str,
    done: int,
    log: Path,
    within: float = 0.0,
    epoch_seconds: float | None = None,
) -> Kill:
    """Start `dvc repro <stage>`; once ``stage`` has committed ``done`` epochs wait ``within``
    of an epoch, then SIGKILL the whole process group.

    The wait is a fraction of an epoch as this run timed it (else ``epoch_seconds``, else no
    wait): a fixed delay can outlast the remaining epochs on a fast machine, and then the run
    finishes unkilled."""
    before = (_state(proj, stage) or {}).get("done", 0)
    seen: dict[int, float] = {}  # epoch committed by this run -> when it was first seen
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["dvc", "repro", stage],
            cwd=proj,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the kill reaches every child
        )
        try:
            deadline = time.monotonic() + 900
            while (s := _state(proj, stage)) is None or s["done"] < done:
                if s is not None and s["done"] > before:
                    seen.setdefault(s["done"], time.monotonic())
                assert proc.poll() is None, f"dvc repro ended early:\n{log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, "timed out waiting for the epoch"
                time.sleep(0.05)
            seen.setdefault(s["done"], time.monotonic())
            time.sleep(within * (_epoch_seconds(seen) or epoch_seconds or 0.0))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    state = _state(proj, stage)
    assert state is not None, f"{stage} finished before the kill:\n{log.read_text()[-4000:]}"
    return Kill(state["done"], _epoch_seconds(seen))


def _epoch_seconds(seen: dict[int, float]) -> float | None:
    """Seconds per epoch from when each committed epoch was first seen (None below two)."""
    first, last = min(seen), max(seen)
    return (seen[last] - seen[first]) / (last - first) if last > first else None


def _val_accuracy(proj: Path, model_path: Path) -> float:
    """The saved model's accuracy on the prepared val split, measured here."""
    from reprotrain.config import load_params
    from reprotrain.data.pipeline import make_dataset
    from reprotrain.models.loading import load_model
    from reprotrain.paths import split_files

    params = load_params(proj / "params.yaml")
    size = params.model.image_size
    files = split_files(proj / "data" / "prepared", "val")
    ds = make_dataset(files, params.pipeline, False, image_size=size, batch_size=8, seed=0)
    model = load_model(model_path, image_size=size)
    probs = np.concatenate([model.predict_on_batch(x) for x, _ in ds])
    labels = np.concatenate([y.numpy() for _, y in ds])
    return float(np.mean(probs.argmax(axis=1) == labels))


def _check_kept_model(proj: Path, stage: str, model: str, epochs_at_kills: list[int]) -> None:
    history = json.loads((proj / "models" / f"{model}.history.json").read_text())
    metrics = json.loads((proj / "metrics" / f"{stage}.json").read_text())
    # One record per epoch, merged over all runs, none lost at a kill.
    assert history["epoch"] == list(range(1, len(history["epoch"]) + 1))
    assert len(history["epoch"]) >= max(epochs_at_kills)
    val_loss = history["val_loss"]
    best = 1 + int(np.argmin(val_loss))
    if metrics.get("start_val_loss", np.inf) <= val_loss[best - 1]:
        best = 0
    assert metrics["best_epoch"] == best, (metrics, val_loss)
    expected = metrics["start_val_accuracy"] if best == 0 else history["val_accuracy"][best - 1]
    assert metrics["val_accuracy"] == pytest.approx(expected, abs=1e-6)
    assert _val_accuracy(proj, proj / "models" / f"{model}.keras") == pytest.approx(
        expected, abs=1e-6
    )
    assert not (proj / ".reprotrain" / "checkpoints" / stage).exists()
    # The TensorBoard logs of the killed runs are kept: every epoch, each logged once.
    every = list(range(len(history["epoch"])))
    steps = tensorboard_steps(proj / "models" / "tensorboard" / stage)
    assert steps == {"train": every, "validation": every}, steps


def _finish(proj: Path, env: dict, stage: str, resumed_after: int) -> str:
    """The next `dvc repro` (up to ``stage``: the stages after it do not matter here)."""
    proc = run(["dvc", "repro", stage], proj, env, timeout=900)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "OSError" not in out, out[-4000:]
    assert f"resuming an interrupted run after epoch {resumed_after}/" in out, out[-4000:]
    return out


def test_sigkill_during_finetune_resumes_and_keeps_the_best(tmp_path: Path) -> None:
    proj = _project(
        tmp_path,
        {
            "finetune": {
                "epochs": EPOCHS,
                "learning_rate": 0.01,
                "early_stopping_patience": EPOCHS,
                "augment": False,
            }
        },
    )
    env = subprocess_env()
    rng = random.Random(1234)
    # 1: right after epoch 2's state is committed (at an epoch boundary, as in the issue).
    first = _repro_killed(proj, env, "finetune", 2, tmp_path / "repro1.log")
    # 2: at a random moment inside the epoch after the next one (the rerun resumes first),
    # timed by the first run's epochs.
    second = _repro_killed(
        proj,
        env,
        "finetune",
        first.done + 1,
        tmp_path / "repro2.log",
        within=rng.uniform(0.0, 0.8),
        epoch_seconds=first.epoch_seconds,
    )
    kills = [first.done, second.done]
    repro2 = (tmp_path / "repro2.log").read_text()
    assert f"resuming an interrupted run after epoch {kills[0]}/" in repro2, repro2[-4000:]
    assert "Traceback" not in repro2
    _finish(proj, env, "finetune", kills[1])
    _check_kept_model(proj, "finetune", "finetuned", kills)


def test_sigkill_during_train_head_without_feature_cache(tmp_path: Path) -> None:
    proj = _project(
        tmp_path,
        {"train_head": {"epochs": 4, "feature_cache": "off", "early_stopping_patience": 4}},
    )
    env = subprocess_env()
    done = _repro_killed(
        proj, env, "train_head", 2, tmp_path / "r1.log", within=random.Random(99).uniform(0.0, 0.8)
    ).done
    _finish(proj, env, "train_head", done)
    _check_kept_model(proj, "train_head", "head", [done])


def test_sigkill_with_the_feature_cache_and_during_baseline_resumes(tmp_path: Path) -> None:
    """The default path (train_head on cached features) and the baseline stage, in one
    project: each killed after a committed epoch resumes there and keeps the best."""
    proj = _project(
        tmp_path,
        {
            # Head epochs on cached features take milliseconds: enough of them that the
            # kill lands inside the training.
            "train_head": {
                "epochs": 30,
                "feature_cache": "on",
                "early_stopping_patience": 30,
                "reduce_lr_patience": 30,
            },
            "baseline": {"epochs": 4, "early_stopping_patience": 4},
        },
    )
    env = subprocess_env()
    done = _repro_killed(proj, env, "train_head", 2, tmp_path / "head.log").done
    assert done < 30, "train_head finished before the kill"
    out = _finish(proj, env, "train_head", done)
    assert "feature cache" in out
    _check_kept_model(proj, "train_head", "head", [done])
    assert json.loads((proj / "metrics" / "train_head.json").read_text())["feature_cache"]

    done = _repro_killed(
        proj, env, "baseline", 2, tmp_path / "base.log", within=random.Random(7).uniform(0.0, 0.5)
    ).done
    _finish(proj, env, "baseline", done)
    _check_kept_model(proj, "baseline", "baseline", [done])


# ---- The tracking server stops mid-training

TRAIN_HEAD_STATE = Path(".reprotrain/checkpoints/train_head/state.json")


def _epochs_recorded(proj: Path) -> int:
    """Finished epochs of train_head, from its atomic per-epoch state."""
    try:
        return int(json.loads((proj / TRAIN_HEAD_STATE).read_text())["done"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_server_stops_mid_training_then_rerun_resumes(tmp_path: Path) -> None:
    data = make_class_tree(tmp_path / "images", {"cats": 16, "dogs": 16})
    params = deep_update(
        TINY_PARAMS,
        {
            "data": {"source": str(data), "sha256": None},
            # Enough epochs that the server is down before training ends; no early stop.
            "train_head": {
                "epochs": 25,
                "feature_cache": "off",
                "early_stopping_patience": 100,
                "reduce_lr_patience": 100,
            },
        },
    )
    proj = make_project(tmp_path / "proj", params)
    port = free_port()
    server_uri = f"http://127.0.0.1:{port}"
    backend = f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}"
    (tmp_path / "server").mkdir()
    cmd = ui.server_command(backend, port=port)
    env = subprocess_env(
        MLFLOW_TRACKING_URI=server_uri,
        # MLflow retries a failing request for minutes by default; keep the test short.
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
        MLFLOW_HTTP_REQUEST_TIMEOUT="10",
    )
    health = server_uri + "/health"

    with http_server(cmd, tmp_path, ui.server_env(), health, timeout=180, what="mlflow server"):
        repro = subprocess.Popen(
            ["dvc", "repro", "train_head"],
            cwd=proj,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 600
        while _epochs_recorded(proj) < 1:
            if repro.poll() is not None:
                pytest.fail(f"dvc repro ended before an epoch:\n{repro.stdout.read()[-6000:]}")
            assert time.monotonic() < deadline, "no epoch recorded in 10 minutes"
            time.sleep(0.2)
    # The server is stopped (http_server's exit) while the stage trains.
    try:
        out, _ = repro.communicate(timeout=600)
    finally:
        if repro.poll() is None:
            repro.kill()
    assert repro.returncode != 0, out[-6000:]
    assert _epochs_recorded(proj) < 25, "training ended before the server stopped"
    assert f"MLflow tracking server {server_uri} failed while logging train_head metrics" in out
    assert "restart the server and rerun" in out
    assert "Traceback" not in out, out[-6000:]

    with http_server(cmd, tmp_path, ui.server_env(), health, timeout=180, what="mlflow server"):
        again = run(["dvc", "repro", "train_head"], proj, env, timeout=900)
        log = again.stdout + again.stderr
        assert "resuming" in log, log[-6000:]
        assert (proj / "models" / "head.keras").is_file()

        client = mlflow.MlflowClient(server_uri)
        exp = client.get_experiment_by_name("reprotrain")
        runs = client.search_runs(
            [exp.experiment_id], filter_string="tags.`reprotrain.stage` = 'train_head'"
        )
        by_status = sorted(r.info.status for r in runs)
        # The stage killed by the outage is closed (KILLED by the rerun, or FAILED if the
        # server answered once more); the rerun FINISHED. Nothing is left RUNNING.
        assert len(runs) == 2 and "FINISHED" in by_status and "RUNNING" not in by_status


# ----------------------------------------------------------------- the tf.data file cache

CACHE_WRITER = """
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
        [sys.executable, "-c", CACHE_WRITER, str(prepared)],
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
    key = cache.cache_path(work / cache.AUTO_CACHE_PREFIX, files, 32, False)
    removed = cache.clear_unfinished_cache(key)
    assert any(p.name.endswith(".lockfile") for p in removed)
    # Rerun in the same folder, as the next `dvc repro` would: reads fine, same pixels as an
    # uncached read, and the finished cache (index written) is kept from now on.
    monkeypatch.chdir(work)
    for leftover in removed:  # put the dead writer's files back: make_dataset cleans them
        leftover.touch()
    ds = pipeline.make_dataset(files, cfg, False, image_size=32, batch_size=8, seed=0)
    cached = np.concatenate([x.numpy() for x, _ in ds])
    plain = pipeline.make_dataset(
        files, PipelineConfig(cache="none"), False, image_size=32, batch_size=8, seed=0
    )
    np.testing.assert_array_equal(cached, np.concatenate([x.numpy() for x, _ in plain]))
    assert Path(f"{key}.index").is_file()
    assert cache.clear_unfinished_cache(key) == []  # a complete cache is never touched
