"""What the training stages read and write around ``training.train``.

Beside ``cli.py`` and ``paths.py``: the stages' shared plumbing. Reads the prepared data
(datasets, labels, class weights, a digest for the resume fingerprint) and writes a
stage's outputs (``.keras`` model, history JSON, metrics JSON), each atomically, so a
stage killed while saving leaves the previous file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reprotrain import fsio
from reprotrain.errors import ConfigError, DataError

if TYPE_CHECKING:
    from reprotrain.config import TrainConfig
    from reprotrain.training import TrainResult

logger = logging.getLogger(__name__)


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
    from reprotrain.data import pipeline, tfrecords

    prepared_dir = Path(prepared_dir)
    manifest = prepared_dir / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"{manifest} not found: run the prepare stage first (dvc repro prepare)")
    labels = list(pipeline.read_labels(prepared_dir))
    # Checked against prepare's shards.json: a truncated or changed shard stops here with
    # its name and the fix, instead of a DataLossError mid-epoch (or fewer images).
    files = {s: tfrecords.verify_shards(prepared_dir, s) for s in ("train", "val")}
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
    digest = fingerprint(fsio.file_sha256(manifest), labels)
    return StageData(train, val, labels, class_weights(cfg.class_weight, labels, counts), digest)


def write_history(result: TrainResult, path: Path) -> None:
    """``{"epoch": [1, 2, ...], "loss": [...], "val_accuracy": [...], ...}``, atomically."""
    fsio.atomic_write_json(path, result.history)


def save_outputs(
    model: Any,
    result: TrainResult,
    *,
    model_path: Path,
    history_path: Path,
    metrics_path: Path,
    extra: Mapping[str, Any] | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Write the ``.keras`` model, the history JSON and the stage's metrics JSON atomically.

    The metrics describe the saved (kept) model: ``val_accuracy``/``val_loss`` are measured
    on it, ``best_epoch`` is its epoch (0: the starting weights). ``write=False`` (a
    non-chief multi-worker process) returns the metrics and writes nothing shared.
    """
    metrics = {**result.summary(), **result.extra, **(extra or {})}
    if not write:
        # Saved, then deleted: the same ops as the chief's save (a read of a synchronised
        # variable is a collective op that every worker must join), as Keras recommends.
        with tempfile.TemporaryDirectory(prefix="reprotrain-worker-") as tmp:
            model.save(Path(tmp) / Path(model_path).name)
        return metrics
    with fsio.atomic_path(model_path) as tmp:
        model.save(tmp)
    write_history(result, history_path)
    fsio.atomic_write_json(metrics_path, metrics)
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
    from reprotrain.models import transfer

    summary = transfer.trainable_summary(model)
    return {
        "trainable_base_layer_count": summary["trainable_base_layer_count"],
        "trainable_params": summary["trainable_params"],
        "non_trainable_params": summary["non_trainable_params"],
    }


def final_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``final_<name>`` for the numeric top-level entries of a stage's metrics JSON."""
    return {
        f"final_{k}": float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
