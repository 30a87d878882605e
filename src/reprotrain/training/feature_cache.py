"""Train a new head on base features computed once (train_head without augmentation).

The frozen base in inference mode is a fixed function of the image, so without
augmentation every epoch would recompute identical features: computing them once makes
each epoch ~a matrix multiply.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from reprotrain.config import TrainHeadConfig
from reprotrain.errors import ConfigError, DataError
from reprotrain.models import transfer
from reprotrain.runtime import RuntimeInfo
from reprotrain.timing import timed
from reprotrain.training.loop import TrainResult, compile_model, train
from reprotrain.training.options import RunOptions

logger = logging.getLogger(__name__)


def use_feature_cache(cfg: TrainHeadConfig, num_workers: int = 1) -> bool:
    """``auto`` caches features exactly when the head trains without augmentation.

    With augmentation every epoch sees different pixels, so features cannot be reused.
    Multi-worker runs train without it: every worker would compute every feature (the
    extraction is not sharded) and then all-reduce the gradients of a tiny head each step,
    slower than one machine; ``auto`` turns it off there and ``on`` is an error.
    """
    if num_workers > 1:
        if cfg.feature_cache == "on":
            raise ConfigError(
                "train_head.feature_cache = on does not work with runtime.distribute = "
                "multi_worker; set train_head.feature_cache: auto (or off)"
            )
        return False
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


def extract_features(model: Any, *datasets: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pooled base features and labels of every batch of each dataset (one pass, in order).

    One ``tf.function`` traced once, for a batch of any size, serves every dataset: a trace
    of the backbone costs seconds, and a function per split, retraced for its last short
    batch, traced four times for train + val (measured: 15 → 11 s for the default data).
    """
    extractor = transfer.feature_extractor(model)
    spec = datasets[0].element_spec[0] if datasets else None
    signature = None if spec is None else [tf.TensorSpec([None, *spec.shape[1:]], spec.dtype)]

    @tf.function(input_signature=signature)
    def features(x: Any) -> Any:
        return tf.cast(extractor(x, training=False), tf.float32)

    out = []
    for ds in datasets:
        feats, labels = [], []
        for batch in ds:
            x, y = batch[0], batch[1]
            feats.append(features(x).numpy())
            labels.append(np.asarray(y, dtype=np.int32))
        if not feats:
            raise DataError("cannot extract features: the dataset is empty")
        out.append((np.concatenate(feats), np.concatenate(labels)))
    return out


@timed("train")
def train_head_cached(  # noqa: PLR0913  (training.train's arguments plus the seed)
    model: Any,
    train_ds: Any,
    val_ds: Any,
    cfg: TrainHeadConfig,
    info: RuntimeInfo,
    run: RunOptions,
    *,
    seed: int,
    class_weight: Mapping[int, float] | None = None,
) -> TrainResult:
    """Train only the head on features computed once, then put it on the full model.

    ``train_ds`` must not augment (build it with ``training=False``). The head starts from
    the full model's initial Dense weights, so both paths start from the same point; the
    full model gets the trained weights back. The head-only run resumes like any other.
    """
    logger.info("feature cache: computing pooled base features once per split")
    (x_train, y_train), (x_val, y_val) = extract_features(model, train_ds, val_ds)
    head, result = fit_head(
        (x_train, y_train, x_val, y_val),
        model.get_layer(transfer.OUTPUT_NAME).get_weights(),
        cfg,
        info,
        run,
        seed=seed,
        class_weight=class_weight,
    )
    transfer.copy_head_weights(head, model)
    # The full model is what gets saved and fine-tuned: compile it like the plain path.
    compile_model(model, cfg, info)
    result.extra["feature_cache"] = True
    result.extra["feature_dim"] = int(x_train.shape[1])
    return result


def fit_head(
    features: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    initial: list[np.ndarray],
    cfg: TrainHeadConfig,
    info: RuntimeInfo,
    run: RunOptions,
    *,
    seed: int,
    class_weight: Mapping[int, float] | None = None,
) -> tuple[Any, TrainResult]:
    """A head-only model trained on pooled ``(x_train, y_train, x_val, y_val)`` features.

    It starts from ``initial`` (the full model's Dense weights, so both training paths start
    from the same point) and is trained by :func:`train` with ``run`` and ``class_weight``.
    Also what each trial of ``reprotrain tune`` trains.
    """
    x_train, y_train, x_val, y_val = features
    with info.strategy.scope():
        head = transfer.build_head_only(x_train.shape[1], initial[0].shape[-1], cfg.dropout)
    head.get_layer(transfer.OUTPUT_NAME).set_weights(initial)
    train_feats = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(y_train), seed=seed, reshuffle_each_iteration=True)
        .batch(cfg.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    val_feats = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(cfg.batch_size)
    return head, train(head, train_feats, val_feats, cfg, info, run, class_weight=class_weight)
