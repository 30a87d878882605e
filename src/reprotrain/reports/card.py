"""A model card per registered version: ``reports/model_card.md`` and its figures.

Everything on the card is something the pipeline already measured; this module only
arranges it, adds the uncertainty that a single test accuracy hides (95% intervals: Wilson
for proportions, a seeded bootstrap for macro-F1, from ``evaluation.metrics``) and shows
where the model looked on its worst mistakes (Grad-CAM, :mod:`.figures`). Pure functions:
data in, text or files out. :func:`write_model_card` is the one entry point (called by
evaluate).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain.evaluation.metrics import (
    bootstrap_macro_f1,
    confusion_matrix,
    reliability_bins,
    wilson_interval,
)
from reprotrain.fsio import atomic_write_text
from reprotrain.reports.figures import (
    grad_cam,
    grad_cams,
    overlay,
    plot_grad_cam,
    plot_reliability,
)
from reprotrain.reports.markdown import reproduce_section, table

#: Also importable from here (the card's statistics and figures, as callers used them).
__all__ = [
    "CardData",
    "bootstrap_macro_f1",
    "grad_cam",
    "overlay",
    "reliability_bins",
    "render_card",
    "wilson_interval",
    "write_model_card",
]

logger = logging.getLogger(__name__)

FIGURES = "model_card"  # sub-folder of the card's directory holding its PNGs


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
    finetune_gain: Mapping[str, Any] | None = None  # evaluation.gain.finetune_gain on test


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _ci(lo_hi: tuple[float, float]) -> str:
    return f"[{lo_hi[0]:.4f}, {lo_hi[1]:.4f}]"


def _param(params: Mapping[str, Any], dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return "–"
        node = node[part]
    return node


def render_card(card: CardData) -> str:  # noqa: PLR0915  (the card's sections, in reading order)
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
    out += table(
        ["split", *card.labels, "total"],
        [
            [s, *(splits[s].get("classes", {}).get(c, 0) for c in card.labels), splits[s]["total"]]
            for s in ("train", "val", "test")
            if s in splits
        ],
    )
    out += ["", "## Training", ""]
    out += table(
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
    out += ["", *finetune_paragraph(card.finetune_gain)]
    env = card.environment
    out += ["", "Environment: " + ", ".join(f"{key} {env[key]}" for key in sorted(env)), ""]

    acc_ci = wilson_interval(correct, n)
    f1_ci = bootstrap_macro_f1(y_true, y_pred, k, seed=card.seed)
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
    out += table(["metric", "value", "95% interval"], rows)
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
    out += table(["class", "precision", "recall", "recall 95%", "F1", "support"], rows)
    out += ["", "Confusion matrix (rows: actual, columns: predicted):", ""]
    cm = confusion_matrix(y_true, y_pred, k)
    out += table(
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
        out += table(
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
        out += table(["format", "accuracy", "agreement", "size", "latency/image", "shipped"], rows)
    else:
        out += ["No export report (metrics/export.json missing)."]

    out += [
        "",
        *reproduce_section(card.run_id, card.reproduce),
    ]
    return "\n".join(out)


def finetune_paragraph(gain: Mapping[str, Any] | None) -> list[str]:
    """What fine-tuning added over the head on the test images: the one-line verdict (with
    what to try when it added nothing) and both accuracies with their Wilson intervals.

    Why on the card: the stage exists to beat the head; a card that only shows the final
    accuracy hides a fine-tuning stage that did nothing.
    """
    out = ["### What fine-tuning added", ""]
    if not gain:
        return [*out, "Not measured (no head predictions on the test split)."]
    t = gain["mcnemar"]
    line = str(gain["summary"])
    out += [line[:1].upper() + line[1:], ""]
    out += table(
        ["model", "test accuracy", "95% interval"],
        [
            ["head only", _pct(gain["head_accuracy"]), _ci(tuple(gain["head_ci"])) + " Wilson"],
            [
                "fine-tuned",
                _pct(gain["finetuned_accuracy"]),
                _ci(tuple(gain["finetuned_ci"])) + " Wilson",
            ],
        ],
    )
    out += [
        "",
        f"Paired on the same {gain['n']} images (exact McNemar, as the promotion gate): "
        f"fine-tuning fixed {t['challenger_only']} and broke {t['champion_only']}, "
        f"p = {t['p_value']:.3g}.",
    ]
    return out


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
    cm = confusion_matrix(y_true, probs.argmax(axis=1), len(card.labels))
    figures["confusion"] = plots.plot_confusion_matrix(cm, card.labels, fig_dir / "confusion.png")
    rows = []
    chosen = list(worst)[:worst_k]
    heats = None
    if model is not None and chosen:  # one pass for every image (figures.grad_cams)
        heats = grad_cams(model, np.stack([w.image for w in chosen]), [int(w.pred) for w in chosen])
    for i, w in enumerate(chosen):
        row = {
            "path": w.path,
            "true": card.labels[int(w.true)],
            "pred": card.labels[int(w.pred)],
            "confidence": float(w.confidence),
        }
        if heats is not None:
            heat = heats[i]
            title = f"{Path(w.path).name}: true {row['true']}, predicted {row['pred']}"
            fig = plot_grad_cam(w.image, heat, title, fig_dir / f"gradcam_{i + 1}.png")
            row["figure"] = fig.relative_to(path.parent).as_posix()
        rows.append(row)
    card.figures = {k: Path(v).relative_to(path.parent).as_posix() for k, v in figures.items()}
    card.worst = rows
    atomic_write_text(path, render_card(card))
    logger.info("model card: %s (%d figures)", path, len(figures) + len(rows))
    return path
