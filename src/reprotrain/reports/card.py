"""A model card per registered version: ``reports/model_card.md`` and its figures.

Everything on the card is something the pipeline already measured; this module only
arranges it, adds the uncertainty that a single test accuracy hides (95% intervals) and
shows where the model looked on its worst mistakes (Grad-CAM). Pure functions: data in,
text or files out. :func:`write_model_card` is the one entry point (called by evaluate).

Why Wilson intervals: on a test split of ~80 images a 95% accuracy has an interval several
points wide, and the normal approximation breaks down near 0 and 1; Wilson's does not
(statsmodels is not a dependency, and the formula is four lines with scipy's normal
quantile). Macro-F1 has no closed form: a seeded bootstrap over test images gives its interval.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain.fsio import atomic_write_text

logger = logging.getLogger(__name__)

FIGURES = "model_card"  # sub-folder of the card's directory holding its PNGs


# --------------------------------------------------------------------------- statistics


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``."""
    from scipy.stats import norm

    if n <= 0:
        return (float("nan"), float("nan"))
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_interval(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    metric: Any,
    *,
    rounds: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(y_true, y_pred)`` over resampled images."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    if n == 0:
        return (float("nan"), float("nan"))
    values = []
    for _ in range(rounds):
        idx = rng.integers(0, n, n)
        values.append(metric(y_true[idx], y_pred[idx]))
    lo, hi = np.percentile(values, [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100])
    return (float(lo), float(hi))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    from sklearn.metrics import f1_score

    return float(
        f1_score(y_true, y_pred, labels=list(range(num_classes)), average="macro", zero_division=0)
    )


def reliability_bins(
    y_true: np.ndarray, probs: np.ndarray, bins: int = 10
) -> list[dict[str, float]]:
    """Per confidence bin: its range, count, mean confidence and accuracy (the diagram's data)."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = []
    for i in range(bins):
        lo, hi = edges[i], edges[i + 1]
        mask = (conf > lo) & (conf <= hi) if i else (conf >= lo) & (conf <= hi)
        n = int(mask.sum())
        out.append(
            {
                "lo": float(lo),
                "hi": float(hi),
                "count": n,
                "confidence": float(conf[mask].mean()) if n else float("nan"),
                "accuracy": float(correct[mask].mean()) if n else float("nan"),
            }
        )
    return out


# --------------------------------------------------------------------------- figures


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(y_true: np.ndarray, probs: np.ndarray, path: Path, bins: int = 10) -> Path:
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    plt = _pyplot()
    rows = [r for r in reliability_bins(y_true, probs, bins) if r["count"]]
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    width = 1.0 / bins
    ax.bar(
        [r["lo"] for r in rows],
        [r["accuracy"] for r in rows],
        width=width,
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for r in rows:
        ax.text(r["lo"] + width / 2, 0.02, str(r["count"]), ha="center", fontsize=7)
    ax.set(
        xlabel="confidence (top-1 probability)",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
        title="Reliability (test split; n per bin)",
    )
    ax.legend(loc="upper left", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _nested_base(model: Any, name: str) -> Any:
    try:
        layer = model.get_layer(name)
    except ValueError:
        return None
    return layer if hasattr(layer, "layers") else None


def grad_cam(
    model: Any, image: np.ndarray, class_index: int | None = None, base_name: str = "base"
) -> np.ndarray:
    """Grad-CAM heat map ``[h, w]`` in 0..1 on the last convolutional feature map.

    For the transfer model that map is the output of the nested backbone layer
    (``base_name``), so the outer model is replayed layer by layer with the tape watching the
    base's output; for any other model, the last layer with a 4-D output is used.
    """
    import keras
    import tensorflow as tf

    x = tf.constant(np.asarray(image, dtype=np.float32)[np.newaxis])
    base = _nested_base(model, base_name)
    with tf.GradientTape() as tape:
        if base is not None:
            h = x
            for layer in model.layers:
                if isinstance(layer, keras.layers.InputLayer):
                    continue
                h = layer(h, training=False)
                if layer is base:
                    features = h
                    tape.watch(features)
            preds = h
        else:
            conv = [layer for layer in model.layers if len(layer.output.shape) == 4][-1]
            sub = keras.Model(model.inputs, [conv.output, model.outputs[0]])
            features, preds = sub(x, training=False)
            tape.watch(features)
        index = int(tf.argmax(preds[0])) if class_index is None else int(class_index)
        score = preds[:, index]
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2))  # one weight per channel
    cam = tf.nn.relu(tf.reduce_sum(features * weights[:, tf.newaxis, tf.newaxis, :], axis=-1))[0]
    cam = cam.numpy().astype(np.float64)
    top = cam.max()
    return cam / top if top > 0 else cam


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The heat map upsampled to the image (bilinear), coloured (jet) and blended: uint8."""
    from matplotlib import colormaps
    from PIL import Image

    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape[:2]
    up = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).resize(
        (w, h), Image.Resampling.BILINEAR
    )
    colour = colormaps["jet"](np.asarray(up, dtype=np.float32) / 255.0)[..., :3] * 255.0
    return np.clip((1 - alpha) * img + alpha * colour, 0, 255).astype(np.uint8)


def plot_grad_cam(
    image: np.ndarray, heat: np.ndarray, title: str, path: Path
) -> Path:  # pragma: no cover - drawing only
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(6, 3.3), dpi=100)
    axes[0].imshow(np.asarray(image, dtype=np.uint8))
    axes[0].set_title("image", fontsize=8)
    axes[1].imshow(overlay(image, heat))
    axes[1].set_title("Grad-CAM: where the model looked", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- the card


@dataclass
class CardData:
    """What the card shows; every field comes from a file or value the pipeline has."""

    model_name: str
    labels: list[str]
    y_true: np.ndarray
    probs: np.ndarray
    metrics: Mapping[str, Any]  # metrics/evaluate.json
    stats: Mapping[str, Any]  # data/prepared/stats.json
    params: Mapping[str, Any]  # params.yaml values (config.to_dict(params))
    environment: Mapping[str, str]
    run_id: str
    version: int | str | None = None
    data_source: str = ""
    data_digest: str = ""
    epochs_run: Mapping[str, int] = field(default_factory=dict)
    promotion: Mapping[str, Any] | None = None  # metrics/promotion.json
    export: Mapping[str, Any] | None = None  # metrics/export.json
    reproduce: str = "dvc repro"
    figures: Mapping[str, str] = field(default_factory=dict)  # name → path relative to card
    worst: Sequence[Mapping[str, Any]] = ()  # {path, true, pred, confidence, figure}
    seed: int = 0


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _ci(lo_hi: tuple[float, float]) -> str:
    return f"[{lo_hi[0]:.4f}, {lo_hi[1]:.4f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _param(params: Mapping[str, Any], dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return "–"
        node = node[part]
    return node


def render_card(card: CardData) -> str:
    """The card as Markdown (pure: the figures' files are referenced, not drawn here)."""
    y_true = np.asarray(card.y_true, dtype=np.int64)
    probs = np.asarray(card.probs, dtype=np.float64)
    y_pred = probs.argmax(axis=1)
    n, k = len(y_true), len(card.labels)
    correct = int((y_pred == y_true).sum())
    m = card.metrics
    title = f"{card.model_name}" + (f" v{card.version}" if card.version is not None else "")
    out = [f"# Model card: {title}", ""]
    out += [
        "## Intended use",
        "",
        f"Classifies a photo into one of {k} classes: {', '.join(f'`{c}`' for c in card.labels)}. "
        "Input: an image file (JPEG/PNG/…), normalised as in training (EXIF orientation, RGB, "
        f"longer side ≤ {_param(card.params, 'prepare.max_side')} px, then "
        f"{_param(card.params, 'model.image_size')} px square). Not for images outside these "
        "classes: it always answers one of them (check the confidence).",
        "",
        "## Data",
        "",
        f"- Source: `{card.data_source or _param(card.params, 'data.source')}`",
        f"- Content digest (sha256): `{card.data_digest or _param(card.params, 'data.sha256')}`",
        f"- Images used: {card.stats.get('images', '–')} of {card.stats.get('files_seen', '–')}"
        f" files; quarantined: {card.stats.get('quarantined', 0)}"
        + (
            " (" + ", ".join(f"{r}: {c}" for r, c in card.stats["quarantine_reasons"].items()) + ")"
            if card.stats.get("quarantine_reasons")
            else ""
        )
        + f"; duplicates: {card.stats.get('duplicates', 0)}",
        "",
    ]
    splits = card.stats.get("splits", {})
    out += _table(
        ["split", *card.labels, "total"],
        [
            [s, *(splits[s].get("classes", {}).get(c, 0) for c in card.labels), splits[s]["total"]]
            for s in ("train", "val", "test")
            if s in splits
        ],
    )
    out += ["", "## Training", ""]
    out += _table(
        ["setting", "value"],
        [
            [
                "backbone",
                f"{_param(card.params, 'model.backbone')} (alpha "
                f"{_param(card.params, 'model.alpha')}), "
                f"{_param(card.params, 'model.weights')} weights",
            ],
            ["image size", _param(card.params, "model.image_size")],
            ["seed", _param(card.params, "seed")],
            [
                "train_head",
                f"lr {_param(card.params, 'train_head.learning_rate')}, batch "
                f"{_param(card.params, 'train_head.batch_size')}, max epochs "
                f"{_param(card.params, 'train_head.epochs')}",
            ],
            [
                "finetune",
                f"top {_param(card.params, 'finetune.unfreeze_top')} layers, lr "
                f"{_param(card.params, 'finetune.learning_rate')}, max epochs "
                f"{_param(card.params, 'finetune.epochs')}, augment "
                f"{_param(card.params, 'finetune.augment')}",
            ],
            *[[f"epochs run ({stage})", e] for stage, e in card.epochs_run.items()],
        ],
    )
    env = card.environment
    out += ["", "Environment: " + ", ".join(f"{key} {env[key]}" for key in sorted(env)), ""]

    acc_ci = wilson_interval(correct, n)
    f1_ci = bootstrap_interval(y_true, y_pred, lambda a, b: macro_f1(a, b, k), seed=card.seed)
    out += [f"## Test metrics (n = {n}, 95% intervals)", ""]
    rows = [
        ["accuracy", _pct(m.get("accuracy")), _ci(acc_ci) + " Wilson"],
        ["macro F1", _pct(m.get("macro_f1")), _ci(f1_ci) + " bootstrap (1000)"],
        ["macro precision", _pct(m.get("macro_precision")), ""],
        ["macro recall", _pct(m.get("macro_recall")), ""],
        ["ROC AUC", _pct(m.get("roc_auc")), ""],
        ["log loss", _pct(m.get("loss")), ""],
        ["ECE (calibration error)", _pct(m.get("ece")), ""],
    ]
    out += _table(["metric", "value", "95% interval"], rows)
    out += ["", "Per class (recall interval: Wilson over the class's test images):", ""]
    per_class = m.get("per_class", {})
    rows = []
    for i, name in enumerate(card.labels):
        pc = per_class.get(name, {})
        support = int((y_true == i).sum())
        hits = int(((y_pred == i) & (y_true == i)).sum())
        rows.append(
            [
                name,
                _pct(pc.get("precision")),
                _pct(pc.get("recall")),
                _ci(wilson_interval(hits, support)),
                _pct(pc.get("f1")),
                pc.get("support", support),
            ]
        )
    out += _table(["class", "precision", "recall", "recall 95%", "F1", "support"], rows)
    out += ["", "Confusion matrix (rows: actual, columns: predicted):", ""]
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    out += _table(
        ["actual \\ predicted", *card.labels],
        [[name, *cm[i].tolist()] for i, name in enumerate(card.labels)],
    )
    for key, caption in (("reliability", "Reliability diagram"), ("confusion", "Confusion matrix")):
        if key in card.figures:
            out += ["", f"![{caption}]({card.figures[key]})"]

    out += ["", "## Worst test errors", ""]
    if card.worst:
        out += ["The most confident mistakes; the overlay shows where the model looked.", ""]
        for w in card.worst:
            line = (
                f"- `{w['path']}`: true `{w['true']}`, predicted `{w['pred']}` "
                f"({w['confidence']:.3f})"
            )
            if w.get("figure"):
                line += f"  \n  ![Grad-CAM]({w['figure']})"
            out.append(line)
    else:
        out += ["None: every test image was classified correctly."]

    out += ["", "## Promotion gate", ""]
    if card.promotion:
        p = card.promotion
        out += _table(
            ["", "value"],
            [
                ["decision", "promoted" if p.get("promoted") else "not promoted"],
                ["alias", p.get("alias") or "none"],
                ["accuracy", _pct(p.get("accuracy"))],
                [
                    "champion",
                    f"v{p['champion_version']} ({_pct(p.get('champion_accuracy'))})"
                    if p.get("champion_version")
                    else "none",
                ],
                *[
                    [k_, p[k_]]
                    for k_ in sorted(p)
                    if k_
                    not in {
                        "promoted",
                        "alias",
                        "accuracy",
                        "champion_version",
                        "champion_accuracy",
                        "reason",
                        "registered_model",
                        "model_uri",
                        "version",
                    }
                ],
                ["reason", p.get("reason", "")],
            ],
        )
    else:
        out += ["No gate decision recorded (metrics/promotion.json missing)."]

    out += ["", "## Exported formats", ""]
    formats = (card.export or {}).get("formats") or {}
    if formats:
        keras_row = card.export.get("keras", {}) if card.export else {}
        rows = [
            [
                "keras (reference)",
                _pct(keras_row.get("accuracy")),
                "–",
                _mb(keras_row.get("size_bytes")),
                _ms(keras_row.get("latency_ms")),
                "–",
            ]
        ]
        rows += [
            [
                name,
                _pct(r["accuracy"]),
                _pct(r["agreement"]),
                _mb(r["size_bytes"]),
                _ms(r["latency_ms"]),
                "yes" if r["shipped"] else "no: " + r["reason"].removeprefix("not shipped: "),
            ]
            for name, r in formats.items()
        ]
        out += _table(["format", "accuracy", "agreement", "size", "latency/image", "shipped"], rows)
    else:
        out += ["No export report (metrics/export.json missing)."]

    out += [
        "",
        "## Reproduce",
        "",
        f"MLflow run: `{card.run_id}`",
        "",
        "```",
        card.reproduce,
        "```",
        "",
    ]
    return "\n".join(out)


def _mb(size: Any) -> str:
    return "–" if size is None else f"{size / 1e6:.1f} MB"


def _ms(ms: Any) -> str:
    return "–" if ms is None else f"{ms:.1f} ms"


def write_model_card(
    path: Path,
    *,
    model: Any = None,
    worst: Sequence[Any] = (),
    worst_k: int = 4,
    **fields: Any,
) -> Path:
    """Draw the figures (reliability, confusion matrix, Grad-CAM of the ``worst_k`` most
    confident errors) next to ``path`` and write the Markdown card there.

    ``fields`` are :class:`CardData`'s (minus ``figures``/``worst``). ``worst`` holds
    objects like ``evaluation.WorstExample`` (``image`` uint8, ``true``, ``pred``,
    ``confidence``, ``path``); ``model`` is the Keras model (for Grad-CAM; None skips it).
    """
    from reprotrain.evaluation import plots

    path = Path(path)
    fig_dir = path.parent / FIGURES
    card = CardData(**fields)
    y_true = np.asarray(card.y_true, dtype=np.int64)
    probs = np.asarray(card.probs, dtype=np.float64)
    figures = {"reliability": plot_reliability(y_true, probs, fig_dir / "reliability.png")}
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_true, probs.argmax(axis=1), labels=list(range(len(card.labels))))
    figures["confusion"] = plots.plot_confusion_matrix(cm, card.labels, fig_dir / "confusion.png")
    rows = []
    for i, w in enumerate(list(worst)[:worst_k]):
        row = {
            "path": w.path,
            "true": card.labels[int(w.true)],
            "pred": card.labels[int(w.pred)],
            "confidence": float(w.confidence),
        }
        if model is not None:
            heat = grad_cam(model, w.image, int(w.pred))
            title = f"{Path(w.path).name}: true {row['true']}, predicted {row['pred']}"
            fig = plot_grad_cam(w.image, heat, title, fig_dir / f"gradcam_{i + 1}.png")
            row["figure"] = fig.relative_to(path.parent).as_posix()
        rows.append(row)
    card.figures = {k: Path(v).relative_to(path.parent).as_posix() for k, v in figures.items()}
    card.worst = rows
    atomic_write_text(path, render_card(card))
    logger.info("model card: %s (%d figures)", path, len(figures) + len(rows))
    return path
