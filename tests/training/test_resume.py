"""Resuming: a killed or failed training run continues from its last finished epoch and
ends with the best weights over all epochs; an unreadable backup is discarded."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from reprotrain import runtime, training
from reprotrain.config import RuntimeConfig, TrainHeadConfig
from tests.conftest import REPO, run, subprocess_env
from tests.models.tiny import tensorboard_steps, tiny_cnn, train_tiny

CFG = TrainHeadConfig(
    epochs=4, batch_size=8, feature_cache="off", early_stopping_patience=9, learning_rate=0.02
)


class HookFailed(RuntimeError):
    pass


def _model():
    info = runtime.configure(RuntimeConfig(), seed=5)
    return info, tiny_cnn()


@pytest.mark.slow
def test_killed_run_resumes_from_backup(tmp_path: Path) -> None:
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.json"
    cmd = [sys.executable, "-m", "tests.models.resume_worker", str(ckpt), str(out)]
    env = subprocess_env()
    log = tmp_path / "worker.log"
    with log.open("w") as err:  # a file: a full stderr pipe would stall the worker
        proc = subprocess.Popen(
            [*cmd, "pause"],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        try:
            # The hook of the second epoch says so and waits: its backup is committed.
            assert proc.stdout is not None
            assert proc.stdout.readline() == "paused\n", log.read_text()[-3000:]
            assert json.loads(out.with_suffix(".epochs").read_text()) == [0, 1]
        finally:
            proc.kill()
            proc.wait()
    assert not out.exists()  # really killed before finishing
    assert json.loads((ckpt / training.STATE_FILE).read_text())["done"] == 2

    run(cmd, REPO, env, timeout=300)
    result = json.loads(out.read_text())
    assert result["seen"] == [2, 3]  # epochs 1 and 2 were not redone
    assert result["summary"]["resumed_from_epoch"] == 2
    assert result["history"]["epoch"] == [1, 2, 3, 4]  # merged across both processes


@pytest.mark.slow
def test_failing_hook_loses_no_epoch_and_best_weights_survive_resume(tmp_path: Path) -> None:
    """The hook (MLflow logging) raises after epoch 2: epochs 1-2 are safe, the rerun
    resumes after epoch 2 and keeps the best epoch over all four, whichever run it was in."""
    ckpt = tmp_path / "ckpt"

    def failing(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 1:
            raise HookFailed("tracking server went away")

    with pytest.raises(HookFailed):
        train_tiny(ckpt, CFG, hook=failing)
    assert json.loads((ckpt / training.STATE_FILE).read_text())["done"] == 2
    seen: list[int] = []
    model, result = train_tiny(ckpt, CFG, hook=lambda e, m: seen.append(e))
    assert seen == [2, 3] and result.initial_epoch == 2
    assert result.history["epoch"] == [1, 2, 3, 4]
    val_loss = result.history["val_loss"]
    assert result.best_epoch == 1 + int(np.argmin(val_loss))
    summary = result.summary()
    # The metrics describe the kept weights, measured on them.
    assert summary["val_loss"] == pytest.approx(val_loss[result.best_epoch - 1], rel=1e-5)
    assert summary["val_accuracy"] == result.history["val_accuracy"][result.best_epoch - 1]

    # The best of the first run wins over the later epochs: force it by resuming a run
    # whose first two epochs had a lower val_loss than anything after.
    ckpt2 = tmp_path / "ckpt2"
    with pytest.raises(HookFailed):
        train_tiny(ckpt2, CFG, hook=failing)
    state = json.loads((ckpt2 / training.STATE_FILE).read_text())
    state["best_value"] = -1.0  # pretend epoch best_epoch was unbeatable
    (ckpt2 / training.STATE_FILE).write_text(json.dumps(state))
    best = state["best_epoch"]
    _, probe = _model()
    probe.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    probe.optimizer.build(probe.trainable_variables)
    probe.load_weights(ckpt2 / training.epoch_file(best))
    model, result = train_tiny(ckpt2, CFG)
    assert result.best_epoch == best + 1 and result.initial_epoch == 2
    for a, b in zip(probe.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "garbage", "state"])
def test_unreadable_backup_is_discarded_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    ckpt = tmp_path / "ckpt"
    cfg = dataclasses.replace(CFG, epochs=2)

    def stop(epoch: int, metrics: dict[str, float]) -> None:
        raise HookFailed

    with pytest.raises(HookFailed):
        train_tiny(ckpt, cfg, hook=stop)
    weights = ckpt / training.epoch_file(0)
    if damage == "truncate":  # what a kill during an in-place write leaves
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    elif damage == "garbage":
        weights.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00garbage" * 100)
    else:
        (ckpt / training.STATE_FILE).write_text('{"done": 1, "rec')
    with caplog.at_level(logging.WARNING, logger="reprotrain"):
        _, result = train_tiny(ckpt, cfg)
    assert "discarding the training backup" in caplog.text
    assert "restarts from epoch 1" in caplog.text
    assert result.initial_epoch == 0 and result.history["epoch"] == [1, 2]


@pytest.mark.slow
# Keras learns an unknown length by running out of data at the end of the first epoch, and
# says so; the pipeline's own datasets have a known length (make_dataset asserts it).
@pytest.mark.filterwarnings("ignore:Your input ran out of data")
@pytest.mark.parametrize(
    ("loop", "known_length"), [("fit", True), ("custom", True), ("fit", False)]
)
def test_a_resumed_run_trains_what_an_uninterrupted_one_trains(
    tmp_path: Path, loop: str, known_length: bool
) -> None:
    """Through the real shuffled, augmented pipeline, with dropout: a run that failed after
    epoch 2 and resumed with new datasets (as a new process builds them) ends with the same
    weights and history as a run that never stopped (also for a dataset whose length
    tf.data cannot know, which Keras iterates differently)."""
    from reprotrain.config import PipelineConfig
    from reprotrain.data import pipeline
    from reprotrain.paths import split_files
    from tests.conftest import prepared_tree
    from tests.models.tiny import SIZE

    prepared = prepared_tree(tmp_path, {"cats": 12, "dogs": 12}, shard_size=4, seed=1)
    pipe = PipelineConfig(shuffle_buffer=64)

    def attempt(ckpt: Path, hook=None):
        info, model = _model()
        train_ds, val_ds = (
            pipeline.make_dataset(
                split_files(prepared, split),
                pipe,
                split == "train",
                image_size=SIZE,
                batch_size=4,
                seed=11,
            )
            for split in ("train", "val")
        )
        if not known_length:
            train_ds = train_ds.filter(lambda *_: True)  # length unknown to tf.data
        result = training.train(
            model,
            train_ds,
            val_ds,
            dataclasses.replace(CFG, loop=loop),
            info,
            training.RunOptions(ckpt, resume_key="k", epoch_hook=hook),
        )
        return model, result

    whole, whole_result = attempt(tmp_path / "a")

    def fail_after_second(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 1:
            raise HookFailed("stop")

    with pytest.raises(HookFailed):
        attempt(tmp_path / "b", fail_after_second)
    resumed, resumed_result = attempt(tmp_path / "b")
    assert resumed_result.initial_epoch == 2
    assert resumed_result.history == whole_result.history
    for a, b in zip(whole.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_resumed_run_keeps_the_killed_runs_tensorboard_logs(tmp_path: Path) -> None:
    """The first run fails in epoch 2's hook, the second in the last epoch's (after its
    commit, before its TensorBoard line); DVC deletes the stage's outputs before each rerun
    (here: the output folder is removed by hand). The third run, with nothing left to
    train, still ends with every epoch logged exactly once, in the three runs' files."""
    ckpt, logs = tmp_path / "ckpt", tmp_path / "tensorboard"

    def failing_at(at: int):
        def hook(epoch: int, metrics: dict[str, float]) -> None:
            if epoch == at:
                raise HookFailed("tracking server went away")

        return hook

    def attempt(hook=None):
        return train_tiny(ckpt, CFG, hook=hook, validate_on_train=True, tensorboard_dir=logs)[1]

    for at in (1, 3):
        with pytest.raises(HookFailed):
            attempt(failing_at(at))
        shutil.rmtree(logs, ignore_errors=True)  # what `dvc repro` does to a stage's outputs
    result = attempt()
    assert result.initial_epoch == 4 and result.history["epoch"] == [1, 2, 3, 4]
    steps = tensorboard_steps(logs)
    assert steps == {"train": [0, 1, 2, 3], "validation": [0, 1, 2, 3]}, steps
    assert len(list((logs / "train").glob("events.out.tfevents.*"))) == 3  # every run's


def _fail_first_run(ckpt: Path, cfg=CFG) -> None:
    def stop(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 1:
            raise HookFailed

    with pytest.raises(HookFailed):
        train_tiny(ckpt, cfg, hook=stop)


@contextlib.contextmanager
def no_free_file_descriptor() -> Iterator[None]:
    """Every file descriptor this process may open in use (RLIMIT_NOFILE at the highest
    one open): the next ``open`` fails with EMFILE, a real error that passes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = []
    # A file object collected inside the block would free a descriptor and let the next
    # open succeed (seen in the full suite): collect first, and not during the block.
    gc.collect()
    gc.disable()
    try:
        # Limit the table to the highest descriptor open now, then fill every free slot
        # below it until the kernel itself refuses: no slot can be left over.
        top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, hard))
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                if exc.errno != errno.EMFILE:
                    raise
                break
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in held:
            os.close(fd)
        gc.enable()


@pytest.mark.slow
def test_a_transient_restore_error_stops_the_stage_and_keeps_every_backup(
    tmp_path: Path,
) -> None:
    """Too many open files while the backup is loaded: one clear ModelError, the backups
    stay untouched, and the next run (the cause gone) resumes from them."""
    from reprotrain.errors import ModelError
    from reprotrain.training.loop import _resume

    ckpt = tmp_path / "ckpt"
    _fail_first_run(ckpt)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()}
    info, model = _model()
    training.compile_model(model, CFG, info)
    store = training.CheckpointStore(ckpt)
    state = store.load()
    assert state is not None and state.done == 2
    with pytest.raises(ModelError) as err, no_free_file_descriptor():
        _resume(store, model, state, CFG.epochs, info.strategy)
    message = str(err.value)
    assert "\n" not in message and "Too many open files" in message, message
    assert "backups are kept" in message and str(ckpt) in message
    assert {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()} == before
    _, result = train_tiny(ckpt, CFG)
    assert result.initial_epoch == 2 and result.history["epoch"] == [1, 2, 3, 4]


def test_only_a_backup_whose_bytes_read_but_do_not_load_is_unreadable(tmp_path: Path) -> None:
    from reprotrain.training.checkpoints import unreadable_backup

    backup = tmp_path / "epoch-0001.weights.h5"
    backup.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    bad = OSError("Unable to synchronously open file (truncated file: eof = 108)")
    assert "truncated file" in (unreadable_backup(backup, bad) or "")
    assert unreadable_backup(backup, ValueError("shape mismatch")) == "ValueError: shape mismatch"
    for transient in (
        MemoryError(),
        PermissionError(errno.EACCES, "Permission denied"),
        OSError(errno.EIO, "Input/output error"),
        OSError(errno.EMFILE, "Too many open files"),
    ):
        assert unreadable_backup(backup, transient) is None, transient
    # The bytes themselves cannot be read (here: a folder in its place): nothing is proven.
    folder = tmp_path / "epoch-0002.weights.h5"
    folder.mkdir()
    assert unreadable_backup(folder, ValueError("not an HDF5 file")) is None
