"""What a compile needs: the optimizer, its learning-rate schedule and the loss.

One place for the three, so ``fit`` and the custom ``GradientTape`` loop train on the same
learning rates and the same loss. Defaults keep what the stages always did (a constant rate
that ``ReduceLROnPlateau`` halves, plain sparse cross-entropy): a run with the defaults
compiles exactly the graph it compiled before, so its weights stay bit-identical.

Recipes (each a :class:`reprotrain.config.TrainConfig` field, off by default):

- ``schedule: cosine``: ``keras.optimizers.schedules.CosineDecay`` from ``learning_rate``
  to 0 over the run's steps, after ``warmup_epochs`` of linear warmup from 0
  (``warmup_target``/``warmup_steps``). The rate is a function of the optimizer's step
  counter, which the epoch backups save, so a resumed run continues on the same curve.
  ``ReduceLROnPlateau`` cannot set a scheduled rate and is left out.
- ``label_smoothing``: cross-entropy against ``(1 - ε)·onehot + ε/K``; Keras' sparse loss
  has no smoothing, so the integer labels are one-hot encoded inside the loss (the data
  pipeline and its guarantees stay untouched).
"""

from __future__ import annotations

from typing import Any

import keras

from reprotrain.config import TrainConfig
from reprotrain.errors import ConfigError

SPARSE_CE = "sparse_categorical_crossentropy"


def make_optimizer(name: str, learning_rate: Any, global_clipnorm: float | None = None) -> Any:
    """A fresh Keras optimizer (each compile needs its own); ``learning_rate`` is a float
    or a ``LearningRateSchedule`` (:func:`learning_rate`)."""
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


def uses_schedule(cfg: TrainConfig) -> bool:
    """True when the rate follows a schedule (then ``ReduceLROnPlateau`` must stay out)."""
    return cfg.schedule != "constant"


def learning_rate(cfg: TrainConfig, steps_per_epoch: int | None) -> Any:
    """``cfg.learning_rate`` as a float, or the schedule ``cfg.schedule`` names.

    Cosine: warmup from 0 to ``learning_rate`` over ``warmup_epochs`` epochs, then cosine
    decay to 0 over the remaining ones. It needs the steps per epoch (the train dataset's
    length), which every prepared split has.
    """
    if not uses_schedule(cfg):
        return cfg.learning_rate
    if steps_per_epoch is None or steps_per_epoch <= 0:
        raise ConfigError(
            f"schedule = {cfg.schedule}: the train dataset's length is unknown; use "
            "schedule: constant, or rerun prepare so the split has a known size"
        )
    warmup = cfg.warmup_epochs * steps_per_epoch
    decay = max(1, (cfg.epochs - cfg.warmup_epochs) * steps_per_epoch)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay, warmup_target=cfg.learning_rate, warmup_steps=warmup
    )


def scheduled_rate(schedule: Any, step: int) -> float:
    """The rate a float or schedule gives at optimizer step ``step`` (for logs and tests)."""
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return float(schedule(step))
    return float(schedule)


@keras.saving.register_keras_serializable(package="reprotrain")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels with label smoothing (one-hot inside the loss)."""

    def __init__(
        self,
        num_classes: int,
        label_smoothing: float,
        name: str = "smoothed_sparse_crossentropy",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return smoothed_crossentropy(y_true, y_pred, self.num_classes, self.label_smoothing)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "label_smoothing": self.label_smoothing,
        }


def smoothed_crossentropy(y_true: Any, y_pred: Any, num_classes: int, smoothing: float) -> Any:
    """Per-example cross-entropy against smoothed one-hot targets of integer ``y_true``."""
    labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
    target = keras.ops.one_hot(labels, num_classes)
    return keras.losses.categorical_crossentropy(target, y_pred, label_smoothing=smoothing)


def make_loss(cfg: TrainConfig, model: Any) -> Any:
    """The compile loss: Keras' sparse cross-entropy, or its smoothed twin (which reads the
    class count from ``model``'s output; only then, so an unbuilt subclassed model without
    smoothing compiles as before)."""
    if cfg.label_smoothing == 0:
        return SPARSE_CE
    return SmoothedSparseCrossentropy(int(model.output_shape[-1]), cfg.label_smoothing)


def per_example_loss(cfg: TrainConfig, y: Any, probs: Any, num_classes: int) -> Any:
    """The custom loop's per-example loss, the same function :func:`make_loss` compiles."""
    if cfg.label_smoothing == 0:
        return keras.losses.sparse_categorical_crossentropy(y, probs)
    return smoothed_crossentropy(y, probs, num_classes, cfg.label_smoothing)
