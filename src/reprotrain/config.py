"""``params.yaml`` → frozen, typed, validated dataclasses.

Why a hand-rolled loader: the rules are few (type, range, choices, no unknown keys), the
messages must be precise (``params.yaml: finetune.learning_rate = -1.0: must be > 0``), and a
dependency such as pydantic would be one more thing to pin for a dozen dataclasses.

Each section is a frozen dataclass; each field's ``metadata`` holds its ``help`` and its
constraints (``min``/``max``/``gt``/``choices``). ``load_params`` reads the file once and the
stages pass the typed sections down; nothing in ``src/`` reads ``params.yaml`` itself.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from reprotrain.errors import ConfigError

#: Public URL of the default dataset (the PyTorch transfer-learning tutorial's ants/bees).
HYMENOPTERA_URL = "https://download.pytorch.org/tutorial/hymenoptera_data.zip"
#: Content digest of that dataset (see ``reprotrain.data.fetch.tree_digest``).
HYMENOPTERA_DIGEST = "b0e3506710bc375be5996e1c9b29818c80cdfc19bcc324e560091da6690149ec"


def _f(default: Any, help: str, **rules: Any) -> Any:
    """A dataclass field with a help text and validation rules in its metadata."""
    if isinstance(default, dict | list):
        return field(default_factory=lambda: default.copy(), metadata={"help": help, **rules})
    return field(default=default, metadata={"help": help, **rules})


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and where prepared data goes (shared by all stages)."""

    source: str = _f(
        HYMENOPTERA_URL,
        "URL of a zip/tar, a local directory (class folders or train/val/test), an archive, "
        "or a CSV manifest (path,label[,split])",
    )
    mirror: str | None = _f(
        None,
        "offline copy of a URL source (directory or archive); env REPROTRAIN_DATA_MIRROR "
        "takes precedence",
    )
    sha256: str | None = _f(
        HYMENOPTERA_DIGEST,
        "expected content digest of a URL source (null: do not check)",
    )


@dataclass(frozen=True)
class ModelConfig:
    """The pretrained backbone; read by train_head (and image_size by every later stage)."""

    alpha: float = _f(1.0, "MobileNetV2 width multiplier", choices=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4))
    image_size: int = _f(224, "square input size in pixels", min=32, max=1024)
    weights: str = _f(
        "imagenet",
        "'imagenet' (Keras download or $KERAS_HOME/models), 'none', or a path to a weights file",
    )


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation applied to training batches only (after the cache)."""

    flip: bool = _f(True, "random horizontal flip")
    rotation: float = _f(0.05, "max rotation as a fraction of a full turn", min=0.0, max=0.5)
    zoom: float = _f(0.1, "max zoom in/out fraction", min=0.0, max=0.9)
    brightness: float = _f(0.1, "max brightness delta as a fraction of 255", min=0.0, max=1.0)
    contrast: float = _f(0.1, "max contrast change factor", min=0.0, max=1.0)


@dataclass(frozen=True)
class PipelineConfig:
    """The tf.data input pipeline shared by training and evaluation."""

    cache: str = _f("memory", "'memory', 'none', or a file path prefix for tf.data cache files")
    shuffle_buffer: int = _f(1024, "shuffle buffer size (examples)", min=1)
    deterministic: bool = _f(True, "keep element order deterministic in parallel maps")
    augment: AugmentConfig = _f(AugmentConfig(), "augmentation knobs")


@dataclass(frozen=True)
class RuntimeConfig:
    """Hardware and determinism knobs: applied at stage start and logged."""

    deterministic: bool = _f(True, "enable TF op determinism (identical results on CPU)")
    mixed_precision: Literal["auto", "on", "off"] = _f(
        "auto", "'auto' = mixed_float16 on GPU, float32 on CPU"
    )
    jit_compile: bool = _f(False, "XLA-compile the train step")
    distribute: Literal["auto", "none", "mirrored"] = _f(
        "auto", "'auto' = MirroredStrategy when more than one GPU is visible"
    )


@dataclass(frozen=True)
class PrepareConfig:
    """Splitting and TFRecord writing."""

    val_fraction: float = _f(
        0.15, "val share of all images when the source has no splits", gt=0.0, lt=1.0
    )
    test_fraction: float = _f(
        0.15, "test share of all images when the source has no splits", gt=0.0, lt=1.0
    )
    test_from_val: float = _f(
        0.5, "share of a given val split moved to test when there is no test split", gt=0.0, lt=1.0
    )
    shard_size: int = _f(128, "examples per TFRecord shard", min=1)
    max_side: int | None = _f(
        320, "downscale stored images so the longer side ≤ this (null: keep)", min=32
    )
    jpeg_quality: int = _f(95, "JPEG quality of re-encoded images", min=50, max=100)


@dataclass(frozen=True)
class TrainConfig:
    """Knobs shared by the train_head and finetune sections."""

    optimizer: Literal["adam", "sgd", "rmsprop", "adamw"] = _f("adam", "optimizer")
    learning_rate: float = _f(1e-3, "initial learning rate", gt=0.0, max=1.0)
    epochs: int = _f(10, "maximum epochs", min=1, max=10000)
    batch_size: int = _f(32, "batch size", min=1, max=4096)
    class_weight: str | dict[str, float] = _f(
        "none", "'none', 'balanced', or a map {class_name: weight}"
    )
    augment: bool = _f(False, "apply random augmentation to training batches")
    early_stopping_patience: int = _f(
        3, "epochs without val_loss improvement before stopping", min=1
    )
    reduce_lr_patience: int = _f(2, "epochs without improvement before halving the LR", min=1)
    loop: Literal["fit", "custom"] = _f("fit", "'fit' or a custom GradientTape loop")
    clip_norm: float | None = _f(None, "clip gradients by global norm (custom loop)", gt=0.0)

    def validate(self, prefix: str) -> None:
        """Cross-field check: ``class_weight`` strings and map values."""
        cw = self.class_weight
        if isinstance(cw, str) and cw not in ("none", "balanced"):
            raise _bad(f"{prefix}.class_weight", cw, "must be 'none', 'balanced' or a map")
        if isinstance(cw, dict):
            for name, w in cw.items():
                if w <= 0:
                    raise _bad(f"{prefix}.class_weight.{name}", w, "must be > 0")


@dataclass(frozen=True)
class TrainHeadConfig(TrainConfig):
    """Train a new head on the frozen base."""

    dropout: float = _f(0.2, "dropout before the classification layer", min=0.0, lt=1.0)
    feature_cache: Literal["auto", "on", "off"] = _f(
        "auto", "train the head on cached base features ('auto' = when augment is off)"
    )


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    """Unfreeze the top of the base and continue at a low learning rate."""

    learning_rate: float = _f(1e-5, "initial learning rate", gt=0.0, max=1.0)
    epochs: int = _f(5, "maximum epochs", min=1, max=10000)
    augment: bool = _f(True, "apply random augmentation to training batches")
    unfreeze_top: int = _f(30, "number of base layers (from the top) to unfreeze", min=0)


@dataclass(frozen=True)
class EvaluateConfig:
    """Held-out evaluation and the promotion gate."""

    batch_size: int = _f(64, "evaluation batch size", min=1)
    min_accuracy: float = _f(0.9, "absolute test-accuracy floor for promotion", min=0.0, max=1.0)
    min_improvement: float = _f(
        0.0, "accuracy the new model must add over the champion to be promoted", min=0.0, max=1.0
    )
    top_k: int = _f(5, "k for top-k accuracy (reported when there are more than 5 classes)", min=1)
    calibration_bins: int = _f(10, "bins for expected calibration error", min=2, max=100)
    worst_examples: int = _f(16, "misclassified test images shown in the grid", min=0)


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow: where runs go and how the model is registered."""

    experiment: str = _f("reprotrain", "MLflow experiment name")
    registered_model: str = _f("reprotrain-classifier", "MLflow registered model name")
    store: str = _f("mlruns", "project-relative directory for mlflow.db and artifacts")


@dataclass(frozen=True)
class Params:
    """Everything in ``params.yaml``."""

    seed: int = _f(42, "seed for Python, NumPy, TensorFlow and the splits", min=0)
    data: DataConfig = _f(DataConfig(), "data")
    model: ModelConfig = _f(ModelConfig(), "model")
    pipeline: PipelineConfig = _f(PipelineConfig(), "pipeline")
    runtime: RuntimeConfig = _f(RuntimeConfig(), "runtime")
    prepare: PrepareConfig = _f(PrepareConfig(), "prepare")
    train_head: TrainHeadConfig = _f(TrainHeadConfig(), "train_head")
    finetune: FinetuneConfig = _f(FinetuneConfig(), "finetune")
    evaluate: EvaluateConfig = _f(EvaluateConfig(), "evaluate")
    tracking: TrackingConfig = _f(TrackingConfig(), "tracking")


# --------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise _bad(key, value, f"must be {_type_name(tp)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed:
            return value
        raise _bad(key, value, f"must be one of {', '.join(repr(a) for a in allowed)}")
    if tp is type(None):
        if value is None:
            return None
        raise _bad(key, value, "must be null")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _bad(key, value, "must be a mapping (a section)")
        return _build(tp, value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(key, value, "must be a mapping")
        _, vt = typing.get_args(tp)
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _bad(key, value, "must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _bad(key, value, "must be an integer")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads "1e-5" (no dot) as a string; accept it, it is what people write.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _bad(key, value, "must be a number")
    if tp is str:
        if isinstance(value, str) and value.strip():
            return value
        raise _bad(key, value, "must be a non-empty string")
    raise AssertionError(f"unsupported type {tp!r} for {key}")  # pragma: no cover


def _bad(key: str, value: Any, rule: str) -> ConfigError:
    return ConfigError(f"params.yaml: {key} = {value!r}: {rule}")


def _check_rules(value: Any, meta: dict[str, Any], key: str) -> None:
    if value is None or isinstance(value, bool | str | dict):
        if "choices" in meta and value not in meta["choices"] and value is not None:
            raise _bad(key, value, f"must be one of {', '.join(map(repr, meta['choices']))}")
        return
    checks = {
        "min": (lambda v, b: v >= b, ">="),
        "max": (lambda v, b: v <= b, "<="),
        "gt": (lambda v, b: v > b, ">"),
        "lt": (lambda v, b: v < b, "<"),
    }
    for name, (ok, sym) in checks.items():
        if name in meta and not ok(value, meta[name]):
            raise _bad(key, value, f"must be {sym} {meta[name]}")
    if "choices" in meta and value not in meta["choices"]:
        raise _bad(key, value, f"must be one of {', '.join(map(repr, meta['choices']))}")


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"params.yaml: unknown key '{where}{unknown[0]}'; allowed in "
            f"{prefix or 'the top level'}: {', '.join(sorted(fields))}"
        )
    values = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in raw:
            continue
        value = _coerce(raw[name], hints[name], key)
        _check_rules(value, dict(f.metadata), key)
        values[name] = value
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if check:
        check(prefix)
    return obj


def params_from_dict(raw: dict[str, Any] | None) -> Params:
    """Validate a parsed ``params.yaml`` mapping; missing keys take the defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"params.yaml: the top level must be a mapping, got {type(raw).__name__}")
    return _build(Params, raw, "")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``path``; every problem is a one-line :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"params file not found: {path} (run from the project root, or pass the path)"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    return params_from_dict(raw)


def to_dict(obj: Any) -> Any:
    """A plain-data copy of a config object (for JSON, YAML and MLflow)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def flatten(section: Any, prefix: str = "") -> dict[str, Any]:
    """``{"finetune.learning_rate": 1e-05, ...}``: the form MLflow params and DVC keys use."""
    data = to_dict(section)
    out: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and value and not key.endswith("class_weight"):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        else:
            out[key] = value

    walk(data, prefix)
    return out
