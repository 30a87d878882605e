"""Transfer backbones: the ``keras.applications`` bases reprotrain knows, and user-supplied ones.

A backbone is *(base, preprocess)*: ``base`` maps preprocessed ``[B, S, S, 3]`` images to a
feature map ``[B, h, w, C]`` (or pooled features ``[B, C]``), and ``preprocess`` is one
Keras layer taking the raw 0–255 RGB a client sends to what ``base`` expects. Both are
plain, serialisable Keras layers (no ``Lambda``), so every saved model loads with
``safe_mode=True`` and every exported format takes raw pixels.

Preprocessing per backbone, chosen to match what Keras' ImageNet weights were trained with:

* ``mobilenet_v2``, ``resnet50_v2``: ``Rescaling(1/127.5, offset=-1)`` (Keras'
  ``preprocess_input`` in ``mode="tf"``) as the model's ``preprocess`` layer.
* ``mobilenet_v3_*``, ``efficientnet_v2_b0``, ``convnext_tiny``: Keras builds the
  preprocessing into the base itself (``include_preprocessing=True``: a ``Rescaling`` or an
  ImageNet mean/std ``Normalization``), so the model's ``preprocess`` layer is an
  ``Identity``. We keep Keras' default rather than moving those layers out: it is the path
  Keras tests its weight files with.

Weights: ``imagenet`` (the file is looked up in ``$KERAS_HOME/models`` at call time, else
Keras downloads it), ``none`` (random), or a path to a no-top weights file.

A user backbone is ``model.backbone: package.module:function``; see :func:`load_custom`.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reprotrain.config import BUILTIN_BACKBONES, ModelConfig
from reprotrain.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

BASE_NAME = "base"
PREPROCESS_NAME = "preprocess"

#: Input sizes for which Keras publishes ImageNet MobileNetV2 weights.
MOBILENET_V2_IMAGENET_SIZES = (96, 128, 160, 192, 224)
#: Width multipliers with ImageNet MobileNetV3 (non-minimalistic) weights.
MOBILENET_V3_IMAGENET_ALPHAS = (0.75, 1.0)


@dataclass(frozen=True)
class Spec:
    """How to build one ``keras.applications`` base."""

    constructor: str  # attribute of keras.applications
    builtin_preprocessing: bool  # True: the base rescales/normalises itself
    uses_alpha: bool = False


SPECS: dict[str, Spec] = {
    "mobilenet_v2": Spec("MobileNetV2", builtin_preprocessing=False, uses_alpha=True),
    "mobilenet_v3_small": Spec("MobileNetV3Small", builtin_preprocessing=True, uses_alpha=True),
    "mobilenet_v3_large": Spec("MobileNetV3Large", builtin_preprocessing=True, uses_alpha=True),
    "efficientnet_v2_b0": Spec("EfficientNetV2B0", builtin_preprocessing=True),
    "resnet50_v2": Spec("ResNet50V2", builtin_preprocessing=False),
    "convnext_tiny": Spec("ConvNeXtTiny", builtin_preprocessing=True),
}
assert set(SPECS) == set(BUILTIN_BACKBONES), "config.BUILTIN_BACKBONES and SPECS disagree"


def is_custom(backbone: str) -> bool:
    """``package.module:function`` rather than a built-in name."""
    return ":" in backbone


def imagenet_weights_filename(backbone: str, alpha: float = 1.0, image_size: int = 224) -> str:
    """The exact file Keras looks for in ``$KERAS_HOME/models`` (and downloads if missing).

    Taken from ``keras/src/applications/*.py`` (Keras 3.15): each application builds the name
    of its ``include_top=False`` file this way.
    """
    if backbone == "mobilenet_v2":
        return (
            f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{image_size}_no_top.h5"
        )
    if backbone in ("mobilenet_v3_small", "mobilenet_v3_large"):
        kind = backbone.rsplit("_", 1)[1]
        return f"weights_mobilenet_v3_{kind}_224_{float(alpha)}_float_no_top_v2.h5"
    if backbone == "efficientnet_v2_b0":
        return "efficientnetv2-b0_notop.h5"
    if backbone == "resnet50_v2":
        return "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
    if backbone == "convnext_tiny":
        return "convnext_tiny_notop.h5"
    raise ModelError(f"model.backbone = {backbone!r}: no ImageNet weights file is known for it")


def keras_cache_dirs() -> list[Path]:
    """Where ``keras.utils.get_file`` caches downloads: ``$KERAS_HOME`` or ``~/.keras``,
    and ``/tmp/.keras`` when that is not writable (Keras' own fallback)."""
    home = Path(os.environ.get("KERAS_HOME") or Path("~/.keras").expanduser())
    return [home / "models", Path("/tmp/.keras/models")]


def find_cached_weights(filename: str) -> Path | None:
    """The cached weights file, or None (then Keras will try to download it).

    Resolved here, at call time, because Keras reads ``KERAS_HOME`` once at import.
    """
    for d in keras_cache_dirs():
        if (d / filename).is_file():
            return d / filename
    return None


def _missing_weights_error(name: str, reason: str) -> ModelError:
    home = os.environ.get("KERAS_HOME") or "~/.keras"
    return ModelError(
        f"model.weights = imagenet: cannot load {name} ({reason}). Either let Keras "
        f"download it (internet access), or set KERAS_HOME to a directory whose models/ "
        f"holds {name} (now: {home}), or set model.weights to the path of a weights file, "
        f"or to 'none' to train from random weights"
    )


def _check_imagenet(cfg: ModelConfig) -> None:
    """The combinations Keras has no ImageNet weights for, as one actionable line."""
    if cfg.backbone == "mobilenet_v2" and cfg.image_size not in MOBILENET_V2_IMAGENET_SIZES:
        raise ModelError(
            f"model.image_size = {cfg.image_size}: ImageNet MobileNetV2 weights exist "
            f"only for sizes {', '.join(map(str, MOBILENET_V2_IMAGENET_SIZES))}; pick one of "
            "them, or set model.weights to 'none' or a weights file"
        )
    if cfg.backbone.startswith("mobilenet_v3") and cfg.alpha not in MOBILENET_V3_IMAGENET_ALPHAS:
        raise ModelError(
            f"model.alpha = {cfg.alpha}: ImageNet MobileNetV3 weights exist only for alpha "
            f"0.75 and 1.0; pick one, or set model.weights to 'none' or a weights file"
        )


def resolve_weights(cfg: ModelConfig) -> str | None:
    """The ``weights`` argument for the Keras constructor: None, ``'imagenet'`` (not cached:
    Keras downloads it) or a file path (the cached ImageNet file, or the user's file)."""
    w = cfg.weights
    if w.lower() == "none":
        return None
    if w == "imagenet":
        _check_imagenet(cfg)
        name = imagenet_weights_filename(cfg.backbone, cfg.alpha, cfg.image_size)
        cached = find_cached_weights(name)
        if cached is not None:
            logger.info("ImageNet weights: %s", cached)
            return str(cached)
        logger.info("ImageNet weights %s not cached: asking Keras to download them", name)
        return "imagenet"
    path = Path(w).expanduser()
    if not path.is_file():
        raise ModelError(
            f"model.weights = {w!r}: no such file; use 'imagenet', 'none', or the path of a "
            f"{cfg.backbone} (include_top=False) weights file"
        )
    return str(path)


def build_builtin(cfg: ModelConfig) -> tuple[Any, Any]:
    """``(base, preprocess)`` for a ``keras.applications`` backbone; the base is frozen."""
    import keras

    spec = SPECS[cfg.backbone]
    weights = resolve_weights(cfg)
    size = cfg.image_size
    kwargs: dict[str, Any] = dict(input_shape=(size, size, 3), include_top=False)
    if spec.uses_alpha:
        kwargs["alpha"] = cfg.alpha
    if spec.builtin_preprocessing:
        kwargs["include_preprocessing"] = True
    try:
        base = getattr(keras.applications, spec.constructor)(weights=weights, **kwargs)
    except Exception as exc:  # download failure, corrupt/mismatching h5: all user-fixable
        if cfg.weights == "imagenet":
            name = imagenet_weights_filename(cfg.backbone, cfg.alpha, size)
            raise _missing_weights_error(name, f"{type(exc).__name__}: {exc}") from None
        raise ModelError(
            f"model.weights = {cfg.weights!r}: cannot load into {cfg.backbone} "
            f"alpha={cfg.alpha} image_size={size}: {exc}"
        ) from None
    # Keras derives weight file names from the default model name (EfficientNetV2, ConvNeXt),
    # so the base is renamed after construction, not through ``name=``.
    base.name = BASE_NAME
    if spec.builtin_preprocessing:
        preprocess = keras.layers.Identity(name=PREPROCESS_NAME)
    else:
        preprocess = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=PREPROCESS_NAME)
    base.trainable = False
    return base, preprocess


# --------------------------------------------------------------------------- user backbones

CUSTOM_CONTRACT = (
    "a function (image_size: int, weights: str | None) -> (base, preprocess), where base is "
    "a keras.Model taking [batch, image_size, image_size, 3] preprocessed images to a 4-D "
    "feature map or 2-D features, and preprocess is a keras Layer taking raw 0-255 RGB to "
    "base's input (or None: the base takes raw pixels)"
)


def import_function(ref: str, key: str = "model.backbone") -> Callable[..., Any]:
    """``package.module:function`` → the function, with one-line errors naming ``key``."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key} = {ref!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module itself failing at import
        raise ConfigError(
            f"{key} = {ref!r}: cannot import {module_name} ({type(exc).__name__}: "
            f"{exc}); install the package or put it on PYTHONPATH"
        ) from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{key} = {ref!r}: {module_name} has no function {attr!r}")
    return fn


def load_custom(cfg: ModelConfig) -> tuple[Any, Any]:
    """Call the user's ``package.module:function`` and check its result.

    Contract (see :data:`CUSTOM_CONTRACT`): ``fn(image_size, weights)`` with ``weights``
    being ``model.weights`` as written (``'imagenet'``, a path) or None for ``'none'``;
    returns ``(base, preprocess)``. For the saved model to load with ``safe_mode=True``, any
    custom layer inside must be registered with
    ``@keras.saving.register_keras_serializable()`` and its module imported before loading.
    """
    import keras

    fn = import_function(cfg.backbone)
    weights = None if cfg.weights.lower() == "none" else cfg.weights
    where = f"model.backbone = {cfg.backbone!r}"
    try:
        result = fn(cfg.image_size, weights)
    except Exception as exc:
        raise ModelError(f"{where}: the function failed: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ModelError(f"{where}: returned {type(result).__name__}; expected {CUSTOM_CONTRACT}")
    base, preprocess = result
    if not isinstance(base, keras.Model):
        raise ModelError(
            f"{where}: base is a {type(base).__name__}, not a keras.Model; "
            f"expected {CUSTOM_CONTRACT}"
        )
    if preprocess is None:
        preprocess = keras.layers.Identity(name=PREPROCESS_NAME)
    if not isinstance(preprocess, keras.layers.Layer) or isinstance(
        preprocess, keras.layers.Lambda
    ):
        raise ModelError(
            f"{where}: preprocess is a {type(preprocess).__name__}; expected a serialisable "
            "keras Layer (not a Lambda: it does not load with safe_mode=True) or None"
        )
    size = cfg.image_size
    probe = keras.KerasTensor((None, size, size, 3))
    try:
        out = base.compute_output_spec(preprocess.compute_output_spec(probe))
    except Exception as exc:
        raise ModelError(
            f"{where}: preprocess + base do not accept [batch, {size}, {size}, 3] images "
            f"({type(exc).__name__}: {exc}); expected {CUSTOM_CONTRACT}"
        ) from exc
    if len(out.shape) not in (2, 4):
        raise ModelError(
            f"{where}: base outputs shape {tuple(out.shape)}; expected a 4-D feature map "
            "[batch, h, w, channels] or 2-D features [batch, channels]"
        )
    base.name = BASE_NAME
    preprocess.name = PREPROCESS_NAME
    base.trainable = False
    return base, preprocess


def build(cfg: ModelConfig) -> tuple[Any, Any]:
    """``(base, preprocess)`` for ``cfg.backbone``: frozen base, serialisable preprocessing."""
    return load_custom(cfg) if is_custom(cfg.backbone) else build_builtin(cfg)


# --------------------------------------------------------------------------- unfreezing


def frozen_kinds() -> tuple[type, ...]:
    """Layers that stay frozen when unfreezing: normalisation statistics/affines trained on
    ImageNet-sized batches, which a few hundred images would wreck."""
    import keras

    return (
        keras.layers.BatchNormalization,
        keras.layers.LayerNormalization,
        keras.layers.GroupNormalization,
        keras.layers.Normalization,
    )


def set_trainable(layer: Any, trainable: bool) -> list[str]:
    """Set ``layer`` (recursing into nested models such as ConvNeXt's downsampling
    ``Sequential``) trainable, except normalisation layers; the names made trainable."""
    if trainable and isinstance(layer, frozen_kinds()):
        layer.trainable = False
        return []
    inner = getattr(layer, "layers", None)
    if inner:
        layer.trainable = True  # a container: its children decide
        names = [n for sub in inner for n in set_trainable(sub, trainable)]
        if not names:
            layer.trainable = False
        return [f"{layer.name}/{n}" for n in names]
    layer.trainable = trainable and bool(layer.weights)
    return [layer.name] if layer.trainable else []


def unfreeze_top_layers(base: Any, n: int) -> list[str]:
    """Make the top ``n`` entries of ``base.layers`` trainable (normalisation stays frozen).

    "Layers" are the base's own layer list, as in Keras' transfer-learning guide
    (``base.layers[-n:]``), for every backbone: a nested model counts as one layer and is
    unfrozen as a whole; layers without weights (activations, adds, pooling) count but have
    nothing to train. Returns the names of the now-trainable layers (in order).
    """
    base.trainable = True
    layers = base.layers
    cut = max(len(layers) - n, 0) if n > 0 else len(layers)
    names: list[str] = []
    for i, layer in enumerate(layers):
        names.extend(set_trainable(layer, i >= cut))
    return names
