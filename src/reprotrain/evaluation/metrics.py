"""Metrics of one model on one split, from predicted probabilities.

The formulas are scikit-learn's (``sklearn.metrics``): tested by thousands of users, and the
definitions people already know. What stays here is only what we add to them:

- *undefined is null, not a crash*: a class absent from the test split has no ROC AUC or
  average precision; those classes are skipped (macro mean over the defined ones) and a
  metric with nothing defined is ``None`` (JSON has no NaN, and DVC must read the file);
- the log loss clipped at Keras' ``epsilon()`` (1e-7), so ``loss`` matches Keras' numbers;
- the expected calibration error (scikit-learn has none);
- the per-class table and the one-vs-rest curves the plots draw.

Conventions: ``zero_division=0``; two classes report class 1 (``labels[1]``); more classes
report the one-vs-rest macro mean.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm

from reprotrain.errors import DataError, ModelError

logger = logging.getLogger(__name__)

#: Probability floor for the log loss: Keras' ``epsilon()``, so ``loss`` matches Keras'.
EPSILON = 1e-7

#: Name of the pooled one-vs-rest curve of a multi-class problem.
MICRO = "micro-average"

#: ``(x, y, thresholds)`` of a ROC (fpr, tpr) or PR (recall, precision) curve.
Curve = tuple[np.ndarray, np.ndarray, np.ndarray]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[actual, predicted]`` counts (int64, ``num_classes × num_classes``, every class
    present even when it never occurs)."""
    return skm.confusion_matrix(y_true, y_pred, labels=np.arange(num_classes)).astype(np.int64)


def per_class_table(
    y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]
) -> dict[str, dict[str, float | int]]:
    """``{class: {precision, recall, f1, support}}`` with zero division → 0."""
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(len(labels)), zero_division=0
    )
    return {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(labels)
    }


def log_loss(y_true: np.ndarray, probs: np.ndarray, eps: float = EPSILON) -> float:
    """Mean categorical cross-entropy ``-log p(true class)``, ``p`` floored at ``eps``.

    Why the wrapper: scikit-learn 1.9's ``log_loss`` has no ``eps`` any more; it clips at
    the machine epsilon of the array's dtype (2.2e-16 for float64), so one confident
    mistake would cost 36.0 instead of Keras' 16.1. Flooring at 1e-7 first keeps our
    number the Keras one (sklearn's own clip then changes nothing below 1 - 2.2e-16).
    Its check that rows sum to one works at float64 precision, which float32 softmax
    outputs miss by ~1e-7; ``to_probabilities`` has already checked them at 1e-3, so that
    one warning is silenced here.
    """
    probs = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The y_prob values do not sum to one")
        return float(skm.log_loss(y_true, y_proba=probs, labels=np.arange(probs.shape[1])))


def roc_curve(y: np.ndarray, scores: np.ndarray) -> Curve:
    """``(fpr, tpr, thresholds)`` of a binary problem, from (0, 0) at threshold +inf.

    Every distinct threshold is kept (``drop_intermediate=False``): the CSV plots show the
    whole staircase.
    """
    return skm.roc_curve(y, scores, drop_intermediate=False)


def precision_recall_curve(y: np.ndarray, scores: np.ndarray) -> Curve:
    """``(precision, recall, thresholds)`` with recall *increasing*, from (recall 0,
    precision 1) at threshold +inf, like :func:`roc_curve` (scikit-learn returns recall
    decreasing and no threshold for that first point)."""
    precision, recall, thresholds = skm.precision_recall_curve(y, scores)
    return precision[::-1], recall[::-1], np.r_[np.inf, thresholds[::-1]]


def _defined(y: np.ndarray) -> bool:
    """A one-vs-rest problem has a ROC/PR score only with positives and negatives."""
    return 0 < int(y.sum()) < y.size


def _one_vs_rest(
    y_true: np.ndarray, probs: np.ndarray, score: Callable[[np.ndarray, np.ndarray], float]
) -> float | None:
    """Binary problems score class 1; more classes: macro mean over classes that have both
    positives and negatives in ``y_true`` (others are undefined and skipped, with a log
    line). ``None`` when nothing is defined.

    Why not ``roc_auc_score(multi_class="ovr")``: it raises on a class absent from the
    split; a small test split must still produce a report.
    """
    num_classes = probs.shape[1]
    if num_classes == 2:
        y = (y_true == 1).astype(np.int64)
        return float(score(y, probs[:, 1])) if _defined(y) else None
    values = []
    for c in range(num_classes):
        y = (y_true == c).astype(np.int64)
        if _defined(y):
            values.append(float(score(y, probs[:, c])))
        else:
            logger.warning("class %d has no positives or no negatives in the test set", c)
    return float(np.mean(values)) if values else None


def roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """ROC AUC (``sklearn.metrics.roc_auc_score``): class 1 for two classes, one-vs-rest
    macro mean for more; None when undefined."""
    return _one_vs_rest(np.asarray(y_true), np.asarray(probs), skm.roc_auc_score)


def macro_average_precision(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """Average precision (``sklearn.metrics.average_precision_score``, ``Σ (R_n − R_{n−1})
    P_n``): class 1 for two classes, one-vs-rest macro mean for more; None when undefined."""
    return _one_vs_rest(np.asarray(y_true), np.asarray(probs), skm.average_precision_score)


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Share of examples whose true class is among the ``k`` most probable
    (``sklearn.metrics.top_k_accuracy_score``; exact ties at the k-th place are broken
    by scikit-learn's stable sort, the higher class index first)."""
    probs = np.asarray(probs)
    return float(skm.top_k_accuracy_score(y_true, probs, k=k, labels=np.arange(probs.shape[1])))


def reliability_bins(
    y_true: np.ndarray, probs: np.ndarray, bins: int = 10
) -> list[dict[str, float]]:
    """Per equal-width bin of the top-class confidence, bin ``b`` = ``(b/bins, (b+1)/bins]``
    (0 goes to bin 0): its range, count, mean confidence and accuracy (NaN when empty). The
    reliability diagram's data, and the ECE's."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = index == b
        n = int(mask.sum())
        rows.append(
            {
                "lo": b / bins,
                "hi": (b + 1) / bins,
                "count": n,
                "confidence": float(confidence[mask].mean()) if n else math.nan,
                "accuracy": float(correct[mask].mean()) if n else math.nan,
            }
        )
    return rows


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int) -> float:
    """ECE: ``Σ_b |B_b|/n · |accuracy(B_b) − mean confidence(B_b)|`` over
    :func:`reliability_bins`.

    Hand-written because scikit-learn has no ECE (``calibration_curve`` gives the bins of
    one class's probability, without their weights).
    """
    n = len(probs)
    rows = [r for r in reliability_bins(y_true, probs, bins) if r["count"]]
    return float(sum(r["count"] / n * abs(r["accuracy"] - r["confidence"]) for r in rows))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``.

    Why Wilson: on a test split of ~80 images a 95% accuracy has an interval several points
    wide, and the normal approximation breaks down near 0 and 1; Wilson's does not
    (statsmodels is not a dependency; the formula is four lines with scipy's normal quantile).
    """
    from scipy.stats import norm

    if n <= 0:
        return (math.nan, math.nan)
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def f1_from_confusion(counts: np.ndarray) -> np.ndarray:
    """Macro-F1 of confusion matrices ``[..., true, predicted]``, every class counted
    (``zero_division=0``: a class never true nor predicted scores 0), as
    ``sklearn.metrics.f1_score(average="macro", labels=range(k))`` computes it."""
    tp = np.diagonal(counts, axis1=-2, axis2=-1).astype(np.float64)
    denominator = counts.sum(axis=-1) + counts.sum(axis=-2)  # 2·tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return f1.mean(axis=-1)


def bootstrap_macro_f1(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    num_classes: int,
    *,
    rounds: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the macro-F1, resampling images.

    Macro-F1 depends on a resample only through its confusion matrix, so one multinomial
    draw over the ``k × k`` cells (shares = the observed matrix) is a resample: exactly the
    distribution of resampling indices, in O(rounds · k²) instead of O(rounds · n). Why not
    1000 ``f1_score`` calls on resampled indices: scikit-learn validates its input on every
    call, 7 s for the model card's 1000 rounds; this takes milliseconds. Seeded.
    """
    n = len(y_true)
    if n == 0:
        return (math.nan, math.nan)
    k = num_classes
    cells = confusion_matrix(y_true, y_pred, k).ravel()
    counts = np.random.default_rng(seed).multinomial(n, cells / n, size=rounds)
    values = f1_from_confusion(counts.reshape(rounds, k, k))
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(values, [tail, 1 - tail])
    return (float(lo), float(hi))


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
    out: dict[str, Any] = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "loss": log_loss(y_true, probs),
    }
    classes = np.arange(num_classes)
    averaged = {
        average: skm.precision_recall_fscore_support(
            y_true, y_pred, labels=classes, average=average, zero_division=0
        )
        for average in ("macro", "weighted")
    }
    for i, name in enumerate(("precision", "recall", "f1")):
        for average, values in averaged.items():
            out[f"{average}_{name}"] = float(values[i])
    out["roc_auc"] = roc_auc(y_true, probs)
    out["average_precision"] = macro_average_precision(y_true, probs)
    if num_classes > 5:
        k = min(top_k, num_classes)
        out[f"top_{k}_accuracy"] = top_k_accuracy(y_true, probs, k)
    out["ece"] = expected_calibration_error(y_true, probs, calibration_bins)
    out["per_class"] = per_class_table(y_true, y_pred, labels)
    return out


def curve_points(
    y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str], kind: str
) -> dict[str, Curve]:
    """ROC (``kind="roc"``: x=fpr, y=tpr) or PR (``"pr"``: x=recall, y=precision) curves.

    Two classes: one curve, positive class = ``labels[1]``. More: one curve per class
    (one-vs-rest, classes absent from the split skipped) plus ``"micro-average"`` (all
    one-vs-rest decisions pooled), which is the one single line that summarises them.
    Values are ``(x, y, thresholds)``.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)

    def xy(y: np.ndarray, s: np.ndarray) -> Curve:
        if kind == "roc":
            return roc_curve(y, s)
        precision, recall, thresholds = precision_recall_curve(y, s)
        return recall, precision, thresholds

    num_classes = probs.shape[1]
    classes = [1] if num_classes == 2 else list(range(num_classes))
    curves: dict[str, Curve] = {}
    for c in classes:
        y = (y_true == c).astype(np.int64)
        if _defined(y):
            curves[labels[c]] = xy(y, probs[:, c])
    if num_classes > 2:
        onehot = np.eye(num_classes, dtype=np.int64)[y_true]
        curves[MICRO] = xy(onehot.ravel(), probs.ravel())
    return curves


def curve_scores(curves: Mapping[str, Curve], kind: str) -> dict[str, float]:
    """Each curve's area for the plot legend: ROC AUC (``sklearn.metrics.auc``, trapezoids)
    or average precision (the PR curve's steps, ``Σ (R_n − R_{n−1}) P_n``)."""
    if kind == "roc":
        return {name: float(skm.auc(x, y)) for name, (x, y, _) in curves.items()}
    return {name: float(np.sum(np.diff(x) * y[1:])) for name, (x, y, _) in curves.items()}


@dataclass(frozen=True)
class CurveSet:
    """The ROC or PR curves of one model (see :func:`curve_points`) and their areas."""

    kind: str  # "roc" | "pr"
    curves: dict[str, Curve]
    scores: dict[str, float]


@dataclass(frozen=True)
class PlotInputs:
    """Everything the evaluation plots draw, computed once here (plots only draw)."""

    y_true: np.ndarray  # int64 [N]
    y_pred: np.ndarray  # int64 [N]
    confusion: np.ndarray  # int64 [C, C], cm[actual, predicted]
    roc: CurveSet
    pr: CurveSet


def plot_inputs(y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str]) -> PlotInputs:
    """Confusion matrix and ROC/PR curves of one model's test predictions."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = probs.argmax(axis=1).astype(np.int64)

    def curve_set(kind: str) -> CurveSet:
        curves = curve_points(y_true, probs, labels, kind)
        return CurveSet(kind, curves, curve_scores(curves, kind))

    return PlotInputs(
        y_true=y_true,
        y_pred=y_pred,
        confusion=confusion_matrix(y_true, y_pred, len(labels)),
        roc=curve_set("roc"),
        pr=curve_set("pr"),
    )


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves as ``{"head_accuracy": ..., "per_class_bees_f1": ...}``.

    Booleans and undefined values (None, NaN) are left out. Names are joined with ``_``
    and otherwise kept as they are: the tracking layer makes them valid MLflow keys.
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, f"{name}_"))
        elif (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(float(value))
        ):
            out[name] = float(value)
    return out
