"""The table model on its test split: the image kind's metrics and plots, with rows where
the images had pictures.

What is shared with images is called, not copied: the metrics
(:func:`reprotrain.evaluation.metrics.classification_metrics`), the confusion/ROC/PR/training
plots (:mod:`reprotrain.evaluation.plots`), the paired test (McNemar, as
:mod:`reprotrain.evaluation.gain` compares the fine-tuned model with the head). What is the
table's own: the worst errors as rows (the text, the numbers), one prediction row per test
row (``row`` = its line in the source file), the test split's digest from its contents, the
gain over the classical baseline, and the gate's accuracy floor
(:func:`accuracy_floor`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain.evaluation import plots
from reprotrain.evaluation.gain import finetune_gain
from reprotrain.evaluation.metrics import plot_inputs
from reprotrain.tables.features import InputSpec

logger = logging.getLogger(__name__)

#: Characters of a text cell shown in the card's worst rows and the worst-rows CSV.
TEXT_CHARS = 160
WORST_CSV = "worst_rows.csv"


def test_digest(frame: Any, y: np.ndarray) -> str:
    """SHA-256 of the test rows' contents and labels (sorted: the same rows in another order
    are the same test set). The gate compares models only on the same test set."""
    import pandas as pd

    hashes = pd.util.hash_pandas_object(frame.reset_index(drop=True), index=False).to_numpy()
    pairs = sorted(zip(hashes.tolist(), np.asarray(y).tolist(), strict=True))
    return hashlib.sha256(repr(pairs).encode()).hexdigest()


test_digest.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def _cell(value: Any) -> Any:
    if isinstance(value, str) and len(value) > TEXT_CHARS:
        return value[: TEXT_CHARS - 1] + "…"
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float):
        # Stored as float32: 7 significant digits are the value (173.1, not 173.10000610...).
        return None if np.isnan(value) else float(f"{value:.7g}")
    return value


def worst_rows(
    frame: Any, y: np.ndarray, probs: np.ndarray, labels: Sequence[str], spec: InputSpec, k: int
) -> list[dict[str, Any]]:
    """The ``k`` most confidently wrong test rows, with their input cells."""
    pred = probs.argmax(axis=1)
    confidence = probs[np.arange(len(pred)), pred]
    wrong = np.flatnonzero(pred != y)
    order = wrong[np.argsort(-confidence[wrong], kind="stable")][:k]
    index = list(frame.index)
    out = []
    for i in order:
        row = {
            "row": _cell(index[i]),
            "true": labels[int(y[i])],
            "predicted": labels[int(pred[i])],
            "confidence": round(float(confidence[i]), 4),
        }
        row.update({c: _cell(frame[c].iloc[i]) for c in spec.columns})
        out.append(row)
    return out


def prediction_rows(
    frame: Any, y: np.ndarray, probs: np.ndarray, labels: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per test row: its line in the source, true/predicted label, confidence and
    ``prob_<class>`` (what ``predict`` and the server answer for the same row)."""
    pred = probs.argmax(axis=1)
    rows = []
    for i, row_id in enumerate(frame.index):
        row: dict[str, Any] = {
            "row": _cell(row_id),
            "true_label": labels[int(y[i])],
            "predicted_label": labels[int(pred[i])],
            "confidence": round(float(probs[i, pred[i]]), 6),
        }
        for c, name in enumerate(labels):
            row[f"prob_{name}"] = round(float(probs[i, c]), 6)
        rows.append(row)
    return rows


def baseline_gain(
    y_true: np.ndarray, baseline_pred: np.ndarray, model_pred: np.ndarray, *, alpha: float
) -> dict[str, Any]:
    """The network vs the classical baseline on the same test rows: both accuracies with
    Wilson intervals, the difference and the exact McNemar test (paired: only the rows
    exactly one of them gets right carry information). The same comparison as
    fine-tuning's over the head (:func:`reprotrain.evaluation.gain.finetune_gain`, called
    with the baseline in the head's place), under the table's names."""
    g = finetune_gain(y_true, baseline_pred, model_pred, alpha=alpha)
    test, result, delta = g["mcnemar"], g["verdict"], g["delta"]
    words = {
        "better": "beats",
        "worse": "is worse than",
        "no_gain": "is not significantly better than",
    }
    summary = (
        f"the network {words[result]} the classical baseline: {100 * g['head_accuracy']:.1f}% "
        f"-> {100 * g['finetuned_accuracy']:.1f}% ({100 * delta:+.1f} points, n = {g['n']}; "
        f"McNemar p = {test['p_value']:.3g}, {test['challenger_only']} fixed / "
        f"{test['champion_only']} broken)"
    )
    return {
        "n": g["n"],
        "baseline_accuracy": g["head_accuracy"],
        "baseline_ci": g["head_ci"],
        "model_accuracy": g["finetuned_accuracy"],
        "model_ci": g["finetuned_ci"],
        "delta": delta,
        "mcnemar": test,
        "alpha": alpha,
        "verdict": result,
        "summary": summary,
    }


def accuracy_floor(setting: float | None, baseline_accuracy: float | None) -> tuple[float, str]:
    """The gate's floor on test accuracy and where it comes from: ``table.min_accuracy``
    when set, else the classical baseline's test accuracy (a network that cannot match
    TF-IDF + logistic regression should not ship), else 0 (no baseline to compare with)."""
    if setting is not None:
        return float(setting), "table.min_accuracy"
    if baseline_accuracy is not None:
        return float(baseline_accuracy), "the classical baseline's test accuracy"
    return 0.0, "no floor (no baseline)"


def write_plots(
    y: np.ndarray,
    probs: np.ndarray,
    labels: Sequence[str],
    history: Mapping[str, Sequence[Any]],
    worst: Sequence[Mapping[str, Any]],
    *,
    plots_dir: Path,
    images_dir: Path,
) -> dict[str, Path]:
    """The image kind's DVC CSVs and PNGs (confusion, ROC, PR, training curves) and the
    worst rows as a CSV (where images have a picture grid)."""
    inputs = plot_inputs(y, probs, labels)
    out: dict[str, Path] = {}
    out["confusion.csv"] = plots.write_csv(
        plots_dir / "confusion.csv",
        plots.confusion_rows(inputs.y_true, inputs.y_pred, labels),
        ["actual", "predicted"],
    )
    out[plots.CONFUSION_PNG] = plots.plot_confusion_matrix(
        inputs.confusion, labels, images_dir / plots.CONFUSION_PNG
    )
    for curve_set, x, yname, png in (
        (inputs.roc, "fpr", "tpr", plots.ROC_PNG),
        (inputs.pr, "recall", "precision", plots.PR_PNG),
    ):
        summary = plots.summary_curve(curve_set.curves, labels)
        rows = plots.curve_rows(*summary, x=x, y=yname) if summary else []
        out[f"{curve_set.kind}.csv"] = plots.write_csv(
            plots_dir / f"{curve_set.kind}.csv", rows, [x, yname, "threshold", "class"]
        )
        out[png] = plots.plot_curves(
            curve_set.curves, images_dir / png, kind=curve_set.kind, scores=curve_set.scores
        )
    timeline = plots.training_timeline([("train", history)])
    out["training_curves.csv"] = plots.write_csv(
        plots_dir / "training_curves.csv", timeline, plots.timeline_columns(timeline)
    )
    out[plots.TRAINING_PNG] = plots.plot_training_curves(timeline, images_dir / plots.TRAINING_PNG)
    columns = list(worst[0]) if worst else ["row", "true", "predicted", "confidence"]
    out[WORST_CSV] = plots.write_csv(plots_dir / WORST_CSV, worst, columns)
    return out
