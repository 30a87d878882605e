"""What the training stages read and write around ``training.train``.

Beside ``cli.py`` and ``paths.py``: the stages' shared plumbing. Reads the prepared data
(datasets, labels, class weights, a digest for the resume fingerprint) and writes a
stage's outputs (``.keras`` model, history JSON, metrics JSON), each atomically, so a
stage killed while saving leaves the previous file or the new one, never half of one.
:func:`training_stage` is the run around it that train_head, finetune and baseline share.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reprotrain import fsio, paths, runtime
from reprotrain.dag import Stage, param_values
from reprotrain.errors import ConfigError, DataError
from reprotrain.models.loading import load_model, save_model
from reprotrain.timing import timed

if TYPE_CHECKING:
    from reprotrain.config import AugmentConfig, Params, PipelineConfig, TrainConfig
    from reprotrain.runtime import RuntimeInfo
    from reprotrain.training import TrainResult
    from reprotrain.training.options import RunOptions

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
    counts: dict[str, int]  # train images per class
    #: Augmentation the train step applies (``placement: model``), for ``training.train``.
    augment_in_model: AugmentConfig | None = None


@timed("data")
def load_stage_data(
    prepared_dir: Path,
    pipeline_cfg: PipelineConfig,
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
    augment = cfg.augment and not train_as_eval
    placement = (
        runtime.resolve_augment_placement(pipeline_cfg.augment.placement, runtime.gpu_count())
        if augment
        else "input"
    )
    train = pipeline.make_dataset(
        files["train"],
        pipeline_cfg,
        training=not train_as_eval,
        augment=augment,
        augment_in=placement,
        **common,
    )
    if augment:
        where = "train step" if placement == "model" else "input pipeline"
        logger.info("augmentation: in the %s (pipeline.augment.placement)", where)
    val = pipeline.make_dataset(files["val"], pipeline_cfg, training=False, **common)
    counts = train_counts(manifest, labels)
    digest = fingerprint(fsio.file_sha256(manifest), labels)
    weights = class_weights(cfg.class_weight, labels, counts)
    in_model = pipeline_cfg.augment if placement == "model" else None
    return StageData(train, val, labels, weights, digest, counts, in_model)


def load_transfer_data(
    params: Params, cfg: TrainConfig, *, train_as_eval: bool = False
) -> StageData:
    """:func:`load_stage_data` of ``data/prepared`` at the backbone's input size (what
    train_head, finetune and ``reprotrain tune`` train on)."""
    return load_stage_data(
        paths.PREPARED_DIR,
        params.pipeline,
        cfg,
        image_size=params.model.image_size,
        seed=params.seed,
        train_as_eval=train_as_eval,
    )


def load_head_model(params: Params, num_classes: int, info: RuntimeInfo) -> Any:
    """train_head's ``models/head.keras`` under ``info``'s strategy, for finetune to go on
    training; a missing or mismatched file stops with the fix (rerun train_head)."""
    return load_model(
        paths.HEAD_MODEL,
        num_classes=num_classes,
        image_size=params.model.image_size,
        strategy=info.strategy,
        hint="rerun train_head (dvc repro train_head)",
    )


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
        save_model(model, tmp)
    write_history(result, history_path)
    fsio.atomic_write_json(metrics_path, metrics)
    logger.info("saved %s: %s", model_path, kept_line(metrics, result.best_epoch))
    return metrics


def kept_line(metrics: Mapping[str, Any], best_epoch: int) -> str:
    """What the saved model scored, for the log: val_accuracy and the best seen for a
    classifier; val_loss (the kept epoch's, the lowest) for a regression, which has no
    accuracy to print."""
    if "val_accuracy" in metrics:
        return (
            f"val_accuracy={metrics['val_accuracy']:.4f} (epoch {best_epoch}), best "
            f"val_accuracy={metrics.get('best_val_accuracy', math.nan):.4f}"
        )
    return f"val_loss={metrics.get('val_loss', math.nan):.4g} (epoch {best_epoch}, the lowest)"


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


@dataclass
class TrainingStage:
    """An open training-stage run and where its outputs go (``paths`` names them by stage)."""

    name: str
    run: Any  # tracking.StageRun (a no-op NoRun on a non-chief multi-worker process)
    model_path: Path
    history_path: Path
    resume_key: str
    chief: bool = True  # multi-worker: only the chief writes shared files
    metrics_path: Path = field(init=False)
    tensorboard_dir: Path = field(init=False)
    checkpoint_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.metrics_path = paths.METRICS_DIR / f"{self.name}.json"
        self.tensorboard_dir = paths.TENSORBOARD_DIR / self.name
        self.checkpoint_dir = paths.CHECKPOINTS_DIR / self.name

    def fit_options(self) -> RunOptions:
        """The run options every training stage passes ``training.train`` alike: resumable
        checkpoints, TensorBoard scalars, per-epoch metrics to the run."""
        from reprotrain.training.options import RunOptions

        return RunOptions(
            checkpoint_dir=self.checkpoint_dir,
            tensorboard_dir=self.tensorboard_dir,
            resume_key=self.resume_key,
            epoch_hook=self._log_epoch,
        )

    def _log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.run.log_metrics(metrics, step=epoch)

    def finish(
        self, model: Any, result: TrainResult, extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Save the outputs (:func:`save_outputs`), log the final metrics and the files
        (model, history, metrics, TensorBoard logs) to the run; the saved metrics."""
        metrics = save_outputs(
            model,
            result,
            model_path=self.model_path,
            history_path=self.history_path,
            metrics_path=self.metrics_path,
            write=self.chief,
            extra=extra,
        )
        self.run.log_metrics(final_metrics(metrics))
        for path in (self.model_path, self.history_path, self.metrics_path):
            self.run.log_artifact(path)
        self.run.log_artifact(self.tensorboard_dir, artifact_path=f"tensorboard/{self.name}")
        return metrics


@contextmanager
def training_stage(
    spec: Stage, params: Params, info: RuntimeInfo, *, digests: Sequence[str]
) -> Iterator[TrainingStage]:
    """The stage's MLflow run (``tracking.stage_run``) with a fresh TensorBoard directory and
    the resume key (the params the stage ``spec`` reads plus the input ``digests``): a rerun
    with other params or data starts over instead of resuming. The stage calls
    :meth:`TrainingStage.finish`; the checkpoint is discarded only after the run closed, so a
    kill before that resumes from the backup instead of retraining. Under multi-worker
    training only the chief writes (run, outputs, TensorBoard, checkpoint), and every worker
    leaves together (``runtime.wait_for_workers``).
    """
    # Here, not at the top: importing stage_io for its data helpers needs no MLflow.
    from reprotrain import runtime, tracking, training

    name = spec.name
    if spec.model is None or spec.history is None:
        raise ValueError(f"stage {name!r} declares no model and history: not a training stage")
    if info.is_chief:
        shutil.rmtree(paths.TENSORBOARD_DIR / name, ignore_errors=True)
    key = fingerprint(name, [param_values(params, spec.params)], *digests)
    with tracking.stage_run(
        spec,
        params,
        Path.cwd(),
        environment=runtime.environment_info(info),
        chief=info.is_chief,
    ) as run:
        stage = TrainingStage(name, run, Path(spec.model), Path(spec.history), key, info.is_chief)
        yield stage
    if info.is_chief:
        training.discard_checkpoint(stage.checkpoint_dir)
    runtime.wait_for_workers(info)
