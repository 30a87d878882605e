"""Transfer learning: a pretrained backbone + a small classification head.

The model takes raw 0–255 RGB (what a client sends) and preprocesses it inside the graph
with the backbone's own serialisable layer (``preprocess``: for MobileNetV2 a
``Rescaling(1/127.5, offset=-1)``, exactly ``mobilenet_v2.preprocess_input``), which, unlike
a ``Lambda``, survives ``keras.saving.load_model(..., safe_mode=True)``. Backbones and their
preprocessing: :mod:`reprotrain.models.backbones`.

The base is called with ``training=False`` so its BatchNormalization layers always use
their ImageNet moving statistics, also after some of its layers are unfrozen for
fine-tuning: updating BN statistics on a few hundred images wrecks the pretrained features
(keras-io transfer-learning guide).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from reprotrain.config import ModelConfig
from reprotrain.errors import ModelError
from reprotrain.models import backbones
from reprotrain.timing import timed

logger = logging.getLogger(__name__)

#: Names later code relies on (feature cache, fine-tuning, evaluation).
BASE_NAME = backbones.BASE_NAME
PREPROCESS_NAME = backbones.PREPROCESS_NAME
POOL_NAME = "pool"
DROPOUT_NAME = "dropout"
OUTPUT_NAME = "predictions"
INPUT_NAME = "image"

#: Input sizes for which Keras publishes ImageNet MobileNetV2 weights.
IMAGENET_SIZES = backbones.MOBILENET_V2_IMAGENET_SIZES


def imagenet_weights_filename(alpha: float, image_size: int) -> str:
    """The MobileNetV2 file Keras looks for in ``$KERAS_HOME/models`` (and downloads if
    missing); other backbones: :func:`reprotrain.models.backbones.imagenet_weights_filename`."""
    return backbones.imagenet_weights_filename("mobilenet_v2", alpha, image_size)


def find_cached_imagenet_weights(alpha: float, image_size: int) -> Path | None:
    """The cached MobileNetV2 ImageNet weights file, or None (then Keras will download it)."""
    return backbones.find_cached_weights(imagenet_weights_filename(alpha, image_size))


def build_base(cfg: ModelConfig) -> Any:
    """The backbone's feature extractor (no top), named :data:`BASE_NAME`, frozen."""
    return backbones.build(cfg)[0]


def model_name(cfg: ModelConfig) -> str:
    """``mobilenetv2_1_224_transfer`` (the name MobileNetV2 models always had), or
    ``<backbone>_<size>_transfer``."""
    if cfg.backbone == "mobilenet_v2":
        return f"mobilenetv2_{cfg.alpha:g}_{cfg.image_size}_transfer"
    tag = cfg.backbone.rpartition(":")[2] if backbones.is_custom(cfg.backbone) else cfg.backbone
    return f"{tag}_{cfg.image_size}_transfer"


@timed("model")
def build_model(cfg: ModelConfig, num_classes: int, dropout: float) -> Any:
    """Raw RGB → preprocess → frozen base (inference mode) → GAP → Dropout → Dense softmax.

    The output layer computes in float32 even under a mixed-precision policy: softmax and
    the loss are numerically fragile in float16. A base that already pools (a custom one
    returning ``[batch, C]``) gets an ``Identity`` as its ``pool`` layer.
    """
    import keras

    if num_classes < 2:
        raise ModelError(f"need at least 2 classes to train a classifier, got {num_classes}")
    size = cfg.image_size
    inputs = keras.Input(shape=(size, size, 3), dtype="float32", name=INPUT_NAME)
    base, preprocess = backbones.build(cfg)
    x = preprocess(inputs)
    x = base(x, training=False)
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name=POOL_NAME)(x)
    else:
        x = keras.layers.Identity(name=POOL_NAME)(x)
    outputs = head_layers(num_classes, dropout)(x)
    return keras.Model(inputs, outputs, name=model_name(cfg))


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
    """The backbone inside a model built by :func:`build_model`."""
    try:
        return model.get_layer(BASE_NAME)
    except ValueError:
        raise ModelError(
            f"model {model.name!r} has no layer named {BASE_NAME!r}: it was not built by "
            "reprotrain.models.transfer.build_model"
        ) from None


def unfreeze_top(model: Any, n: int) -> list[str]:
    """Make the top ``n`` layers of the base trainable, except normalisation layers.

    "Layers" are the base's own layer list (``base.layers[-n:]``, as in Keras' guide), the
    same rule for every backbone; see :func:`reprotrain.models.backbones.unfreeze_top_layers`.
    Returns the names of the base layers that are now trainable (in order). The head stays
    trainable. The caller must recompile: ``trainable`` is read when the train step is
    built.
    """
    return backbones.unfreeze_top_layers(get_base(model), n)


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


def unfreeze_for_finetuning(model: Any, n: int) -> dict[str, Any]:
    """:func:`unfreeze_top` for the finetune stage: logs what now trains and returns it as
    the run's tags (layer count, names, trainable parameters), so a run in MLflow says
    which layers its numbers come from."""
    names = unfreeze_top(model, n)
    params = trainable_summary(model)["trainable_params"]
    logger.info(
        "finetune: %d trainable base layers (top %d, BatchNorm frozen), %d trainable params: %s",
        len(names),
        n,
        params,
        ", ".join(names) or "-",
    )
    return {
        "reprotrain.trainable_layer_count": len(names),
        "reprotrain.trainable_layers": ",".join(names),
        "reprotrain.trainable_params": params,
    }
