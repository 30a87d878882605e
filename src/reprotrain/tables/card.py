"""The table model's card (``reports/model_card.md``): what the model takes, how well it
does, what it gains over the classical baseline, which columns it relies on, its worst
errors as rows, the gate's decision, the exports and how to reproduce it.

Pure rendering from the numbers evaluate computed (:class:`TableCard`); the registry shows
the same text as the registered version's description.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reprotrain.fsio import atomic_path
from reprotrain.reports.markdown import reproduce_section, table


@dataclass
class TableCard:
    """Everything the card shows."""

    model_name: str  # the registered model
    version: int | None
    keras_name: str  # table_functional | table_sequential | table_subclassed
    labels: Sequence[str]
    schema: Mapping[str, Any]  # Schema.to_dict()
    metrics: Mapping[str, Any]
    counts: Mapping[str, int]  # rows per split
    params: Mapping[str, Any]  # to_dict(params)
    run_id: str
    reproduce: str
    baseline_gain: Mapping[str, Any] | None = None
    importance: Sequence[Mapping[str, Any]] = ()
    worst: Sequence[Mapping[str, Any]] = ()
    promotion: Mapping[str, Any] | None = None
    floor: tuple[float, str] = (0.0, "")
    export: Mapping[str, Any] | None = None
    data_source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _num(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _schema_section(card: TableCard) -> list[str]:
    s = card.schema
    rows = [
        [role, ", ".join(s.get(role) or []) or "–"] for role in ("text", "numeric", "categorical")
    ]
    rows.append(
        ["label", f"{s.get('label')} ({len(card.labels)} classes: {', '.join(card.labels)})"]
    )
    if s.get("ignore"):
        rows.append(["ignored", ", ".join(s["ignore"])])
    counts = ", ".join(f"{k} {v}" for k, v in card.counts.items())
    return [
        "## Data and inputs",
        "",
        f"Source: `{card.data_source}`; rows: {counts}.",
        "",
        "The model takes the raw columns (a dict keyed by column name; preprocessing inside "
        "it, adapted on the train split only):",
        "",
        *table(["role", "columns"], rows),
    ]


def _metrics_section(card: TableCard) -> list[str]:
    m = card.metrics
    keys = ["accuracy", "loss", "macro_f1", "weighted_f1", "roc_auc", "average_precision", "ece"]
    keys += [k for k in m if k.startswith("top_")]
    out = ["## Test metrics", "", *table(["metric", "value"], [[k, _num(m.get(k))] for k in keys])]
    per_class = m.get("per_class") or {}
    if per_class:
        rows = [
            [name, _num(r["precision"]), _num(r["recall"]), _num(r["f1"]), r["support"]]
            for name, r in per_class.items()
        ]
        out += ["", *table(["class", "precision", "recall", "f1", "support"], rows)]
    return out


def _gain_section(card: TableCard) -> list[str]:
    out = ["## Gain over the classical baseline", ""]
    g = card.baseline_gain
    if not g:
        return [*out, "No baseline model to compare with."]
    return [
        *out,
        g["summary"] + ".",
        "",
        *table(
            ["model", "test accuracy", "95% interval"],
            [
                ["classical baseline", _num(g["baseline_accuracy"]), _ci(g["baseline_ci"])],
                [card.keras_name, _num(g["model_accuracy"]), _ci(g["model_ci"])],
            ],
        ),
    ]


def _ci(lo_hi: Sequence[float]) -> str:
    return f"[{lo_hi[0]:.4f}, {lo_hi[1]:.4f}]"


def _importance_section(card: TableCard) -> list[str]:
    out = [
        "## Permutation importance",
        "",
        "Drop in test accuracy when one column is shuffled across the test rows (seeded; mean "
        "± standard deviation over the repeats). About 0: the model does not use it.",
        "",
    ]
    if not card.importance:
        return [*out, "Not measured."]
    rows = [[r["column"], r["role"], f"{r['drop']:+.4f} ± {r['std']:.4f}"] for r in card.importance]
    return [*out, *table(["column", "role", "accuracy drop"], rows)]


def _worst_section(card: TableCard) -> list[str]:
    out = ["## Worst test errors", "", "The most confidently wrong test rows:", ""]
    if not card.worst:
        return [*out[:2], "None: every test row was classified correctly."]
    header = list(card.worst[0])
    return [*out, *table(header, [[_num(r.get(h)) for h in header] for r in card.worst])]


def _gate_section(card: TableCard) -> list[str]:
    out = ["## Promotion gate", ""]
    p = card.promotion
    if not p:
        return [*out, "No gate decision recorded."]
    champion = (
        f"v{p['champion_version']} ({_num(p.get('champion_accuracy'))})"
        if p.get("champion_version")
        else "none"
    )
    rows = [
        ["decision", "promoted" if p.get("promoted") else "not promoted"],
        ["alias", p.get("alias") or "none"],
        ["accuracy", _num(p.get("accuracy"))],
        ["accuracy floor", f"{card.floor[0]:.4f} ({card.floor[1]})"],
        ["champion", champion],
        ["comparable", p.get("comparable")],
        ["reason", p.get("reason", "")],
    ]
    return [*out, *table(["", "value"], rows)]


def _export_section(card: TableCard) -> list[str]:
    out = ["## Exported formats", ""]
    formats = (card.export or {}).get("formats") or {}
    if not formats:
        return [*out, "No export report."]
    rows = [
        [
            name,
            _num(r.get("accuracy")),
            _num(r.get("agreement")),
            "yes" if r.get("shipped") else "no: " + str(r.get("reason", "")),
        ]
        for name, r in formats.items()
    ]
    return [*out, *table(["format", "accuracy", "agreement", "shipped"], rows)]


def render_card(card: TableCard) -> str:
    t = card.params.get("table", {})
    api = card.params.get("model", {}).get("api", "functional")
    title = f"v{card.version}" if card.version is not None else "(not registered)"
    lines = [
        f"# Model card: {card.model_name} {title}",
        "",
        f"A `{card.keras_name}` Keras model (model.api: {api}, text encoder "
        f"{t.get('text_encoder', '–')}, hidden {t.get('hidden', '–')}, dropout "
        f"{t.get('dropout', '–')}) classifying table rows. Serve it with `mlflow models serve "
        f"-m models:/{card.model_name}/{card.version}` or predict with `python -m reprotrain "
        "predict MODEL rows.csv`.",
        "",
    ]
    for section in (
        _schema_section,
        _metrics_section,
        _gain_section,
        _importance_section,
        _worst_section,
        _gate_section,
        _export_section,
    ):
        lines += [*section(card), ""]
    lines += [
        *reproduce_section(card.run_id, card.reproduce),
    ]
    return "\n".join(lines)


def write_card(path: Path, card: TableCard) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(render_card(card), encoding="utf-8")
    return path
