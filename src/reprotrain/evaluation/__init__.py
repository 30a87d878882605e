"""Held-out evaluation: metrics from predicted probabilities, and predictions on a split.

Why hand-written metrics (numpy, no scikit-learn): the definitions are short, a dependency
pulled in only for a dozen formulas is one more thing to pin, and each function here is
tested against cases computed by hand. Definitions follow scikit-learn's where one exists
(``roc_curve``, ``precision_recall_curve``, ``average_precision_score``, zero division → 0),
so numbers stay comparable with what people know.

The model outputs softmax probabilities (``transfer.build_model``); ``to_probabilities``
only converts outputs that are not (a model from elsewhere that emits logits).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain.errors import DataError, ModelError
from reprotrain.evaluation.metrics import (
    EPSILON,
    MICRO,
    classification_metrics,
    confusion_matrix,
    curve_points,
    expected_calibration_error,
    flatten_metrics,
    log_loss,
    macro_average_precision,
    precision_recall_curve,
    roc_auc,
    roc_curve,
    summary_curve,
    top_k_accuracy,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- predictions


@dataclass
class WorstExample:
    """A misclassified test image with the model's (wrong) confidence."""

    index: int
    path: str
    true: int
    pred: int
    confidence: float
    image: np.ndarray  # uint8 [H, W, 3]


@dataclass
class SplitPredictions:
    """Probabilities of one model on one split, aligned with the split's records."""

    probs: np.ndarray  # float32 [N, C]
    y_true: np.ndarray  # int64 [N]
    paths: list[str] = field(default_factory=list)
    sha256: list[str] = field(default_factory=list)
    worst: list[WorstExample] = field(default_factory=list)


def to_probabilities(outputs: np.ndarray) -> np.ndarray:
    """Model outputs as probabilities: unchanged when rows already are, else softmax.

    Models from ``build_model`` end in a softmax; a model emitting logits (a user's own)
    would otherwise yield a wrong loss and calibration without any error.
    """
    out = np.asarray(outputs, dtype=np.float64)
    if out.size == 0:
        return out
    is_prob = (out >= -1e-6).all() and (out <= 1 + 1e-6).all()
    if is_prob and np.allclose(out.sum(axis=1), 1.0, atol=1e-3):
        return out
    logger.warning("model outputs are not probabilities: applying softmax")
    z = out - out.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _keep_worst(
    worst: list[WorstExample], candidates: list[WorstExample], k: int
) -> list[WorstExample]:
    merged = worst + candidates
    merged.sort(key=lambda w: (-w.confidence, w.index))
    return merged[:k]


def predict_split(model: Any, dataset: Any, worst_k: int = 0) -> SplitPredictions:
    """Run ``model`` over a ``make_dataset(..., with_metadata=True)`` dataset.

    Keeps only the ``worst_k`` most confidently wrong images (memory stays bounded by k,
    not by the size of the test split).
    """
    probs, labels, paths, shas = [], [], [], []
    worst: list[WorstExample] = []
    offset = 0
    for batch in dataset:
        images, y, meta = batch
        p = to_probabilities(model(images, training=False))
        y = np.asarray(y, dtype=np.int64)
        probs.append(p)
        labels.append(y)
        batch_paths = [s.decode("utf-8") for s in np.asarray(meta["path"]).tolist()]
        paths += batch_paths
        shas += [s.decode("ascii") for s in np.asarray(meta["sha256"]).tolist()]
        if worst_k > 0:
            pred = p.argmax(axis=1)
            wrong = np.flatnonzero(pred != y)
            if wrong.size:
                pixels = np.asarray(images)
                worst = _keep_worst(
                    worst,
                    [
                        WorstExample(
                            index=offset + int(i),
                            path=batch_paths[i],
                            true=int(y[i]),
                            pred=int(pred[i]),
                            confidence=float(p[i, pred[i]]),
                            image=np.clip(np.rint(pixels[i]), 0, 255).astype(np.uint8),
                        )
                        for i in wrong
                    ],
                    worst_k,
                )
        offset += len(y)
    if not probs:
        raise DataError("the test split is empty: nothing to evaluate (rerun prepare with data)")
    return SplitPredictions(
        probs=np.concatenate(probs).astype(np.float32),
        y_true=np.concatenate(labels),
        paths=paths,
        sha256=shas,
        worst=worst,
    )


def load_model(path: Path | str) -> Any:
    """Load a ``.keras`` model for inference (safe mode, not compiled), or a ModelError."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    import keras

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # corrupt zip, unknown layer, version mismatch: all user-facing
        raise ModelError(f"{path}: cannot load the model: {type(exc).__name__}: {exc}") from None


def model_image_size(model: Any) -> int:
    """The square input size a model expects (``[None, S, S, 3]``)."""
    shape = model.input_shape
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise ModelError(f"expected a model taking [batch, S, S, 3] images, got input {shape}")
    return int(shape[1])


def eval_dataset(
    files: Sequence[Path | str],
    pipeline_cfg: Any,
    *,
    image_size: int,
    batch_size: int,
    seed: int,
) -> Any:
    """The test split in file order with metadata.

    Not cached (each model reads it once) and always deterministic, so the results,
    down to the row order of predictions.csv, depend on no ``pipeline.*`` param.
    """
    from reprotrain.data import pipeline

    cfg = dataclasses.replace(pipeline_cfg, cache="none", deterministic=True)
    return pipeline.make_dataset(
        files,
        cfg,
        training=False,
        image_size=image_size,
        batch_size=batch_size,
        seed=seed,
        with_metadata=True,
    )


def accuracy_of(
    model_path: Path | str,
    test_files: Sequence[Path | str],
    *,
    pipeline_cfg: Any,
    batch_size: int,
    seed: int,
    num_classes: int,
) -> float:
    """Test accuracy of a saved model (the registry re-scores the champion with this).

    The image size comes from the model itself: a champion trained at another size is
    still scored fairly on the same images.
    """
    model = load_model(model_path)
    got = int(model.output_shape[-1])
    if got != num_classes:
        raise ModelError(
            f"{model_path} predicts {got} classes but the test set has {num_classes}: "
            "it cannot be scored on this test set"
        )
    ds = eval_dataset(
        test_files,
        pipeline_cfg,
        image_size=model_image_size(model),
        batch_size=batch_size,
        seed=seed,
    )
    preds = predict_split(model, ds)
    return float(np.mean(preds.probs.argmax(axis=1) == preds.y_true))


# --------------------------------------------------------------------------- manifest, rows


def split_sha256(manifest_csv: Path | str, split: str = "test") -> list[str]:
    """The sha256 column of one split's rows in ``manifest.csv``."""
    path = Path(manifest_csv)
    if not path.is_file():
        raise DataError(f"{path} not found: run the prepare stage first (dvc repro prepare)")
    with path.open(newline="", encoding="utf-8") as f:
        return [row["sha256"] for row in csv.DictReader(f) if row.get("split") == split]


def test_digest(manifest_csv: Path | str) -> str:
    """SHA-256 of the test split's sorted image digests: same images ⇔ same digest.

    The promotion gate compares models only on the same test set; this says whether the
    champion's recorded accuracy is still comparable or must be re-scored.
    """
    shas = sorted(split_sha256(manifest_csv, "test"))
    return hashlib.sha256("\n".join(shas).encode("ascii")).hexdigest()


def prediction_rows(preds: SplitPredictions, labels: Sequence[str]) -> list[dict[str, Any]]:
    """One row per example: path, sha256, true/predicted label, confidence, prob_<class>."""
    rows = []
    pred = preds.probs.argmax(axis=1)
    for i in range(len(preds.y_true)):
        row: dict[str, Any] = {
            "path": preds.paths[i] if preds.paths else "",
            "sha256": preds.sha256[i] if preds.sha256 else "",
            "true_label": labels[int(preds.y_true[i])],
            "predicted_label": labels[int(pred[i])],
            "confidence": round(float(preds.probs[i, pred[i]]), 6),
        }
        for c, name in enumerate(labels):
            row[f"prob_{name}"] = round(float(preds.probs[i, c]), 6)
        rows.append(row)
    return rows


def evaluate_model_file(
    model_path: Path | str,
    test_files: Sequence[Path | str],
    labels: Sequence[str],
    *,
    pipeline_cfg: Any,
    image_size: int,
    batch_size: int,
    seed: int,
    top_k: int,
    calibration_bins: int,
    worst_k: int = 0,
) -> tuple[dict[str, Any], SplitPredictions]:
    """Metrics and predictions of one saved model on the test shards.

    Checks first that the model fits the data (class count, input size): a stale model
    from another dataset would otherwise produce confident nonsense.
    """
    model = load_model(model_path)
    got_classes, got_size = int(model.output_shape[-1]), model_image_size(model)
    if got_classes != len(labels) or got_size != image_size:
        raise ModelError(
            f"{model_path} was trained for {got_classes} classes at {got_size}px but the data "
            f"has {len(labels)} classes and model.image_size is {image_size}: rerun training "
            "(dvc repro)"
        )
    ds = eval_dataset(
        test_files, pipeline_cfg, image_size=image_size, batch_size=batch_size, seed=seed
    )
    preds = predict_split(model, ds, worst_k=worst_k)
    metrics = classification_metrics(
        preds.y_true, preds.probs, labels, top_k=top_k, calibration_bins=calibration_bins
    )
    logger.info(
        "%s: test accuracy %.4f, loss %.4f (n=%d)",
        model_path,
        metrics["accuracy"],
        metrics["loss"],
        len(preds.y_true),
    )
    return metrics, preds
