"""``loop: custom``: a ``tf.function`` GradientTape step driving the same callbacks as
Keras ``fit`` (backups, early stopping, TensorBoard, the per-epoch hook).

Why its own module: the epoch driver is the same for every task, while the step is not: a
classifier's loss is Keras' class-weighted cross-entropy (label smoothing included), a
regression's the compiled mean loss with ``mae`` as its metric. :func:`fit_custom` runs the
epochs around whichever step :func:`classifier_step` or :func:`regression_step` builds, so a
change to one task's step never touches the other's (the classifier's weights stay
bit-identical to what they were).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from reprotrain.config import TrainConfig
from reprotrain.errors import ConfigError
from reprotrain.runtime import MIXED, RuntimeInfo
from reprotrain.training import optim


@dataclass(frozen=True)
class Step:
    """One task's train step and the running metrics it updates (reset every epoch)."""

    run: Callable[[Any, Any], None]
    loss: Any  # keras.metrics.Mean
    metric: Any  # accuracy or mae
    metric_name: str


def _check_one_device(info: RuntimeInfo) -> None:
    if info.replicas > 1:
        raise ConfigError(
            "loop = custom runs on one device; use loop: fit with runtime.distribute: "
            "mirrored or multi_worker (or distribute: none with the custom loop)"
        )


def _apply(model: Any, tape: Any, loss: Any, clip: float | None) -> None:
    """Gradients of the (loss-scaled) ``loss``, clipped by global norm, applied."""
    variables = model.trainable_variables
    grads = tape.gradient(model.optimizer.scale_loss(loss), variables)
    if clip is not None:
        grads, _ = tf.clip_by_global_norm(grads, clip)
    model.optimizer.apply_gradients(zip(grads, variables, strict=True))


def _with_model_losses(model: Any, loss: Any) -> Any:
    if model.losses:
        loss += tf.add_n([tf.cast(t, tf.float32) for t in model.losses])
    return loss


def _clip(cfg: TrainConfig, info: RuntimeInfo) -> float | None:
    return cfg.clip_norm if info.mixed_precision != MIXED else None  # else: global_clipnorm


def classifier_step(
    model: Any, cfg: TrainConfig, info: RuntimeInfo, class_weight: dict[int, float] | None
) -> Step:
    """The loss matches Keras': per-example cross-entropy times the class weight, summed and
    divided by the batch size."""
    _check_one_device(info)
    num_classes = int(model.output_shape[-1])
    weights = [float((class_weight or {}).get(i, 1.0)) for i in range(num_classes)]
    cw = tf.constant(weights, tf.float32)
    clip = _clip(cfg, info)
    loss_mean = keras.metrics.Mean(name="loss")
    acc = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    @tf.function(jit_compile=info.jit_compile, reduce_retracing=True)
    def train_step(x: Any, y: Any) -> None:
        y = tf.cast(y, tf.int32)
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            per_example = optim.per_example_loss(cfg, y, probs, num_classes)
            w = tf.gather(cw, y)
            batch = tf.cast(tf.shape(y)[0], tf.float32)
            loss = tf.reduce_sum(tf.cast(per_example, tf.float32) * w) / batch
            loss = _with_model_losses(model, loss)
        _apply(model, tape, loss, clip)
        loss_mean.update_state(loss, sample_weight=batch)
        acc.update_state(y, probs)

    return Step(train_step, loss_mean, acc, "accuracy")


def regression_step(model: Any, cfg: TrainConfig, info: RuntimeInfo, loss_name: str) -> Step:
    """The compiled regression loss (Keras' mean over the batch), ``mae`` as its metric."""
    _check_one_device(info)
    loss_fn = keras.losses.get(loss_name)
    clip = _clip(cfg, info)
    loss_mean = keras.metrics.Mean(name="loss")
    mae = keras.metrics.MeanAbsoluteError(name="mae")

    @tf.function(jit_compile=info.jit_compile, reduce_retracing=True)
    def train_step(x: Any, y: Any) -> None:
        y = tf.cast(y, tf.float32)
        with tf.GradientTape() as tape:
            pred = tf.cast(model(x, training=True), tf.float32)
            loss = _with_model_losses(model, tf.reduce_mean(loss_fn(y, pred)))
        _apply(model, tape, loss, clip)
        loss_mean.update_state(loss, sample_weight=tf.cast(tf.shape(y)[0], tf.float32))
        mae.update_state(y, pred)

    return Step(train_step, loss_mean, mae, "mae")


def fit_custom(  # noqa: PLR0913  (fit's arguments, mirrored so both loops read alike)
    model: Any,
    step: Step,
    train_ds: Any,
    validate: Callable[[], dict[str, float]],
    callbacks: list[Any],
    *,
    epochs: int,
    initial_epoch: int = 0,
    verbose: int = 0,
) -> None:
    """Run epochs ``initial_epoch..epochs`` of ``step`` over ``train_ds``, calling the
    callbacks as ``fit`` does; ``validate()`` gives the epoch's ``val_*`` metrics."""
    cbs = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=verbose > 0,
        model=model,
        verbose=verbose,
        epochs=epochs,
        steps=None,
    )
    model.stop_training = False
    cbs.on_train_begin()
    logs: dict[str, float] = {}
    for epoch in range(initial_epoch, epochs):
        step.loss.reset_state()
        step.metric.reset_state()
        cbs.on_epoch_begin(epoch)
        for i, (x, y) in enumerate(train_ds):
            cbs.on_train_batch_begin(i)
            step.run(x, y)
            cbs.on_train_batch_end(i, _logs(step))
        logs = {**_logs(step), **validate()}
        cbs.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    cbs.on_train_end(logs)


def _logs(step: Step) -> dict[str, float]:
    return {"loss": float(step.loss.result()), step.metric_name: float(step.metric.result())}
