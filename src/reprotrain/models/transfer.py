"""MobileNetV2 transfer learning: pretrained base + a small classification head.

The model takes raw 0–255 RGB (what a client sends) and scales it inside the graph with a
``Rescaling(1/127.5, offset=-1)`` layer, which is exactly ``mobilenet_v2.preprocess_input``
and, unlike a ``Lambda``, survives ``keras.saving.load_model(..., safe_mode=True)``.

The base is called with ``training=False`` so its BatchNormalization layers always use
their ImageNet moving statistics, also after some of its layers are unfrozen for
fine-tuning: updating BN statistics on a few hundred images wrecks the pretrained features
(keras-io transfer-learning guide).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from reprotrain.config import ModelConfig
from reprotrain.errors import ModelError

logger = logging.getLogger(__name__)

#: Names later code relies on (feature cache, fine-tuning, evaluation).
BASE_NAME = "base"
PREPROCESS_NAME = "preprocess"
POOL_NAME = "pool"
DROPOUT_NAME = "dropout"
OUTPUT_NAME = "predictions"
INPUT_NAME = "image"

#: Input sizes for which Keras publishes ImageNet MobileNetV2 weights.
IMAGENET_SIZES = (96, 128, 160, 192, 224)


def imagenet_weights_filename(alpha: float, image_size: int) -> str:
    """The file Keras looks for in ``$KERAS_HOME/models`` (and downloads if missing)."""
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{image_size}_no_top.h5"


def _keras_cache_dirs() -> list[Path]:
    """Where ``keras.utils.get_file`` caches downloads: ``$KERAS_HOME`` or ``~/.keras``,
    and ``/tmp/.keras`` when that is not writable (Keras' own fallback)."""
    home = Path(os.environ.get("KERAS_HOME") or Path("~/.keras").expanduser())
    return [home / "models", Path("/tmp/.keras/models")]


def find_cached_imagenet_weights(alpha: float, image_size: int) -> Path | None:
    """The cached ImageNet weights file, or None (then Keras will try to download it).

    Resolved here, at call time, because Keras reads ``KERAS_HOME`` once at import.
    """
    name = imagenet_weights_filename(alpha, image_size)
    for d in _keras_cache_dirs():
        if (d / name).is_file():
            return d / name
    return None


def _missing_weights_error(cfg: ModelConfig, reason: str) -> ModelError:
    name = imagenet_weights_filename(cfg.alpha, cfg.image_size)
    home = os.environ.get("KERAS_HOME") or "~/.keras"
    return ModelError(
        f"model.weights = imagenet: cannot load {name} ({reason}). Either let Keras "
        f"download it (internet access), or set KERAS_HOME to a directory whose models/ "
        f"holds {name} (now: {home}), or set model.weights to the path of a weights file, "
        f"or to 'none' to train from random weights"
    )


def _base_weights(cfg: ModelConfig) -> str | None:
    """The ``weights`` argument for ``MobileNetV2``, validated with actionable errors."""
    w = cfg.weights
    if w.lower() == "none":
        return None
    if w == "imagenet":
        if cfg.image_size not in IMAGENET_SIZES:
            raise ModelError(
                f"model.image_size = {cfg.image_size}: ImageNet MobileNetV2 weights exist "
                f"only for sizes {', '.join(map(str, IMAGENET_SIZES))}; pick one of them, "
                "or set model.weights to 'none' or a weights file"
            )
        return "imagenet"
    path = Path(w).expanduser()
    if not path.is_file():
        raise ModelError(
            f"model.weights = {w!r}: no such file; use 'imagenet', 'none', or the path of a "
            "MobileNetV2 (include_top=False) weights file"
        )
    return str(path)


def build_base(cfg: ModelConfig) -> Any:
    """The MobileNetV2 feature extractor (no top), named :data:`BASE_NAME`, frozen."""
    import keras

    weights = _base_weights(cfg)
    size = cfg.image_size
    kwargs = dict(input_shape=(size, size, 3), include_top=False, alpha=cfg.alpha, name=BASE_NAME)
    if weights == "imagenet":
        cached = find_cached_imagenet_weights(cfg.alpha, size)
        if cached is not None:
            logger.info("ImageNet weights: %s", cached)
            weights = str(cached)
        else:
            logger.info("ImageNet weights not cached: asking Keras to download them")
    try:
        base = keras.applications.MobileNetV2(weights=weights, **kwargs)
    except Exception as exc:  # download failure, corrupt/mismatching h5: all user-fixable
        if cfg.weights == "imagenet":
            raise _missing_weights_error(cfg, f"{type(exc).__name__}: {exc}") from None
        raise ModelError(
            f"model.weights = {cfg.weights!r}: cannot load into MobileNetV2 alpha={cfg.alpha} "
            f"image_size={size}: {exc}"
        ) from None
    base.trainable = False
    return base


def build_model(cfg: ModelConfig, num_classes: int, dropout: float) -> Any:
    """Raw RGB → preprocess → frozen base (inference mode) → GAP → Dropout → Dense softmax.

    The output layer computes in float32 even under a mixed-precision policy: softmax and
    the loss are numerically fragile in float16.
    """
    import keras

    if num_classes < 2:
        raise ModelError(f"need at least 2 classes to train a classifier, got {num_classes}")
    size = cfg.image_size
    inputs = keras.Input(shape=(size, size, 3), dtype="float32", name=INPUT_NAME)
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=PREPROCESS_NAME)(inputs)
    base = build_base(cfg)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name=POOL_NAME)(x)
    outputs = head_layers(num_classes, dropout)(x)
    return keras.Model(inputs, outputs, name=f"mobilenetv2_{cfg.alpha:g}_{size}_transfer")


def head_layers(num_classes: int, dropout: float) -> Any:
    """A callable applying Dropout → Dense; shared by the full and the feature-cache model."""
    import keras

    drop = keras.layers.Dropout(dropout, name=DROPOUT_NAME)
    dense = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=OUTPUT_NAME)

    def apply(x: Any) -> Any:
        return dense(drop(x))

    return apply


def build_head_only(feature_dim: int, num_classes: int, dropout: float) -> Any:
    """The head alone, on pooled base features (the feature-cache fast path)."""
    import keras

    inputs = keras.Input(shape=(feature_dim,), name="features")
    return keras.Model(inputs, head_layers(num_classes, dropout)(inputs), name="head_only")


def feature_extractor(model: Any) -> Any:
    """Raw images → pooled base features, sharing the full model's layers."""
    import keras

    return keras.Model(model.inputs, model.get_layer(POOL_NAME).output, name="features")


def copy_head_weights(head: Any, model: Any) -> None:
    """Put the head-only model's trained Dense weights into the full model."""
    model.get_layer(OUTPUT_NAME).set_weights(head.get_layer(OUTPUT_NAME).get_weights())


def get_base(model: Any) -> Any:
    """The MobileNetV2 base inside a model built by :func:`build_model`."""
    try:
        return model.get_layer(BASE_NAME)
    except ValueError:
        raise ModelError(
            f"model {model.name!r} has no layer named {BASE_NAME!r}: it was not built by "
            "reprotrain.models.transfer.build_model"
        ) from None


def unfreeze_top(model: Any, n: int) -> list[str]:
    """Make the top ``n`` layers of the base trainable, except BatchNormalization.

    Returns the names of the base layers that are now trainable (in order). The head stays
    trainable. The caller must recompile: ``trainable`` is read when the train step is
    built.
    """
    import keras

    base = get_base(model)
    base.trainable = True
    layers = base.layers
    cut = max(len(layers) - n, 0) if n > 0 else len(layers)
    names: list[str] = []
    for i, layer in enumerate(layers):
        train = (
            i >= cut
            and not isinstance(layer, keras.layers.BatchNormalization)
            and bool(layer.weights)
        )
        layer.trainable = train
        if train:
            names.append(layer.name)
    return names


def trainable_summary(model: Any) -> dict[str, Any]:
    """Trainable layers (base and head) and parameter counts, for logs and metrics."""
    import numpy as np

    base = get_base(model)
    base_layers = [lyr.name for lyr in base.layers if lyr.trainable and lyr.trainable_weights]
    other = [
        lyr.name
        for lyr in model.layers
        if lyr is not base and lyr.trainable and lyr.trainable_weights
    ]

    def count(weights: list[Any]) -> int:
        return int(sum(int(np.prod(w.shape)) for w in weights))

    return {
        "trainable_base_layers": base_layers,
        "trainable_base_layer_count": len(base_layers),
        "trainable_head_layers": other,
        "trainable_params": count(model.trainable_weights),
        "non_trainable_params": count(model.non_trainable_weights),
    }
