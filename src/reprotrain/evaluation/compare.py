"""Transfer model vs. from-scratch baseline: what the pretrained backbone buys.

Pure functions for the evaluate stage: the gain in test accuracy, per-class recall of each
model side by side (``sklearn.metrics.recall_score``), the rows of a DVC plot and a PNG.
A gain near zero means the from-scratch model does as well, so the backbone (its size, its
licence, its download) is not earning its keep on this data.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain.errors import DataError
from reprotrain.evaluation.plots import new_figure, save_png
from reprotrain.fsio import atomic_path

#: File names evaluate writes (plot data for ``dvc plots`` and the picture for people).
RECALL_CSV = "recall_by_model.csv"
RECALL_PNG = "recall_by_model.png"


def transfer_gain(finetuned_acc: float, baseline_acc: float) -> float:
    """Test accuracy of the transfer model minus the baseline's (accuracy points, -1..1)."""
    for name, value in (("finetuned_acc", finetuned_acc), ("baseline_acc", baseline_acc)):
        if not (isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= 1):
            raise DataError(f"transfer_gain: {name} = {value!r}: must be an accuracy in [0, 1]")
    return float(finetuned_acc) - float(baseline_acc)


def per_class_recall(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of each class ``0..num_classes-1`` (0 for a class with no examples)."""
    from sklearn.metrics import recall_score

    return np.asarray(
        recall_score(
            np.asarray(y_true),
            np.asarray(y_pred),
            labels=list(range(num_classes)),
            average=None,
            zero_division=0,
        ),
        dtype=float,
    )


def recall_rows(
    labels: Sequence[str], recalls: Mapping[str, Sequence[float]], digits: int = 6
) -> list[dict[str, Any]]:
    """Wide rows ``{"class": name, "<model>": recall, ...}``, one per class, for a
    ``dvc plots`` bar chart with one series per model (``y: {file: [finetuned, ...]}``)."""
    for model, values in recalls.items():
        if len(values) != len(labels):
            raise DataError(
                f"per-class recall of {model!r} has {len(values)} values for {len(labels)} classes"
            )
    return [
        {"class": name, **{m: round(float(v[i]), digits) for m, v in recalls.items()}}
        for i, name in enumerate(labels)
    ]


def write_recall_csv(
    path: Path | str, labels: Sequence[str], recalls: Mapping[str, Sequence[float]]
) -> Path:
    """The rows of :func:`recall_rows` as CSV (columns ``class`` then one per model)."""
    rows = recall_rows(labels, recalls)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["class", *recalls])
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_recall_comparison(
    labels: Sequence[str], recalls: Mapping[str, Sequence[float]], path: Path | str
) -> Path:
    """Grouped horizontal bars: per class, one bar per model (e.g. finetuned/head/baseline)."""
    recall_rows(labels, recalls)  # validates the lengths
    models = list(recalls)
    n = len(labels)
    height = 0.8 / max(len(models), 1)
    fig = new_figure(7, 1.2 + 0.45 * n * max(len(models), 1))
    ax = fig.add_subplot()
    ys = np.arange(n)
    for j, model in enumerate(models):
        values = np.asarray(recalls[model], dtype=float)
        bars = ax.barh(ys + (j - (len(models) - 1) / 2) * height, values, height, label=model)
        ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=8)
    ax.set_yticks(ys, labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("recall (test split)")
    ax.set_title("Per-class recall by model")
    ax.legend(loc="lower right", fontsize=8)
    return save_png(fig, path)
