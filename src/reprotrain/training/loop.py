"""Compile and train a model: Keras ``fit`` or a custom ``GradientTape`` loop.

One ``train`` function serves train_head and finetune, with either Keras ``fit`` or a
custom ``GradientTape`` loop (``loop: custom``) driving the *same* callbacks, so both give
the same history, backups, TensorBoard logs and per-epoch hook calls.

Resumability: ``checkpoint_dir`` (outside DVC's outputs: DVC deletes outputs before
rerunning a stage) holds the last finished epoch, the best epoch and the merged history
(see :mod:`reprotrain.training.checkpoints`). A rerun with the same inputs resumes after the
last finished epoch and ends with the best weights over all epochs of all runs.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from reprotrain.config import AugmentConfig, TrainConfig
from reprotrain.errors import ConfigError, DataError, ModelError
from reprotrain.runtime import MIXED, RuntimeInfo
from reprotrain.timing import timed
from reprotrain.training import custom_loop, optim
from reprotrain.training.augment import AugmentingModel
from reprotrain.training.callbacks import MONITOR, EpochCommitter, EpochHook
from reprotrain.training.checkpoints import (
    TENSORBOARD,
    BackupRecord,
    CheckpointStore,
    WorkerCheckpointStore,
    epoch_file,
    restore_rng,
    unreadable_backup,
)
from reprotrain.training.iterators import (
    check_workers_agree,
    iterators_created,
    shard_across_workers,
    skip_iterators,
)
from reprotrain.training.optim import make_optimizer
from reprotrain.training.options import RunOptions
from reprotrain.training.tensorboard_logs import (
    ScalarTensorBoard,
    backfill_tensorboard,
    publish_tensorboard,
)

logger = logging.getLogger(__name__)


def compile_model(
    model: Any,
    cfg: TrainConfig,
    info: RuntimeInfo,
    steps_per_epoch: int | None = None,
    regression: str | None = None,
) -> None:
    """(Re)compile under the strategy: needed after any change of ``trainable``.

    Optimizer, learning-rate schedule and loss: :mod:`reprotrain.training.optim`
    (``steps_per_epoch`` sizes a ``schedule: cosine``).

    ``clip_norm`` goes into the optimizer's ``global_clipnorm`` for ``fit`` and under mixed
    precision (where it must act on unscaled gradients); the custom loop otherwise clips
    explicitly with ``tf.clip_by_global_norm``.

    ``regression`` (a Keras loss name, ``mse`` or ``mae``): a regression task (the series
    forecaster), compiled with that loss and ``mae`` as its metric instead of the
    classifier's cross-entropy and accuracy; None (every image stage) changes nothing.
    """
    clip_in_optimizer = (
        cfg.clip_norm if (cfg.loop == "fit" or info.mixed_precision == MIXED) else None
    )
    with info.strategy.scope():
        model.compile(
            optimizer=make_optimizer(
                cfg.optimizer, optim.learning_rate(cfg, steps_per_epoch), clip_in_optimizer
            ),
            loss=optim.make_loss(cfg, model) if regression is None else regression,
            metrics=["accuracy"] if regression is None else ["mae"],
            jit_compile=info.jit_compile,
        )


@dataclass
class TrainResult:
    """What a training run produced: the merged history (across resumes) and the kept epoch.

    ``history`` is Keras-style (metric → list per epoch) plus ``epoch`` (1-based numbers).
    The model's weights are those of ``best_epoch`` (lowest val_loss over all epochs, before
    and after any resume), or the starting weights (``best_epoch == 0``) when ``start`` was
    measured and no epoch beat it. ``kept`` is the kept weights' val metrics, measured.
    """

    history: dict[str, list[float]]
    best_epoch: int  # 1-based; 0 = the starting weights
    initial_epoch: int  # 0 unless resumed from a backup
    epochs_run: int
    stopped_early: bool
    extra: dict[str, Any] = field(default_factory=dict)
    start: dict[str, float] | None = None  # val metrics of the starting weights
    kept: dict[str, float] = field(default_factory=dict)

    def at(self, epoch: int) -> dict[str, float]:
        i = self.history["epoch"].index(epoch)
        return {k: v[i] for k, v in self.history.items() if k != "epoch"}

    def summary(self) -> dict[str, Any]:
        """Metrics of the kept model (``val_*`` measured on it), the last epoch, and the
        best val_accuracy seen (which may belong to another epoch than the kept one: the
        kept epoch is the one with the lowest val_loss)."""
        best = (self.start or {}) if self.best_epoch == 0 else self.at(self.best_epoch)
        kept = {k: best[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in best}
        kept.update(self.kept)
        val_accs = list(self.history.get("val_accuracy", []))
        if self.start is not None and "val_accuracy" in self.start:
            val_accs.append(self.start["val_accuracy"])
        # A regression run has no accuracy: no best_val_accuracy (NaN is not JSON).
        best_acc = {"best_val_accuracy": max(val_accs)} if val_accs else {}
        return {
            **kept,
            "best_epoch": self.best_epoch,
            **best_acc,
            "kept_start_weights": self.best_epoch == 0,
            "epochs_run": self.epochs_run,
            "resumed_from_epoch": self.initial_epoch,
            "stopped_early": self.stopped_early,
            "last_epoch": self.at(self.history["epoch"][-1]),
            **{f"start_{k}": v for k, v in (self.start or {}).items()},
        }


def _val_metrics(model: Any, val_ds: Any) -> dict[str, float]:
    measured = model.evaluate(val_ds, verbose=0, return_dict=True)
    return {f"val_{k}": float(v) for k, v in measured.items()}


def _resume(
    store: CheckpointStore, model: Any, state: BackupRecord, epochs: int, strategy: Any
) -> BackupRecord:
    """Load the last finished epoch into ``model``. A backup proven unreadable is discarded
    (training starts over); any other failure stops the stage and keeps the backups."""
    if not state.done:
        return state
    try:
        with strategy.scope():
            store.restore(model, state.done - 1)
            restore_rng(model, state.rng)
    except Exception as exc:
        path = store.dir / epoch_file(state.done - 1)
        why = unreadable_backup(path, exc)
        if why is None:
            raise ModelError(
                f"cannot read the training backup {path} ({type(exc).__name__}: {exc}); the "
                f"backups are kept: fix the cause (disk, permissions, open files, memory) and "
                f"rerun the stage to resume, or delete {store.dir} to start over"
            ) from exc
        store.discard(f"{path.name} is unreadable ({why})")
        return BackupRecord(start=state.start)
    logger.info(
        "resuming an interrupted run after epoch %d/%d (backup in %s)",
        state.done,
        epochs,
        store.dir,
    )
    return state


def discard_checkpoint(checkpoint_dir: Path) -> None:
    """Delete a run's resumable state: call it once the run's outputs are saved."""
    shutil.rmtree(checkpoint_dir, ignore_errors=True)


@timed("train")
def train(  # noqa: PLR0913  (the model, its datasets, config, runtime and run options; the task's keywords)
    model: Any,
    train_ds: Any,
    val_ds: Any,
    cfg: TrainConfig,
    info: RuntimeInfo,
    run: RunOptions,
    *,
    class_weight: Mapping[int, float] | None = None,
    augment: AugmentConfig | None = None,
    keep_start_if_better: bool = False,
    regression: str | None = None,
    compile: bool = True,
) -> TrainResult:
    """Train ``model`` per ``cfg`` (``loop: fit|custom``) and return the merged history.

    ``run``: the backup, TensorBoard logs, resume key and per-epoch hook
    (:class:`RunOptions`, a stage's ``fit_options()``).

    ``regression``: the loss of a regression task (``mse``|``mae``, see
    :func:`compile_model`); ``class_weight`` must then be None.

    ``augment``: augment inside the train step (``train_ds`` then yields
    ``((uint8 images, seeds), labels)``, ``make_dataset(augment_in="model")``); ``model`` is
    trained through an :class:`AugmentingModel` and holds the weights afterwards.

    Multi-worker (``info.num_workers > 1``): the datasets are sharded across workers
    (:func:`shard_across_workers`); only the chief writes the backup and TensorBoard logs.

    The kept (best) weights are in ``model`` when this returns. ``run.checkpoint_dir`` keeps
    the resumable state until the caller has saved its outputs and calls
    :func:`discard_checkpoint`, so a kill between the two loses no training.

    ``keep_start_if_better`` (fine-tuning): measure the starting weights on ``val_ds`` first
    and keep them if no epoch reaches a lower val_loss, so fine-tuning can never hand on a
    model that is worse on validation than the one it started from.
    """
    if regression is not None and class_weight:
        raise ConfigError("class_weight applies to classification only, not to a regression")
    if info.num_workers > 1:
        train_ds, val_ds = shard_across_workers(train_ds), shard_across_workers(val_ds)
    if augment is not None:
        with info.strategy.scope():
            model = AugmentingModel(model, augment)
    tensorboard_dir = run.tensorboard_dir
    if info.is_chief:
        store = CheckpointStore(run.checkpoint_dir)
    else:  # multi-worker, not the chief: reads the chief's backup, writes no shared file
        store, tensorboard_dir = WorkerCheckpointStore(run.checkpoint_dir), None
    # Logged beside the backup (DVC deletes the output folder before a rerun), published
    # to ``tensorboard_dir`` at the end: a resumed run keeps the killed run's logs.
    live_logs = store.dir / TENSORBOARD if tensorboard_dir is not None else None
    task = _Task(
        store=store,
        live_logs=live_logs,
        epoch_hook=run.epoch_hook,
        resume_key=run.resume_key,
        class_weight=class_weight,
        compile=compile,
        keep_start_if_better=keep_start_if_better,
        regression=regression,
    )
    try:
        result = _train(model, train_ds, val_ds, cfg, info, task)
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM (tracking.process): say what survives and how to go on.
        if info.is_chief:
            logger.warning(
                "training interrupted: every finished epoch is kept in %s; rerun the stage "
                "(dvc repro) to resume after the last one, or delete that folder to start over",
                store.dir,
            )
        raise
    finally:
        store.close()
    if tensorboard_dir is not None and live_logs is not None:
        publish_tensorboard(live_logs, tensorboard_dir)
    return result


@dataclass(frozen=True)
class _Task:
    """What :func:`_train` acts on besides the model, data, config and runtime: the backup
    and live logs :func:`train` opened, and its options (see train's docstring)."""

    store: CheckpointStore
    live_logs: Path | None
    epoch_hook: EpochHook | None
    resume_key: str | None
    class_weight: Mapping[int, float] | None
    compile: bool
    keep_start_if_better: bool
    regression: str | None


def _train(
    model: Any, train_ds: Any, val_ds: Any, cfg: TrainConfig, info: RuntimeInfo, opts: _Task
) -> TrainResult:
    store, tensorboard_dir = opts.store, opts.live_logs
    class_weight, epoch_hook, regression = opts.class_weight, opts.epoch_hook, opts.regression
    keep_start_if_better = opts.keep_start_if_better
    store.prepare(opts.resume_key)
    if opts.compile:
        steps = int(train_ds.cardinality())
        compile_model(model, cfg, info, steps if steps >= 0 else None, regression)
    state = store.load() or BackupRecord()
    check_workers_agree(info, state.done, "finished epochs", store.dir)
    start_weights = model.get_weights() if keep_start_if_better else None
    if keep_start_if_better and state.start is None:
        state.start = _val_metrics(model, val_ds)
        logger.info(
            "starting point: val_loss=%.4g val_accuracy=%.4g",
            state.start["val_loss"],
            state.start["val_accuracy"],
        )
    state = _resume(store, model, state, cfg.epochs, info.strategy)
    check_workers_agree(info, state.done, "resumable epochs", store.dir)
    initial = state.done
    if initial and info.num_workers == 1:
        known = int(train_ds.cardinality()) >= 0
        skip_iterators(train_ds, iterators_created(cfg.loop, initial, known_length=known))
    if not state.stopped and state.done < cfg.epochs:
        callbacks = _callbacks(cfg, store, state, tensorboard_dir, epoch_hook)
        cw = dict(class_weight) if class_weight else None
        verbose = 1 if sys.stdout.isatty() else 0
        if cfg.loop == "custom":
            step = (
                custom_loop.regression_step(model, cfg, info, regression)
                if regression is not None
                else custom_loop.classifier_step(model, cfg, info, cw)
            )
            custom_loop.fit_custom(
                model,
                step,
                train_ds,
                lambda: _val_metrics(model, val_ds),
                callbacks,
                epochs=cfg.epochs,
                initial_epoch=initial,
                verbose=verbose,
            )
        else:
            model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=cfg.epochs,
                initial_epoch=initial,
                shuffle=False,  # the tf.data pipeline shuffles (seeded); Keras cannot
                class_weight=cw,
                callbacks=callbacks,
                verbose=verbose,
            )
    elif tensorboard_dir is not None:  # nothing left to train (killed after the last commit)
        backfill_tensorboard(tensorboard_dir, state)
    history = state.history()
    if not history["epoch"]:
        raise DataError("training ran no epoch (is the training split empty?)")
    best_epoch = state.best_epoch + 1
    if state.start is not None and state.start[MONITOR] <= state.best_value:
        logger.info("no epoch beat the starting val_loss: keeping the starting weights")
        model.set_weights(start_weights)
        best_epoch = 0
    elif state.best_epoch != state.done - 1:
        try:
            with info.strategy.scope():
                store.restore(model, state.best_epoch)
        except Exception as exc:
            raise ModelError(
                f"cannot read the best epoch's weights {store.dir / epoch_file(state.best_epoch)}"
                f" ({type(exc).__name__}: {exc}); delete {store.dir} and rerun the stage"
            ) from exc
    return TrainResult(
        history=history,
        best_epoch=best_epoch,
        initial_epoch=initial,
        epochs_run=len(history["epoch"]),
        stopped_early=state.stopped,
        start=state.start,
        kept=_val_metrics(model, val_ds),
    )


def _callbacks(
    cfg: TrainConfig,
    store: CheckpointStore,
    state: BackupRecord,
    tensorboard_dir: Path | None,
    hook: EpochHook | None,
) -> list[Any]:
    """ReduceLROnPlateau, the state callback (see its docstring: order), TensorBoard."""
    reduce_lr = None  # a scheduled rate cannot be set (optim.uses_schedule)
    if not optim.uses_schedule(cfg):
        reduce_lr = keras.callbacks.ReduceLROnPlateau(
            monitor=MONITOR, factor=0.5, patience=cfg.reduce_lr_patience, min_lr=1e-7
        )
    cbs: list[Any] = [reduce_lr] if reduce_lr is not None else []
    # On a TTY Keras' progress bar shows the epochs; elsewhere one log line per epoch.
    cbs.append(
        EpochCommitter(
            store,
            state,
            epochs=cfg.epochs,
            patience=cfg.early_stopping_patience,
            reduce_lr=reduce_lr,
            hook=hook,
            log_lines=not sys.stdout.isatty(),
        )
    )
    if tensorboard_dir is not None:  # after the commit: each committed epoch logged once
        cbs.append(ScalarTensorBoard(tensorboard_dir, state))
    return cbs
