"""The forecaster's model card (``reports/model_card.md``): what it forecasts, how well
against the baselines, how honest its intervals were on the test period, what the gate
decided, which exports ship, and its figures.

Why the baselines sit in the same table as the model: a forecast error means little alone
(co2 in ppm, sales in units); next to the naive and seasonal-naive errors on the same
windows it says what the network buys. The figures are copied beside the card
(``reports/model_card/``) so the card renders where it is logged, as the image card does.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reprotrain import fsio
from reprotrain.reports.markdown import reproduce_section, table

FIGURES_DIR = "model_card"


@dataclass(frozen=True)
class SeriesCard:
    """What the card shows (all JSON-like, read from the stage's outputs)."""

    model_name: str
    registered_model: str
    params: Mapping[str, Any]  # params.series as a dict
    meta: Any  # windows.SeriesMeta
    report: Mapping[str, Any]  # metrics/evaluate.json
    promotion: Mapping[str, Any]  # metrics/promotion.json
    export: Mapping[str, Any] | None
    data_source: str
    run_id: str
    figures: Sequence[Path] = ()


def _f(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None else f"{float(x):.{digits}g}"


def _accuracy(report: Mapping[str, Any]) -> list[str]:
    rows = [("**model**", *(_f(report[k]) for k in ("mae", "rmse", "mase", "smape")))]
    for name, fig in report["baselines"].items():
        rows.append(
            (name.replace("_", " "), *(_f(fig[k]) for k in ("mae", "rmse", "mase", "smape")))
        )
    verdict = "beats" if report["mase"] < 1 else "does **not** beat"
    return [
        "## Accuracy on the test period",
        "",
        f"{report['n_windows']} test windows. MASE is scaled by the seasonal-naive error on the "
        f"train period (season {report['mase_season']}, scale {_f(report['mase_scale'])}): the "
        f"model {verdict} the seasonal-naive forecast (MASE {_f(report['mase'])}).",
        "",
        *table(("", "MAE", "RMSE", "MASE", "sMAPE %"), rows),
        "",
        "MAE by horizon step: " + ", ".join(_f(x, 3) for x in report["by_step"]["mae"]) + ".",
        "",
    ]


def _intervals(report: Mapping[str, Any]) -> list[str]:
    rows = []
    for key, spec in report["intervals"].items():
        widths = spec["width"]
        note = "" if spec.get("guaranteed", True) else " (too few val windows for a guarantee)"
        rows.append(
            (
                f"{key}%",
                f"{spec['coverage'] * 100:.1f}%{note}",
                f"{_f(widths[0], 3)} … {_f(widths[-1], 3)}",
                spec.get("n_calibration", ""),
            )
        )
    return [
        "## Prediction intervals",
        "",
        "Split-conformal on the val period (per step, the finite-sample-corrected quantile of "
        "|residual|); coverage measured on the test period.",
        "",
        *table(("nominal", "test coverage", "half-width step 1 … last", "val windows"), rows),
        "",
    ]


def _promotion(p: Mapping[str, Any]) -> list[str]:
    alias = p.get("alias") or "no alias"
    return [
        "## Promotion",
        "",
        f"{p.get('registered_model')} v{p.get('version')} → **{alias}** "
        f"(promoted: {str(p.get('promoted')).lower()}): {p.get('reason')}",
        "",
    ]


def _exports(export: Mapping[str, Any] | None) -> list[str]:
    if not export or not export.get("formats"):
        return []
    rows = [
        (
            name,
            "yes" if row.get("shipped") else "no",
            _f(row.get("max_abs_diff"), 3),
            _f(row.get("mae_ratio"), 4),
            _f((row.get("size_bytes") or 0) / 1e6, 3) + " MB" if row.get("size_bytes") else "n/a",
            _f(row.get("latency_ms"), 3),
        )
        for name, row in export["formats"].items()
    ]
    return [
        "## Exports",
        "",
        *table(("format", "ships", "max |Δ| vs Keras", "MAE ratio", "size", "latency ms"), rows),
        "",
    ]


def render(card: SeriesCard) -> str:
    """The card's Markdown."""
    meta, p = card.meta, card.params
    channels = ", ".join(meta.channels)
    lines = [
        f"# Model card: {card.registered_model} ({card.model_name})",
        "",
        f"Forecasts **{meta.target}** {meta.horizon} steps ahead ({meta.frequency}) from the "
        f"last {meta.window} steps of {channels}. Model `{p.get('model')}`, {p.get('units')} "
        f"units, loss {p.get('loss')}, anchor {p.get('anchor')}. Data: `{card.data_source}`.",
        "",
        *_accuracy(card.report),
        *_intervals(card.report),
        *_promotion(card.promotion),
        *_exports(card.export),
    ]
    if card.figures:
        lines += ["## Figures", ""]
        lines += [f"![{f.stem}]({FIGURES_DIR}/{f.name})" for f in card.figures]
        lines.append("")
    lines += reproduce_section(card.run_id, f"python -m reprotrain reproduce {card.run_id}")
    return "\n".join(lines)


def write_card(path: Path, card: SeriesCard) -> Path:
    """The card at ``path`` and its figures copied to ``<dir>/model_card/``."""
    path = Path(path)
    figures = path.parent / FIGURES_DIR
    shutil.rmtree(figures, ignore_errors=True)
    figures.mkdir(parents=True)
    for f in card.figures:
        shutil.copy2(f, figures / Path(f).name)
    return fsio.atomic_write_text(path, render(card))
