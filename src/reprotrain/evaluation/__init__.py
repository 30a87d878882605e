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

logger = logging.getLogger(__name__)

#: Probability floor for the log loss: Keras' ``epsilon()``, so ``loss`` matches Keras'.
EPSILON = 1e-7


# --------------------------------------------------------------------------- pure metrics


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[actual, predicted]`` counts (int64, ``num_classes × num_classes``)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise ``num / den`` with 0 where ``den == 0`` (scikit-learn's zero_division=0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def precision_recall_f1(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support from a confusion matrix."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def log_loss(y_true: np.ndarray, probs: np.ndarray, eps: float = EPSILON) -> float:
    """Mean categorical cross-entropy ``-log p(true class)``, probabilities clipped to eps."""
    p = np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0)
    return float(-np.mean(np.log(p)))


def _binary_clf_curve(
    y: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative false/true positives at each distinct score, highest score first."""
    y = np.asarray(y, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    scores, y = scores[order], y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(scores)), y.size - 1]
    tps = np.cumsum(y)[last_of_value]
    fps = 1 + last_of_value - tps
    return fps, tps, scores[last_of_value]


def roc_curve(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` of a binary problem (``y`` in {0, 1}), from (0, 0).

    The first threshold is +inf (nothing predicted positive). NaN rates if a class is absent.
    """
    fps, tps, thresholds = _binary_clf_curve(y, scores)
    fps, tps = np.r_[0, fps], np.r_[0, tps]
    thresholds = np.r_[np.inf, thresholds]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thresholds


def precision_recall_curve(
    y: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(precision, recall, thresholds)``, recall increasing, from (recall 0, precision 1).

    The start point has threshold +inf, as in :func:`roc_curve`. NaN recall if no positives.
    """
    fps, tps, thresholds = _binary_clf_curve(y, scores)
    precision = _safe_div(tps, tps + fps)
    recall = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return np.r_[1.0, precision], np.r_[0.0, recall], np.r_[np.inf, thresholds]


def auc(x: np.ndarray, y: np.ndarray) -> float:
    """Area under a curve by the trapezoidal rule (``x`` monotonic)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(abs(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2)))


def step_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """``Σ (R_n − R_{n−1}) P_n`` along a PR curve with recall increasing."""
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    return float(np.sum(np.diff(recall) * precision[1:]))


def average_precision(y: np.ndarray, scores: np.ndarray) -> float | None:
    """``Σ (R_n − R_{n−1}) P_n`` (scikit-learn's definition, no interpolation); None if no
    positives."""
    precision, recall, _ = precision_recall_curve(y, scores)
    if np.isnan(recall).any():
        return None
    return step_area(recall, precision)


def _one_vs_rest(
    y_true: np.ndarray, probs: np.ndarray, score: Callable[[np.ndarray, np.ndarray], float | None]
) -> float | None:
    """Binary problems score class 1; more classes: macro mean over classes that have both
    positives and negatives in ``y_true`` (others are undefined and skipped, with a log line)."""
    num_classes = probs.shape[1]
    if num_classes == 2:
        y = (y_true == 1).astype(np.int64)
        return score(y, probs[:, 1]) if 0 < y.sum() < y.size else None
    values = []
    for c in range(num_classes):
        y = (y_true == c).astype(np.int64)
        if 0 < y.sum() < y.size:
            value = score(y, probs[:, c])
            if value is not None:
                values.append(value)
        else:
            logger.warning("class %d has no positives or no negatives in the test set", c)
    return float(np.mean(values)) if values else None


def roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """ROC AUC: of class 1 for two classes, one-vs-rest macro mean for more; None when a
    class needed is absent from ``y_true`` (undefined, and JSON has no NaN)."""

    def score(y: np.ndarray, s: np.ndarray) -> float:
        fpr, tpr, _ = roc_curve(y, s)
        return auc(fpr, tpr)

    return _one_vs_rest(np.asarray(y_true), np.asarray(probs), score)


def macro_average_precision(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """Average precision, class 1 for two classes, one-vs-rest macro mean for more."""
    return _one_vs_rest(np.asarray(y_true), np.asarray(probs), average_precision)


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Share of examples whose true class is among the ``k`` most probable.

    Ties are counted in the model's favour: correct when fewer than ``k`` classes have a
    strictly higher probability than the true class (order-independent, deterministic).
    """
    true_p = probs[np.arange(len(y_true)), y_true]
    higher = (probs > true_p[:, None]).sum(axis=1)
    return float(np.mean(higher < k))


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int) -> float:
    """ECE: ``Σ_b |B_b|/n · |accuracy(B_b) − mean confidence(B_b)|`` over equal-width bins
    of the top-class confidence, bin ``b`` = ``(b/bins, (b+1)/bins]`` (0 goes to bin 0)."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    n = len(y_true)
    ece = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            ece += mask.sum() / n * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    labels: Sequence[str],
    *,
    top_k: int = 5,
    calibration_bins: int = 10,
) -> dict[str, Any]:
    """All metrics of one model on one split, as a JSON-able dict (``None`` = undefined).

    ``top_{k}_accuracy`` is reported only with more than 5 classes (below that it says little).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n, num_classes = probs.shape
    if n == 0:
        raise DataError("the test split is empty: nothing to evaluate (rerun prepare with data)")
    if num_classes != len(labels):
        raise ModelError(
            f"the model predicts {num_classes} classes but labels.json lists {len(labels)}: "
            "retrain on the current data (dvc repro)"
        )
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, num_classes)
    prf = precision_recall_f1(cm)
    support = prf["support"].astype(np.float64)
    weights = support / support.sum()
    out: dict[str, Any] = {
        "accuracy": float(np.mean(y_pred == y_true)),
        "loss": log_loss(y_true, probs),
    }
    for name in ("precision", "recall", "f1"):
        out[f"macro_{name}"] = float(np.mean(prf[name]))
        out[f"weighted_{name}"] = float(np.sum(prf[name] * weights))
    out["roc_auc"] = roc_auc(y_true, probs)
    out["average_precision"] = macro_average_precision(y_true, probs)
    if num_classes > 5:
        k = min(top_k, num_classes)
        out[f"top_{k}_accuracy"] = top_k_accuracy(y_true, probs, k)
    out["ece"] = expected_calibration_error(y_true, probs, calibration_bins)
    out["per_class"] = {
        name: {
            "precision": float(prf["precision"][i]),
            "recall": float(prf["recall"][i]),
            "f1": float(prf["f1"][i]),
            "support": int(prf["support"][i]),
        }
        for i, name in enumerate(labels)
    }
    return out


def curve_points(
    y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str], kind: str
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """ROC (``kind="roc"``: x=fpr, y=tpr) or PR (``"pr"``: x=recall, y=precision) curves.

    Two classes: one curve, positive class = ``labels[1]``. More: one curve per class
    (one-vs-rest, classes absent from the split skipped) plus ``"micro-average"`` (all
    one-vs-rest decisions pooled), which is the one single line that summarises them.
    Values are ``(x, y, thresholds)``.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    fn = roc_curve if kind == "roc" else precision_recall_curve

    def xy(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b, t = fn(y, s)
        return (a, b, t) if kind == "roc" else (b, a, t)

    num_classes = probs.shape[1]
    classes = [1] if num_classes == 2 else list(range(num_classes))
    curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for c in classes:
        y = (y_true == c).astype(np.int64)
        if 0 < y.sum() < y.size:
            curves[labels[c]] = xy(y, probs[:, c])
    if num_classes > 2:
        onehot = np.eye(num_classes, dtype=np.int64)[y_true]
        curves[MICRO] = xy(onehot.ravel(), probs.ravel())
    return curves


#: Name of the pooled one-vs-rest curve of a multi-class problem.
MICRO = "micro-average"


def summary_curve(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], labels: Sequence[str]
) -> tuple[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
    """The one curve ``dvc plots`` draws: the positive class (binary) or the micro-average.

    DVC's templates colour lines by revision only, so per-class rows in one file would be
    joined into a single zig-zag line; the per-class curves go to the PNG instead.
    """
    for name in (MICRO, labels[1] if len(labels) == 2 else None):
        if name in curves:
            return name, curves[name]
    return None


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


_METRIC_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves as ``{"head_accuracy": ..., "per_class_bees_f1": ...}`` (MLflow keys).

    Booleans and undefined values (None, NaN) are left out; characters MLflow rejects in
    a metric name become ``_``.
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = _METRIC_NAME.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, f"{name}_"))
        elif (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(float(value))
        ):
            out[name] = float(value)
    return out


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
