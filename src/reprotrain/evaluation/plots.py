"""Plot data for ``dvc plots`` (CSV) and the same pictures as PNG files people can open.

Two audiences: ``dvc plots show/diff`` renders the CSVs declared in ``dvc.yaml`` (their
column names are part of that contract: confusion ``actual,predicted``; ROC ``fpr,tpr``;
PR ``recall,precision``; training curves ``step`` with ``accuracy``/``val_accuracy``), and
the PNGs in ``plots/images`` are for a person without DVC (or in the MLflow UI).

Matplotlib is used through its object API (``Figure``), never ``pyplot``: no global state,
no GUI backend, safe in a stage process or a test.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain.errors import DataError
from reprotrain.evaluation.metrics import MICRO, Curve, PlotInputs
from reprotrain.fsio import atomic_path

logger = logging.getLogger(__name__)

#: Names of the PNG files written into ``plots/images``.
CONFUSION_PNG = "confusion_matrix.png"
ROC_PNG = "roc.png"
PR_PNG = "pr.png"
TRAINING_PNG = "training_curves.png"
WORST_PNG = "worst_examples.png"


# --------------------------------------------------------------------------- CSV for DVC


def _cell(value: Any) -> Any:
    """CSV cell: empty for missing/non-finite numbers (Vega cannot plot 'inf')."""
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


def write_csv(path: Path | str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` with a header of ``columns`` (missing keys → empty cells)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _cell(row.get(c)) for c in columns})
    return path


def confusion_rows(
    y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]
) -> list[dict[str, str]]:
    """One ``{actual, predicted}`` row per example: DVC's confusion template counts them."""
    return [
        {"actual": labels[int(t)], "predicted": labels[int(p)]}
        for t, p in zip(y_true, y_pred, strict=True)
    ]


def curve_rows(name: str, curve: Curve, x: str, y: str, digits: int = 6) -> list[dict[str, Any]]:
    """Rows ``{x, y, threshold, class}`` of one curve, in curve order."""
    xs, ys, thresholds = curve
    return [
        {
            x: round(float(a), digits),
            y: round(float(b), digits),
            "threshold": round(float(t), digits) if math.isfinite(t) else None,
            "class": name,
        }
        for a, b, t in zip(xs, ys, thresholds, strict=True)
    ]


def read_history(path: Path | str) -> dict[str, list[Any]]:
    """A ``*.history.json`` written by ``stage_io.write_history`` (dict of lists)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: rerun the training stage that writes it (dvc repro)")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("epoch"), list):
        raise DataError(f"{path}: expected a JSON object of lists with an 'epoch' list")
    return data


def training_timeline(
    histories: Iterable[tuple[str, Mapping[str, Sequence[Any]]]],
) -> list[dict[str, Any]]:
    """Stage histories as one timeline: ``step`` 1..N across stages, with ``stage``/``epoch``.

    Fine-tuning continues from the head's weights, so its epoch 1 is step ``head_epochs + 1``
    on the shared axis: the two curves join where the second stage starts.
    """
    rows: list[dict[str, Any]] = []
    for stage, history in histories:
        epochs = list(history.get("epoch", []))
        for i, epoch in enumerate(epochs):
            row: dict[str, Any] = {"step": len(rows) + 1, "stage": stage, "epoch": epoch}
            for key, values in history.items():
                if key != "epoch" and i < len(values):
                    row[key] = values[i]
            rows.append(row)
    return rows


def timeline_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """``step, stage, epoch`` then the metric columns in a stable (sorted) order."""
    keys = sorted({k for r in rows for k in r} - {"step", "stage", "epoch"})
    return ["step", "stage", "epoch", *keys]


# --------------------------------------------------------------------------- PNG


def new_figure(width: float, height: float) -> Any:
    """A figure without pyplot: no global state, no GUI backend to select."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save_png(fig: Any, path: Path | str) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_confusion_matrix(cm: np.ndarray, labels: Sequence[str], path: Path | str) -> Path:
    """Counts with each row's recall shade (so a rare class's errors stay visible)."""
    n = len(labels)
    side = min(4 + 0.5 * n, 20)
    fig = new_figure(side + 1, side)
    ax = fig.add_subplot()
    totals = cm.sum(axis=1, keepdims=True)
    shade = np.divide(cm, totals, out=np.zeros(cm.shape, dtype=float), where=totals > 0)
    im = ax.imshow(shade, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, label="share of the actual class")
    ax.set_xticks(range(n), labels=labels, rotation=45 if n > 4 else 0, ha="right")
    ax.set_yticks(range(n), labels=labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"Confusion matrix (test, n={int(cm.sum())})")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                color = "white" if shade[i, j] > 0.5 else "black"
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color=color)
    return save_png(fig, path)


def curves_figure(
    curves: Mapping[str, Curve],
    *,
    kind: str,
    scores: Mapping[str, float | None] | None = None,
) -> Any:
    """ROC (``kind="roc"``, with the chance diagonal) or precision-recall curves, one line
    per curve given, labelled with its score."""
    fig = new_figure(6, 5)
    ax = fig.add_subplot()
    scores = scores or {}
    for name, (x, y, _) in curves.items():
        score = scores.get(name)
        label = name if score is None else f"{name} ({score:.3f})"
        ax.plot(x, y, label=label, linewidth=2.5 if name == MICRO else 1.2)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="chance")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title("ROC (test)")
    else:
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title("Precision-recall (test)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize="small")
    else:
        ax.text(0.5, 0.5, "undefined: a class is missing from the test split", ha="center")
    return fig


def plot_curves(
    curves: Mapping[str, Curve],
    path: Path | str,
    *,
    kind: str,
    scores: Mapping[str, float | None] | None = None,
) -> Path:
    """:func:`curves_figure` written as a PNG."""
    return save_png(curves_figure(curves, kind=kind, scores=scores), path)


def plot_training_curves(rows: Sequence[Mapping[str, Any]], path: Path | str) -> Path:
    """Accuracy and loss over the joint timeline, with a line where fine-tuning starts."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(10, 4)
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        for key, style in ((metric, "-o"), (f"val_{metric}", "--s")):
            points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, label=key, markersize=3)
        for i in range(1, len(rows)):
            if rows[i]["stage"] != rows[i - 1]["stage"]:
                ax.axvline(rows[i]["step"] - 0.5, color="grey", linestyle=":")
                ax.text(
                    rows[i]["step"] - 0.4,
                    0.98,
                    rows[i]["stage"],
                    va="top",
                    transform=ax.get_xaxis_transform(),
                    fontsize="small",
                    color="grey",
                )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step (epochs, all stages)")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    if not rows:
        axes[0].text(0.5, 0.5, "no training history", ha="center", transform=axes[0].transAxes)
    return save_png(fig, path)


def _short(text: str, width: int = 28) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def plot_worst_examples(
    examples: Sequence[Any], labels: Sequence[str], path: Path | str, columns: int = 4
) -> Path:
    """A grid of the most confidently wrong images (``evaluation.WorstExample``)."""
    if not examples:
        fig = new_figure(6, 2)
        fig.text(0.5, 0.5, "No misclassified test images.", ha="center", va="center", size=14)
        return save_png(fig, path)
    cols = min(columns, len(examples))
    rows = math.ceil(len(examples) / cols)
    fig = new_figure(3 * cols, 3.5 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, ex in zip(axes, examples, strict=False):
        ax.imshow(ex.image)
        ax.set_title(
            f"{_short(Path(ex.path).name)}\n"
            f"true: {labels[ex.true]}\npred: {labels[ex.pred]} ({ex.confidence:.2f})",
            fontsize="small",
            color="firebrick",
        )
    fig.suptitle("Most confidently wrong test images")
    return save_png(fig, path)


def summary_curve(curves: Mapping[str, Curve], labels: Sequence[str]) -> tuple[str, Curve] | None:
    """The one curve ``dvc plots`` draws: the positive class (binary) or the micro-average.

    DVC's templates colour lines by revision only, so per-class rows in one file would be
    joined into a single zig-zag line; the per-class curves go to the PNG instead.
    """
    for name in (MICRO, labels[1] if len(labels) == 2 else None):
        if name in curves:
            return name, curves[name]
    return None


def write_evaluation_plots(
    inputs: PlotInputs,
    labels: Sequence[str],
    timeline: Sequence[Mapping[str, Any]],
    worst: Sequence[Any],
    *,
    plots_dir: Path | str,
    images_dir: Path | str,
) -> dict[str, Path]:
    """Every plot of the evaluate stage: the four DVC CSVs and the five PNGs.

    ``inputs`` (``evaluation.plot_inputs``) carries the confusion matrix and curves already
    computed; this function only writes them. Returns the written files by name (the stage
    logs them as MLflow artifacts).
    """
    plots_dir, images_dir = Path(plots_dir), Path(images_dir)
    out: dict[str, Path] = {}
    out["confusion.csv"] = write_csv(
        plots_dir / "confusion.csv",
        confusion_rows(inputs.y_true, inputs.y_pred, labels),
        ["actual", "predicted"],
    )
    out[CONFUSION_PNG] = plot_confusion_matrix(inputs.confusion, labels, images_dir / CONFUSION_PNG)
    for curve_set, x, y, png in (
        (inputs.roc, "fpr", "tpr", ROC_PNG),
        (inputs.pr, "recall", "precision", PR_PNG),
    ):
        summary = summary_curve(curve_set.curves, labels)
        rows = curve_rows(*summary, x=x, y=y) if summary else []
        out[f"{curve_set.kind}.csv"] = write_csv(
            plots_dir / f"{curve_set.kind}.csv", rows, [x, y, "threshold", "class"]
        )
        out[png] = plot_curves(
            curve_set.curves, images_dir / png, kind=curve_set.kind, scores=curve_set.scores
        )
    out["training_curves.csv"] = write_csv(
        plots_dir / "training_curves.csv", timeline, timeline_columns(timeline)
    )
    out[TRAINING_PNG] = plot_training_curves(timeline, images_dir / TRAINING_PNG)
    out[WORST_PNG] = plot_worst_examples(worst, labels, images_dir / WORST_PNG)
    return out
