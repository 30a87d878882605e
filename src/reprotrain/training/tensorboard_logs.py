"""The run's TensorBoard logs: per-epoch scalars written once per committed epoch, kept
across a resume, and published to the stage's outputs at the end.

The logs are part of the backup (``tensorboard/`` beside it, outside DVC's outputs, which
DVC deletes before a rerun): a resumed run appends to the killed run's event files, each
committed epoch is written exactly once (:class:`ScalarTensorBoard`), and the finished logs
are copied to the stage's output folder (:func:`publish_tensorboard`).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from reprotrain import fsio
from reprotrain.training.checkpoints import BackupRecord


class ScalarTensorBoard(keras.callbacks.Callback):
    """Per-epoch scalars in TensorBoard's layout (``train/`` and ``validation/`` event files,
    tags ``epoch_loss``, ``epoch_accuracy``, ``epoch_learning_rate``), as Keras' callback
    writes them.

    Resumable: it comes after the ``EpochCommitter`` callback (an epoch is logged once
    committed) and ``state`` (the committed :class:`BackupRecord`) fills in, at the start,
    the committed epochs that the event files already in ``log_dir`` lack (a kill or a
    failing hook between the commit and the write). New event files are added beside the
    killed run's.

    Why not ``keras.callbacks.TensorBoard``: its ``tf.summary.scalar`` lives in the
    ``tensorboard`` package, a 20 MB web app the pipeline does not otherwise need. The core
    ``tf.summary.write`` op with the ``scalars`` plugin tag produces the same events; view
    them with ``tensorboard --logdir models/tensorboard`` wherever TensorBoard is installed.
    """

    def __init__(self, log_dir: Path, state: BackupRecord | None = None) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self.state = state
        self._writers: dict[str, Any] = {}

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.backfill()

    def backfill(self) -> None:
        """Log the committed epochs that the event files in ``log_dir`` lack."""
        if self.state is None:
            return
        logged = logged_epochs(self.log_dir)
        for epoch, rec in sorted(self.state.records.items()):
            self._write(epoch, rec, skip=logged)

    def _writer(self, name: str) -> Any:
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(str(self.log_dir / name))
        return self._writers[name]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._write(epoch, logs or {})

    def _write(
        self, epoch: int, logs: dict[str, Any], skip: dict[str, set[int]] | None = None
    ) -> None:
        from tensorflow.core.framework import summary_pb2

        meta = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        )
        for key, value in logs.items():
            split, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            if skip is not None and epoch in skip.get(split, set()):
                continue
            with self._writer(split).as_default():
                tf.summary.write(
                    f"epoch_{name}", tf.constant(float(value)), step=epoch, metadata=meta
                )
        for w in self._writers.values():
            w.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        for w in self._writers.values():
            w.close()
        self._writers = {}


def logged_epochs(log_dir: Path) -> dict[str, set[int]]:
    """``{"train": {0, 1}, "validation": {0, 1}}``: the steps in ``log_dir``'s event files.

    A killed writer can leave a truncated last record: reading stops there, keeping what
    came before it.
    """
    from tensorflow.core.util import event_pb2

    out: dict[str, set[int]] = {}
    for events in sorted(Path(log_dir).glob("*/events.out.tfevents.*")):
        steps = out.setdefault(events.parent.name, set())
        with contextlib.suppress(tf.errors.DataLossError, tf.errors.OutOfRangeError):
            for raw in tf.data.TFRecordDataset(str(events)):
                event = event_pb2.Event.FromString(raw.numpy())
                if event.summary.value:
                    steps.add(int(event.step))
    return out


def backfill_tensorboard(log_dir: Path, state: BackupRecord) -> None:
    """:meth:`ScalarTensorBoard.backfill` for a run with no epoch left to train (killed
    between its last commit and the last epoch's log line)."""
    board = ScalarTensorBoard(log_dir, state)
    board.backfill()
    board.on_train_end()


def publish_tensorboard(log_dir: Path, out_dir: Path) -> None:
    """Copy the run's TensorBoard logs (all of its resumed runs) to the stage's output
    folder ``out_dir``, replacing it whole (an empty folder when nothing was logged)."""
    with fsio.atomic_path(out_dir) as tmp:
        if Path(log_dir).is_dir():
            shutil.copytree(log_dir, tmp)
        else:
            tmp.mkdir()
