"""The per-epoch callback every training run uses (:class:`EpochCommitter`): record the
epoch, track the best one, decide early stopping, then commit the backup before anything
else (MLflow logging) may fail.

Why a callback of our own rather than ``keras.callbacks.EarlyStopping`` and
``BackupAndRestore``: a resumed run must take its decisions from the whole history and end
bit-identical to one that never stopped, which needs one record (the
:class:`~reprotrain.training.checkpoints.BackupRecord`) written atomically per epoch (see
:mod:`reprotrain.training.checkpoints`). TensorBoard scalars are in
:mod:`reprotrain.training.tensorboard_logs`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import keras

from reprotrain.training.checkpoints import BackupRecord, CheckpointStore, rng_variables

logger = logging.getLogger(__name__)

EpochHook = Callable[[int, dict[str, float]], None]

MONITOR = "val_loss"


class EpochCommitter(keras.callbacks.Callback):
    """Per epoch, in this order: record the logs, track the best epoch, save the epoch's
    weights, commit the state (all atomic), then log a line and call ``hook``.

    The hook (MLflow logging) runs after the commit, so a failing hook or a kill during it
    loses no epoch. Early stopping is decided here from the merged history (patience on
    ``val_loss``, as ``keras.callbacks.EarlyStopping``, whose counters a resume would
    reset). Must come after ``ReduceLROnPlateau`` in the callback list, so the epoch's
    ``learning_rate`` is in the logs and the reduced rate is in the saved optimizer.
    """

    def __init__(
        self,
        store: CheckpointStore,
        state: BackupRecord,
        *,
        epochs: int,
        patience: int,
        reduce_lr: Any = None,
        hook: EpochHook | None = None,
        log_lines: bool = True,
    ) -> None:
        super().__init__()
        self.store = store
        self.state = state
        self.epochs = epochs
        self.patience = patience
        self.reduce_lr = reduce_lr
        self.hook = hook
        self.log_lines = log_lines

    def on_train_begin(self, logs: dict | None = None) -> None:
        # ReduceLROnPlateau reset its counters in its own on_train_begin (it runs first).
        for name, value in self.state.reduce_lr.items():
            setattr(self.reduce_lr, name, value)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        rec = {}
        for k, v in (logs or {}).items():
            try:
                rec[k] = float(v)
            except (TypeError, ValueError):
                continue
        state = self.state
        state.records = {e: r for e, r in state.records.items() if e < epoch}
        state.records[epoch] = rec
        state.done = epoch + 1
        value = rec.get(MONITOR, math.nan)
        if state.best_epoch < 0 or value < state.best_value:
            state.best_epoch, state.best_value = epoch, value
        # Patience counts from the best weights seen, the starting ones included (fine-tuning
        # measures them first): epochs that never beat the start are not an improvement.
        since = state.best_epoch
        if state.start is not None and state.start.get(MONITOR, math.inf) <= state.best_value:
            since = -1
        if epoch - since >= self.patience:
            state.stopped = True
            self.model.stop_training = True
        if self.reduce_lr is not None:
            r = self.reduce_lr
            state.reduce_lr = {
                "wait": r.wait,
                "cooldown_counter": r.cooldown_counter,
                **({"best": float(r.best)} if r.best is not None else {}),
            }
        state.rng = [v.numpy().tolist() for v in rng_variables(self.model)]
        self.store.save_epoch(self.model, epoch)
        self.store.commit(state)
        if self.log_lines:
            shown = " ".join(f"{k}={v:.4g}" for k, v in rec.items())
            logger.info("epoch %d/%d: %s", epoch + 1, self.epochs, shown)
        if self.hook is not None:
            self.hook(epoch, rec)
