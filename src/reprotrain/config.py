"""``params.yaml`` → frozen, typed, validated dataclasses (pydantic).

Why pydantic (it replaced a hand-written validator): it checks types, ranges, choices and
unknown keys from the annotations alone, and it emits a JSON Schema of ``params.yaml``
(``docs/params.schema.json``, referenced from the file's first line) that editors use for
completion and inline help. Its multi-line error reports are turned into the one line users
want (``params.yaml: finetune.learning_rate = -1.0: must be > 0.0``) by
:func:`reprotrain.config_validation.one_line`, beside the field types and rules.
The sections are pydantic *dataclasses*, so ``dataclasses.replace``/``asdict`` keep working.
The images kind's model sections (``model``, ``train_head``, ``finetune``, ``baseline``,
``export``) are in :mod:`reprotrain.config_images`, the table and series kinds' in
:mod:`reprotrain.config_kinds`; this module holds the shared sections, assembles
:class:`Params` and reads the file.

Each field's ``description`` is its help text. ``load_params`` reads the file once and the
stages pass the typed sections down; nothing in ``src/`` reads ``params.yaml`` itself.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml

from reprotrain.config_images import (
    BUILTIN_BACKBONES,
    SCRATCH_ARCHITECTURES,
    Architecture,
    Backbone,
    BaselineConfig,
    ExportConfig,
    ExportFormat,
    FinetuneConfig,
    ModelConfig,
    TrainHeadConfig,
)
from reprotrain.config_kinds import (
    DATA_KINDS,
    ColumnsConfig,
    SeriesConfig,
    TableConfig,
    TrainConfig,
)
from reprotrain.config_validation import Bool, Float, Int, Str, one_line, section
from reprotrain.config_validation import field as _f  # short: one section field per line
from reprotrain.errors import ConfigError

# The images kind's model sections live in ``config_images`` and the shared training knobs
# in ``config_kinds``; every section stays importable from here.
__all__ = [
    "BUILTIN_BACKBONES",
    "HYMENOPTERA_DIGEST",
    "HYMENOPTERA_URL",
    "SCRATCH_ARCHITECTURES",
    "YAML_LOADER",
    "Architecture",
    "AugmentConfig",
    "Backbone",
    "BaselineConfig",
    "ColumnsConfig",
    "DataConfig",
    "EvaluateConfig",
    "ExportConfig",
    "ExportFormat",
    "FinetuneConfig",
    "ModelConfig",
    "Params",
    "PipelineConfig",
    "PrepareConfig",
    "RuntimeConfig",
    "SeriesConfig",
    "TableConfig",
    "TrackingConfig",
    "TrainConfig",
    "TrainHeadConfig",
    "flatten",
    "json_schema",
    "load_params",
    "params_from_dict",
    "parse_yaml",
    "to_dict",
    "write_json_schema",
]

#: Public URL of the default dataset (the PyTorch transfer-learning tutorial's ants/bees).
HYMENOPTERA_URL = "https://download.pytorch.org/tutorial/hymenoptera_data.zip"
#: Content digest of that dataset (see ``reprotrain.data.fetch.tree_digest``).
HYMENOPTERA_DIGEST = "b0e3506710bc375be5996e1c9b29818c80cdfc19bcc324e560091da6690149ec"


@section
class DataConfig:
    """What the data is and where it comes from (shared by all stages)."""

    kind: Literal[DATA_KINDS] = _f(  # type: ignore[valid-type]
        "images",
        "images (class folders, the default) | table (a CSV/Parquet of rows: numbers, "
        "categories, text) | series (a CSV/Parquet with one row per time step)",
    )
    source: Str = _f(
        HYMENOPTERA_URL,
        "URL of a zip/tar, a local directory (class folders or train/val/test), an archive, "
        "or a CSV manifest (path,label[,split])",
    )
    mirror: Str | None = _f(
        None,
        "offline copy of a URL source (directory or archive); env REPROTRAIN_DATA_MIRROR "
        "takes precedence",
    )
    sha256: Str | None = _f(
        HYMENOPTERA_DIGEST,
        "expected content digest of a URL source (null: do not check)",
    )
    archive_max_gb: Float = _f(
        50.0, "an archive source (or download) may expand to at most this many GB", gt=0.0
    )
    archive_max_ratio: Float = _f(
        100.0,
        "refuse an archive whose extracted bytes exceed this many times its own size (a "
        "decompression bomb; checked above 16 MiB extracted)",
        gt=1.0,
    )
    archive_max_members: Int = _f(1_000_000, "an archive may hold at most this many members", min=1)
    columns: ColumnsConfig = _f(
        ColumnsConfig(), "table/series: the roles of the columns (each left out is inferred)"
    )


@section
class AugmentConfig:
    """Random augmentation of training batches only (after the cache, per batch)."""

    flip: Bool = _f(True, "random horizontal flip")
    rotation: Float = _f(0.05, "max rotation as a fraction of a full turn", min=0.0, max=0.5)
    zoom: Float = _f(0.1, "max zoom in/out fraction", min=0.0, max=0.9)
    brightness: Float = _f(0.1, "max brightness delta as a fraction of 255", min=0.0, max=1.0)
    contrast: Float = _f(0.1, "max contrast change factor", min=0.0, max=1.0)
    placement: Literal["auto", "input", "model"] = _f(
        "auto",
        "where augmentation runs: 'input' (tf.data, on the host CPU), 'model' (inside the "
        "train step, on the device that trains; the input pipeline then delivers uint8 "
        "batches), 'auto' = model when a GPU is visible, else input",
    )


@section
class PipelineConfig:
    """The tf.data input pipeline shared by training and evaluation."""

    cache: Str = _f(
        "auto",
        "'auto' (memory when a split fits cache_memory_mb, else a cache file under "
        ".reprotrain/tfdata-cache/), 'memory', 'none', or a file path prefix for tf.data "
        "cache files",
    )
    cache_memory_mb: Int = _f(
        2048, "cache: auto keeps a split in memory up to this size (uint8 pixels)", min=0
    )
    shuffle_buffer: Int = _f(1024, "shuffle buffer size (examples)", min=1)
    deterministic: Bool = _f(True, "keep element order deterministic in parallel maps")
    augment: AugmentConfig = _f(AugmentConfig(), "augmentation knobs")


@section
class RuntimeConfig:
    """Hardware and determinism knobs: applied at stage start and logged."""

    deterministic: Bool = _f(True, "enable TF op determinism (identical results on CPU)")
    mixed_precision: Literal["auto", "on", "off"] = _f(
        "auto", "'auto' = mixed_float16 on GPU, float32 on CPU"
    )
    jit_compile: Bool = _f(False, "XLA-compile the train step")
    distribute: Literal["auto", "none", "mirrored", "multi_worker"] = _f(
        "auto",
        "'auto' = MirroredStrategy when more than one GPU is visible; 'multi_worker' = "
        "MultiWorkerMirroredStrategy over the cluster in TF_CONFIG (docs/scale-out.md)",
    )


@section
class PrepareConfig:
    """Splitting and TFRecord writing."""

    val_fraction: Float = _f(
        0.15, "val share of all images when the source has no splits", gt=0.0, lt=1.0
    )
    test_fraction: Float = _f(
        0.15, "test share of all images when the source has no splits", gt=0.0, lt=1.0
    )
    test_from_val: Float = _f(
        0.5, "share of a given val split moved to test when there is no test split", gt=0.0, lt=1.0
    )
    shard_size: Int = _f(128, "examples per TFRecord shard", min=1)
    max_side: Int | None = _f(
        320, "downscale stored images so the longer side ≤ this (null: keep)", min=32
    )
    jpeg_quality: Int = _f(95, "JPEG quality of re-encoded images", min=50, max=100)


@section
class EvaluateConfig:
    """Held-out evaluation and the promotion gate."""

    batch_size: Int = _f(64, "evaluation batch size", min=1)
    min_accuracy: Float = _f(0.9, "absolute test-accuracy floor for promotion", min=0.0, max=1.0)
    min_improvement: Float = _f(
        0.0, "accuracy the new model must add over the champion to be promoted", min=0.0, max=1.0
    )
    top_k: Int = _f(5, "k for top-k accuracy (reported when there are more than 5 classes)", min=1)
    calibration_bins: Int = _f(10, "bins for expected calibration error", min=2, max=100)
    worst_examples: Int = _f(16, "misclassified test images shown in the grid", min=0)
    gate: Literal["paired", "accuracy"] = _f(
        "paired",
        "'paired': McNemar + bootstrap + per-class recall on the same test images (see "
        "evaluation.gate.decide_paired); 'accuracy': beat the champion's accuracy by "
        "min_improvement",
    )
    alpha: Float = _f(0.05, "significance level of the paired gate's McNemar test", gt=0.0, lt=1.0)
    max_class_regression: Float = _f(
        0.05, "largest per-class recall drop the paired gate accepts", min=0.0, max=1.0
    )


@section
class TrackingConfig:
    """MLflow: where runs go and how the model is registered."""

    experiment: Str = _f("reprotrain", "MLflow experiment name")
    registered_model: Str = _f("reprotrain-classifier", "MLflow registered model name")
    store: Str = _f("mlruns", "project-relative directory for mlflow.db and artifacts")
    system_metrics: Bool = _f(
        True, "log CPU, memory (and GPU) use of the training stages' runs (MLflow system metrics)"
    )
    system_metrics_interval: Float = _f(10.0, "seconds between system-metrics samples", min=1.0)


@section
class Params:
    """Everything in ``params.yaml``."""

    seed: Int = _f(42, "seed for Python, NumPy, TensorFlow and the splits", min=0)
    data: DataConfig = _f(DataConfig(), "data")
    model: ModelConfig = _f(ModelConfig(), "model")
    pipeline: PipelineConfig = _f(PipelineConfig(), "pipeline")
    runtime: RuntimeConfig = _f(RuntimeConfig(), "runtime")
    prepare: PrepareConfig = _f(PrepareConfig(), "prepare")
    train_head: TrainHeadConfig = _f(TrainHeadConfig(), "train_head")
    finetune: FinetuneConfig = _f(FinetuneConfig(), "finetune")
    export: ExportConfig = _f(ExportConfig(), "export")
    baseline: BaselineConfig = _f(BaselineConfig(), "baseline")
    evaluate: EvaluateConfig = _f(EvaluateConfig(), "evaluate")
    tracking: TrackingConfig = _f(TrackingConfig(), "tracking")
    table: TableConfig = _f(TableConfig(), "table kind: model and training")
    series: SeriesConfig = _f(SeriesConfig(), "series kind: windows, model and training")


@functools.cache
def _adapter() -> pydantic.TypeAdapter[Params]:
    """Built once, on first use (building it compiles every section's validator)."""
    return pydantic.TypeAdapter(Params)


def params_from_dict(raw: dict[str, Any] | None) -> Params:
    """Validate a parsed ``params.yaml`` mapping; missing keys take the defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"params.yaml: the top level must be a mapping, got {type(raw).__name__}")
    try:
        return _adapter().validate_python(raw)
    except pydantic.ValidationError as exc:
        raise ConfigError(one_line(exc.errors()[0], raw, Params)) from None


def json_schema() -> dict[str, Any]:
    """JSON Schema of ``params.yaml`` (help texts, types, ranges) for editors."""
    schema = _adapter().json_schema()
    schema["title"] = "reprotrain params.yaml"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def write_json_schema(path: str | Path) -> Path:
    """Write :func:`json_schema` to ``path`` (``docs/params.schema.json``)."""
    path = Path(path)
    path.write_text(json.dumps(json_schema(), indent=2) + "\n", encoding="utf-8")
    return path


#: libyaml's C parser when PyYAML was built with it (the wheels are): the same documents
#: parsed 6x faster, and every stage reads params.yaml, dvc.yaml and dvc.lock (30 KB).
YAML_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` on :data:`YAML_LOADER` (same results, same errors)."""
    return yaml.load(text, Loader=YAML_LOADER)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``path``; every problem is a one-line :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"params file not found: {path} (run from the project root, or pass the path)"
        )
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
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
