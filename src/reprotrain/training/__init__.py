"""Compile and train a model with the callbacks every stage needs.

One ``train`` function serves train_head and finetune, with either Keras ``fit`` or a
custom ``GradientTape`` loop (``loop: custom``) driving the *same* callbacks, so both give
the same history, checkpoints, TensorBoard logs and per-epoch hook calls.

Resumability: ``BackupAndRestore`` keeps the last finished epoch under
``checkpoint_dir/backup`` and a per-epoch history under ``checkpoint_dir``, outside DVC's
outputs (DVC deletes outputs before rerunning a stage). A fingerprint of the inputs guards
the backup: a run with different params or data never resumes from a stale one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from reprotrain.config import TrainConfig, TrainHeadConfig
from reprotrain.errors import ConfigError, DataError, ModelError
from reprotrain.models import transfer
from reprotrain.runtime import MIXED, RuntimeInfo

logger = logging.getLogger(__name__)

EpochHook = Callable[[int, dict[str, float]], None]

MONITOR = "val_loss"
HISTORY_FILE = "history.json"
BACKUP_DIR = "backup"
BEST_FILE = "best.keras"
FINGERPRINT_FILE = "fingerprint.txt"


# --------------------------------------------------------------------------- pure helpers


def use_feature_cache(cfg: TrainHeadConfig) -> bool:
    """``auto`` caches features exactly when the head trains without augmentation.

    With augmentation every epoch sees different pixels, so features cannot be reused.
    """
    if cfg.feature_cache == "on":
        if cfg.augment:
            raise ConfigError(
                "train_head.feature_cache = on needs train_head.augment = false "
                "(augmented images change every epoch, their features cannot be cached)"
            )
        return True
    if cfg.feature_cache == "off":
        return False
    return not cfg.augment


def train_counts(manifest_csv: Path, labels: Sequence[str]) -> dict[str, int]:
    """Images per class in the train split, from ``manifest.csv`` (path,label,...,split)."""
    counts = dict.fromkeys(labels, 0)
    with Path(manifest_csv).open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("split") == "train":
                label = row["label"]
                if label not in counts:
                    raise DataError(
                        f"{manifest_csv}: label {label!r} is not in labels.json; "
                        "rerun the prepare stage"
                    )
                counts[label] += 1
    return counts


def class_weights(
    setting: str | Mapping[str, float], labels: Sequence[str], counts: Mapping[str, int]
) -> dict[int, float] | None:
    """Keras ``class_weight`` ({label index: weight}) for ``none|balanced|{name: weight}``.

    ``balanced`` is n_samples / (n_classes * n_c) (scikit-learn's definition), so a class
    with half the images counts twice as much and the mean weight per image stays 1.
    """
    if setting == "none":
        return None
    if setting == "balanced":
        missing = [name for name in labels if counts.get(name, 0) == 0]
        if missing:
            raise DataError(f"class_weight = balanced: class {missing[0]!r} has no training images")
        total = sum(counts[name] for name in labels)
        return {i: total / (len(labels) * counts[name]) for i, name in enumerate(labels)}
    if isinstance(setting, Mapping):
        unknown = sorted(set(setting) - set(labels))
        if unknown:
            raise ConfigError(
                f"class_weight: unknown class {unknown[0]!r}; classes are: {', '.join(labels)}"
            )
        return {i: float(setting.get(name, 1.0)) for i, name in enumerate(labels)}
    raise ConfigError(f"class_weight = {setting!r}: must be 'none', 'balanced' or a map")


def fingerprint(*parts: Any) -> str:
    """A stable digest of JSON-able parts (params, data digests) to guard resumption."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def make_optimizer(name: str, learning_rate: float, global_clipnorm: float | None = None) -> Any:
    """A fresh Keras optimizer (each compile needs its own)."""
    classes = {
        "adam": keras.optimizers.Adam,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
        "adamw": keras.optimizers.AdamW,
    }
    if name not in classes:
        raise ConfigError(f"optimizer = {name!r}: must be one of {', '.join(classes)}")
    kwargs: dict[str, Any] = {"learning_rate": learning_rate}
    if global_clipnorm is not None:
        kwargs["global_clipnorm"] = global_clipnorm
    if name == "sgd":
        kwargs["momentum"] = 0.9
    return classes[name](**kwargs)


def compile_model(model: Any, cfg: TrainConfig, info: RuntimeInfo) -> None:
    """(Re)compile under the strategy: needed after any change of ``trainable``.

    ``clip_norm`` goes into the optimizer's ``global_clipnorm`` for ``fit`` and under mixed
    precision (where it must act on unscaled gradients); the custom loop otherwise clips
    explicitly with ``tf.clip_by_global_norm``.
    """
    clip_in_optimizer = (
        cfg.clip_norm if (cfg.loop == "fit" or info.mixed_precision == MIXED) else None
    )
    with info.strategy.scope():
        model.compile(
            optimizer=make_optimizer(cfg.optimizer, cfg.learning_rate, clip_in_optimizer),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile=info.jit_compile,
        )


# --------------------------------------------------------------------------- results


@dataclass
class TrainResult:
    """What a training run produced: the merged history (across resumes) and the best epoch.

    ``history`` is Keras-style (metric → list per epoch) plus ``epoch`` (1-based numbers).
    The model's weights are those of ``best_epoch`` (EarlyStopping restores them), or the
    starting weights (``best_epoch == 0``) when ``start`` was measured and no epoch beat it.
    """

    history: dict[str, list[float]]
    best_epoch: int  # 1-based
    initial_epoch: int  # 0 unless resumed from a backup
    epochs_run: int
    stopped_early: bool
    extra: dict[str, Any] = field(default_factory=dict)
    start: dict[str, float] | None = None  # val metrics of the starting weights

    def at(self, epoch: int) -> dict[str, float]:
        i = self.history["epoch"].index(epoch)
        return {k: v[i] for k, v in self.history.items() if k != "epoch"}

    def summary(self) -> dict[str, Any]:
        """Metrics of the kept (best) epoch, the last epoch, and the best val_accuracy."""
        best = (self.start or {}) if self.best_epoch == 0 else self.at(self.best_epoch)
        last = self.at(self.history["epoch"][-1])
        val_accs = list(self.history.get("val_accuracy", []))
        if self.start is not None:
            val_accs.append(self.start["val_accuracy"])
        return {
            **{k: best[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in best},
            "best_epoch": self.best_epoch,
            "best_val_accuracy": max(val_accs, default=math.nan),
            "kept_start_weights": self.best_epoch == 0,
            "epochs_run": self.epochs_run,
            "resumed_from_epoch": self.initial_epoch,
            "stopped_early": self.stopped_early,
            "last_epoch": last,
        }


def write_history(result: TrainResult, path: Path) -> None:
    """``{"epoch": [1, 2, ...], "loss": [...], "val_accuracy": [...], ...}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.history, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- callbacks


class EpochRecorder(keras.callbacks.Callback):
    """Persists per-epoch logs (merged across resumes), calls the hook, logs a line.

    Runs after ReduceLROnPlateau so ``learning_rate`` is in the logs it sees.
    """

    def __init__(
        self, path: Path, epochs: int, hook: EpochHook | None = None, log_lines: bool = True
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.epochs = epochs
        self.hook = hook
        self.log_lines = log_lines
        self.records: dict[int, dict[str, float]] = {}

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.path.is_file():
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            self.records = {int(k): v for k, v in saved.items()}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        rec = {}
        for k, v in (logs or {}).items():
            try:
                rec[k] = float(v)
            except (TypeError, ValueError):
                continue
        self.records[epoch] = rec
        # Drop records of epochs after this one: a resumed run redoes them.
        self.records = {e: r for e, r in self.records.items() if e <= epoch}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.records), encoding="utf-8")
        tmp.replace(self.path)
        if self.log_lines:
            shown = " ".join(f"{k}={v:.4g}" for k, v in rec.items())
            logger.info("epoch %d/%d: %s", epoch + 1, self.epochs, shown)
        if self.hook is not None:
            self.hook(epoch, rec)

    def history(self) -> dict[str, list[float]]:
        epochs = sorted(self.records)
        keys: list[str] = []
        for e in epochs:
            keys += [k for k in self.records[e] if k not in keys]
        out: dict[str, list[float]] = {"epoch": [e + 1 for e in epochs]}
        for k in keys:
            out[k] = [self.records[e].get(k, math.nan) for e in epochs]
        return out


class ScalarTensorBoard(keras.callbacks.Callback):
    """Per-epoch scalars in TensorBoard's layout (``train/`` and ``validation/`` event files,
    tags ``epoch_loss``, ``epoch_accuracy``, ``epoch_learning_rate``), as Keras' callback
    writes them.

    Why not ``keras.callbacks.TensorBoard``: its ``tf.summary.scalar`` lives in the
    ``tensorboard`` package, a 20 MB web app the pipeline does not otherwise need. The core
    ``tf.summary.write`` op with the ``scalars`` plugin tag produces the same events; view
    them with ``tensorboard --logdir models/tensorboard`` wherever TensorBoard is installed.
    """

    def __init__(self, log_dir: Path) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writers: dict[str, Any] = {}

    def _writer(self, name: str) -> Any:
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(str(self.log_dir / name))
        return self._writers[name]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        from tensorflow.core.framework import summary_pb2

        meta = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        )
        for key, value in (logs or {}).items():
            split, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
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


def _prepare_checkpoint_dir(checkpoint_dir: Path, key: str | None) -> None:
    """Remove a backup left by a run with other inputs (it must not be resumed)."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    fp = checkpoint_dir / FINGERPRINT_FILE
    if key is None:
        return
    if fp.is_file() and fp.read_text().strip() != key:
        logger.warning("discarding a backup from a run with different inputs: %s", checkpoint_dir)
        shutil.rmtree(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True)
    elif (checkpoint_dir / BACKUP_DIR).exists():
        logger.info("found a backup of an interrupted run: resuming it (%s)", checkpoint_dir)
    fp.write_text(key + "\n")


def _callbacks(
    cfg: TrainConfig,
    checkpoint_dir: Path,
    tensorboard_dir: Path | None,
    recorder: EpochRecorder,
) -> tuple[list[Any], Any]:
    early = keras.callbacks.EarlyStopping(
        monitor=MONITOR, patience=cfg.early_stopping_patience, restore_best_weights=True
    )
    cbs: list[Any] = [
        early,
        keras.callbacks.ReduceLROnPlateau(
            monitor=MONITOR, factor=0.5, patience=cfg.reduce_lr_patience, min_lr=1e-7
        ),
        recorder,
        keras.callbacks.ModelCheckpoint(
            str(checkpoint_dir / BEST_FILE), monitor=MONITOR, save_best_only=True
        ),
    ]
    if tensorboard_dir is not None:
        cbs.append(ScalarTensorBoard(tensorboard_dir))
    # Last: the backup is written after the history record of the same epoch.
    cbs.append(keras.callbacks.BackupAndRestore(str(checkpoint_dir / BACKUP_DIR)))
    return cbs, early


def _is_tty() -> bool:
    return sys.stdout.isatty()


# --------------------------------------------------------------------------- training


def train(
    model: Any,
    train_ds: Any,
    val_ds: Any,
    cfg: TrainConfig,
    info: RuntimeInfo,
    *,
    checkpoint_dir: Path,
    tensorboard_dir: Path | None = None,
    class_weight: Mapping[int, float] | None = None,
    epoch_hook: EpochHook | None = None,
    resume_key: str | None = None,
    compile: bool = True,
    keep_start_if_better: bool = False,
) -> TrainResult:
    """Train ``model`` per ``cfg`` (``loop: fit|custom``) and return the merged history.

    ``checkpoint_dir`` holds the resumable state and is deleted after success; the best
    weights are in ``model`` when this returns (the caller saves it).

    ``keep_start_if_better`` (fine-tuning): measure the starting weights on ``val_ds`` first
    and keep them if no epoch reaches a lower val_loss, so fine-tuning can never hand on a
    model that is worse on validation than the one it started from.
    """
    checkpoint_dir = Path(checkpoint_dir)
    _prepare_checkpoint_dir(checkpoint_dir, resume_key)
    if compile:
        compile_model(model, cfg, info)
    start: dict[str, float] | None = None
    if keep_start_if_better:
        start_weights = model.get_weights()
        measured = model.evaluate(val_ds, verbose=0, return_dict=True)
        start = {f"val_{k}": float(v) for k, v in measured.items()}
        logger.info("starting point: val_loss=%.4g val_accuracy=%.4g", start["val_loss"],
                    start["val_accuracy"])  # fmt: skip
    tty = _is_tty()
    recorder = EpochRecorder(checkpoint_dir / HISTORY_FILE, cfg.epochs, epoch_hook, not tty)
    cbs, early = _callbacks(cfg, checkpoint_dir, tensorboard_dir, recorder)
    verbose = 1 if tty else 0
    cw = dict(class_weight) if class_weight else None
    if cfg.loop == "custom":
        initial = _custom_fit(model, train_ds, val_ds, cfg, info, cbs, cw, verbose)
    else:
        model._initial_epoch = None
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=cfg.epochs,
            shuffle=False,  # the tf.data pipeline shuffles (seeded); Keras cannot
            class_weight=cw,
            callbacks=cbs,
            verbose=verbose,
        )
        initial = int(getattr(model, "_initial_epoch", None) or 0)
    history = recorder.history()
    if not history["epoch"]:
        raise DataError("training ran no epoch (is the training split empty?)")
    # EarlyStopping restored the best weights among the epochs *this* process ran.
    seen = [(v, e) for e, v in zip(history["epoch"], history[MONITOR], strict=True) if e > initial]
    best_epoch = min(seen)[1] if seen else history["epoch"][-1]
    kept_val_loss = history[MONITOR][history["epoch"].index(best_epoch)]
    if start is not None and start[MONITOR] <= kept_val_loss:
        logger.info("no epoch beat the starting val_loss: keeping the starting weights")
        model.set_weights(start_weights)
        best_epoch = 0
    result = TrainResult(
        history=history,
        best_epoch=best_epoch,
        initial_epoch=initial,
        epochs_run=len(history["epoch"]),
        stopped_early=bool(early.stopped_epoch),
        start=start,
    )
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return result


def _custom_fit(
    model: Any,
    train_ds: Any,
    val_ds: Any,
    cfg: TrainConfig,
    info: RuntimeInfo,
    callbacks: list[Any],
    class_weight: dict[int, float] | None,
    verbose: int,
) -> int:
    """A ``tf.function`` GradientTape step driving the same callbacks as ``fit``.

    The loss matches Keras': per-example cross-entropy times the class weight, summed and
    divided by the batch size. Returns the epoch it started from (non-zero when resumed).
    """
    if info.replicas > 1:
        raise ConfigError(
            "loop = custom runs on one device; use loop: fit with runtime.distribute: "
            "mirrored (or distribute: none with the custom loop)"
        )
    num_classes = int(model.output_shape[-1])
    weights = [float((class_weight or {}).get(i, 1.0)) for i in range(num_classes)]
    cw = tf.constant(weights, tf.float32)
    opt = model.optimizer
    clip = cfg.clip_norm if info.mixed_precision != MIXED else None  # else: global_clipnorm
    loss_mean = keras.metrics.Mean(name="loss")
    acc = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    @tf.function(jit_compile=info.jit_compile, reduce_retracing=True)
    def train_step(x: Any, y: Any) -> None:
        y = tf.cast(y, tf.int32)
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            per_example = keras.losses.sparse_categorical_crossentropy(y, probs)
            w = tf.gather(cw, y)
            batch = tf.cast(tf.shape(y)[0], tf.float32)
            loss = tf.reduce_sum(tf.cast(per_example, tf.float32) * w) / batch
            if model.losses:
                loss += tf.add_n([tf.cast(t, tf.float32) for t in model.losses])
            scaled = opt.scale_loss(loss)
        variables = model.trainable_variables
        grads = tape.gradient(scaled, variables)
        if clip is not None:
            grads, _ = tf.clip_by_global_norm(grads, clip)
        opt.apply_gradients(zip(grads, variables, strict=True))
        loss_mean.update_state(loss, sample_weight=batch)
        acc.update_state(y, probs)

    cbs = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=verbose > 0,
        model=model,
        verbose=verbose,
        epochs=cfg.epochs,
        steps=None,
    )
    model.stop_training = False
    model._initial_epoch = None
    cbs.on_train_begin()
    start = int(getattr(model, "_initial_epoch", None) or 0)
    logs: dict[str, float] = {}
    for epoch in range(start, cfg.epochs):
        loss_mean.reset_state()
        acc.reset_state()
        cbs.on_epoch_begin(epoch)
        for step, (x, y) in enumerate(train_ds):
            cbs.on_train_batch_begin(step)
            train_step(x, y)
            cbs.on_train_batch_end(
                step, {"loss": float(loss_mean.result()), "accuracy": float(acc.result())}
            )
        logs = {"loss": float(loss_mean.result()), "accuracy": float(acc.result())}
        val = model.evaluate(val_ds, verbose=0, return_dict=True)
        logs.update({f"val_{k}": float(v) for k, v in val.items()})
        cbs.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    cbs.on_train_end(logs)
    return start


# --------------------------------------------------------------------------- feature cache


def extract_features(model: Any, ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """Pooled base features and labels of every batch of ``ds`` (one pass, in order)."""
    extractor = transfer.feature_extractor(model)

    @tf.function(reduce_retracing=True)
    def features(x: Any) -> Any:
        return tf.cast(extractor(x, training=False), tf.float32)

    feats, labels = [], []
    for batch in ds:
        x, y = batch[0], batch[1]
        feats.append(features(x).numpy())
        labels.append(np.asarray(y, dtype=np.int32))
    if not feats:
        raise DataError("cannot extract features: the dataset is empty")
    return np.concatenate(feats), np.concatenate(labels)


def train_head_cached(
    model: Any,
    train_ds: Any,
    val_ds: Any,
    cfg: TrainHeadConfig,
    info: RuntimeInfo,
    *,
    seed: int,
    checkpoint_dir: Path,
    tensorboard_dir: Path | None = None,
    class_weight: Mapping[int, float] | None = None,
    epoch_hook: EpochHook | None = None,
    resume_key: str | None = None,
) -> TrainResult:
    """Train only the head on features computed once, then put it on the full model.

    The frozen base in inference mode is a fixed function of the image, so without
    augmentation every epoch would recompute identical features: computing them once
    makes each epoch ~a matrix multiply. ``train_ds`` must not augment (build it with
    ``training=False``). The head starts from the full model's initial Dense weights, so
    both paths start from the same point; the full model gets the trained weights back.
    """
    logger.info("feature cache: computing pooled base features once per split")
    x_train, y_train = extract_features(model, train_ds)
    x_val, y_val = extract_features(model, val_ds)
    num_classes = int(model.output_shape[-1])
    with info.strategy.scope():
        head = transfer.build_head_only(x_train.shape[1], num_classes, cfg.dropout)
    head.get_layer(transfer.OUTPUT_NAME).set_weights(
        model.get_layer(transfer.OUTPUT_NAME).get_weights()
    )
    train_feats = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(y_train), seed=seed, reshuffle_each_iteration=True)
        .batch(cfg.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    val_feats = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(cfg.batch_size)
    result = train(
        head,
        train_feats,
        val_feats,
        cfg,
        info,
        checkpoint_dir=checkpoint_dir,
        tensorboard_dir=tensorboard_dir,
        class_weight=class_weight,
        epoch_hook=epoch_hook,
        resume_key=resume_key,
    )
    transfer.copy_head_weights(head, model)
    # The full model is what gets saved and fine-tuned: compile it like the plain path.
    compile_model(model, cfg, info)
    result.extra["feature_cache"] = True
    result.extra["feature_dim"] = int(x_train.shape[1])
    return result


# --------------------------------------------------------------------------- stage plumbing


@dataclass
class StageData:
    """What a training stage reads from ``data/prepared``."""

    train: Any
    val: Any
    labels: list[str]
    class_weight: dict[int, float] | None
    digest: str  # of labels + manifest: part of the resume fingerprint


def load_stage_data(
    prepared_dir: Path,
    pipeline_cfg: Any,
    cfg: TrainConfig,
    *,
    image_size: int,
    seed: int,
    train_as_eval: bool = False,
) -> StageData:
    """Train/val datasets, labels and class weights of a prepared dataset.

    ``train_as_eval`` builds the train split without shuffling or augmentation (the
    feature cache reads it once, in order).
    """
    from reprotrain.data import pipeline
    from reprotrain.paths import split_files

    prepared_dir = Path(prepared_dir)
    manifest = prepared_dir / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"{manifest} not found: run the prepare stage first (dvc repro prepare)")
    labels = list(pipeline.read_labels(prepared_dir))
    files = {s: split_files(prepared_dir, s) for s in ("train", "val")}
    for split, found in files.items():
        if not found:
            raise DataError(
                f"no {split} shards in {prepared_dir}: the {split} split is empty "
                "(add images or adjust prepare.val_fraction), then rerun prepare"
            )
    common = dict(image_size=image_size, batch_size=cfg.batch_size, seed=seed)
    train = pipeline.make_dataset(
        files["train"],
        pipeline_cfg,
        training=not train_as_eval,
        augment=cfg.augment and not train_as_eval,
        **common,
    )
    val = pipeline.make_dataset(files["val"], pipeline_cfg, training=False, **common)
    counts = train_counts(manifest, labels)
    digest = hashlib.sha256(manifest.read_bytes() + json.dumps(labels).encode()).hexdigest()
    return StageData(train, val, labels, class_weights(cfg.class_weight, labels, counts), digest)


def save_outputs(
    model: Any,
    result: TrainResult,
    *,
    model_path: Path,
    history_path: Path,
    metrics_path: Path,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the ``.keras`` model, the history JSON and the stage's metrics JSON."""
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(model_path)
    write_history(result, history_path)
    metrics = {**result.summary(), **result.extra, **(extra or {})}
    metrics_path = Path(metrics_path)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    logger.info(
        "saved %s: val_accuracy=%.4f (epoch %d), best val_accuracy=%.4f",
        model_path,
        metrics.get("val_accuracy", math.nan),
        result.best_epoch,
        metrics["best_val_accuracy"],
    )
    return metrics


def trainable_counts(model: Any) -> dict[str, int]:
    """The numeric part of ``transfer.trainable_summary`` (DVC metrics take numbers only)."""
    summary = transfer.trainable_summary(model)
    return {
        "trainable_base_layer_count": summary["trainable_base_layer_count"],
        "trainable_params": summary["trainable_params"],
        "non_trainable_params": summary["non_trainable_params"],
    }


def load_trained_model(path: Path, info: RuntimeInfo, num_classes: int, image_size: int) -> Any:
    """Load a ``.keras`` model from an earlier stage and check it fits the current data."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: run the train_head stage first (dvc repro train_head)")
    try:
        with info.strategy.scope():
            model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        raise ModelError(
            f"{path}: cannot load the model ({exc}); rerun the stage that wrote it"
        ) from None
    got_classes = int(model.output_shape[-1])
    got_size = model.input_shape[1]
    if got_classes != num_classes or got_size != image_size:
        raise ModelError(
            f"{path} was trained for {got_classes} classes at {got_size}px but the data has "
            f"{num_classes} classes and model.image_size is {image_size}: rerun train_head"
        )
    return model


def file_digest(path: Path) -> str:
    """SHA-256 of a file (the upstream model is part of finetune's resume fingerprint)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def final_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``final_<name>`` for the numeric top-level entries of a stage's metrics JSON."""
    return {
        f"final_{k}": float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
