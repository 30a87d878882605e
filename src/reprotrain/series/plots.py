"""evaluate's plots of a forecaster: forecast vs actual over the test period with the
intervals, the error by horizon step (model and baselines), and the residuals.

The CSVs are the data (``plots/forecast.csv``: every test window's every step;
``plots/error_by_step.csv``: what ``dvc plots`` draws); the PNGs (``plots/series/``) are for
people and the model card. Figures are drawn without pyplot (``evaluation.plots``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from reprotrain.evaluation.plots import new_figure, save_png, write_csv
from reprotrain.series.conformal import bounds
from reprotrain.series.evaluation import TestForecasts

FIGURES = ("forecast.png", "error_by_step.png", "residuals.png")


def forecast_rows(scored: TestForecasts, intervals: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per test window and step: when, what happened, what each forecast said."""
    n, h = scored.y.shape
    band = {key: bounds(scored.model, spec["width"]) for key, spec in intervals.items()}
    rows = []
    for i in range(n):
        origin = str(np.datetime_as_string(scored.origin[i], unit="s"))
        for s in range(h):
            row = {
                "origin": origin,
                "step": s + 1,
                "time": str(np.datetime_as_string(scored.times[i, s], unit="s")),
                "actual": float(scored.y[i, s]),
                "forecast": float(scored.model[i, s]),
                "naive": float(scored.naive[i, s]),
                "seasonal_naive": float(scored.seasonal_naive[i, s]),
            }
            for key, (lo, hi) in band.items():
                row[f"lower_{key}"] = float(lo[i, s])
                row[f"upper_{key}"] = float(hi[i, s])
            rows.append(row)
    return rows


def error_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """MAE per horizon step: the model's and each baseline's."""
    steps = len(report["by_step"]["mae"])
    rows = []
    for s in range(steps):
        row = {"step": s + 1, "model": report["by_step"]["mae"][s]}
        for name, figures in report["baselines"].items():
            row[name] = figures["by_step"]["mae"][s]
        rows.append(row)
    return rows


def write_plots(
    scored: TestForecasts, report: dict[str, Any], plots_dir: Path, figures_dir: Path
) -> dict[str, Path]:
    """The CSVs under ``plots_dir`` and the PNGs under ``figures_dir``; their paths."""
    intervals = report["intervals"]
    rows = forecast_rows(scored, intervals)
    columns = list(rows[0]) if rows else ["origin", "step", "time", "actual", "forecast"]
    out = {
        "forecast_csv": write_csv(plots_dir / "forecast.csv", rows, columns),
        "error_csv": write_csv(
            plots_dir / "error_by_step.csv",
            error_rows(report),
            ["step", "model", *report["baselines"]],
        ),
    }
    out["forecast"] = _forecast_png(scored, intervals, figures_dir / FIGURES[0])
    out["error_by_step"] = _error_png(report, figures_dir / FIGURES[1])
    out["residuals"] = _residuals_png(scored, figures_dir / FIGURES[2])
    return out


def _forecast_png(scored: TestForecasts, intervals: dict[str, Any], path: Path) -> Path:
    """The one-step-ahead and last-step forecasts over the test period, the first with its
    bands (widest first, so the narrower one is drawn on top)."""
    fig = new_figure(9, 3.6)
    ax = fig.add_subplot()
    t1 = scored.times[:, 0]
    ax.plot(t1, scored.y[:, 0], color="black", lw=1.2, label="actual")
    for key, spec in sorted(intervals.items(), key=lambda kv: -kv[1]["level"]):
        lo, hi = bounds(scored.model, spec["width"])
        ax.fill_between(t1, lo[:, 0], hi[:, 0], alpha=0.25, label=f"{key}% interval (step 1)")
    ax.plot(t1, scored.model[:, 0], lw=1.0, label="forecast, step 1")
    h = scored.y.shape[1]
    if h > 1:
        ax.plot(scored.times[:, -1], scored.model[:, -1], lw=1.0, ls="--", label=f"step {h}")
    ax.set_title("Forecast vs actual (test period)")
    ax.legend(loc="best", fontsize=8)
    return save_png(fig, path)


def _error_png(report: dict[str, Any], path: Path) -> Path:
    fig = new_figure(6, 3.4)
    ax = fig.add_subplot()
    steps = np.arange(1, len(report["by_step"]["mae"]) + 1)
    ax.plot(steps, report["by_step"]["mae"], marker="o", label="model")
    for name, figures in report["baselines"].items():
        ax.plot(steps, figures["by_step"]["mae"], marker=".", ls="--", label=name)
    ax.set_xlabel("horizon step")
    ax.set_ylabel("MAE (test)")
    ax.set_title("Error by horizon step")
    ax.legend(fontsize=8)
    return save_png(fig, path)


def _residuals_png(scored: TestForecasts, path: Path) -> Path:
    fig = new_figure(9, 3.2)
    left, right = fig.subplots(1, 2)
    residuals = scored.y - scored.model
    left.plot(scored.times[:, 0], residuals[:, 0], lw=0.8)
    left.axhline(0, color="grey", lw=0.6)
    left.set_title("Residuals over time (step 1)")
    right.hist(residuals.ravel(), bins=40)
    right.set_title("Residuals, all steps")
    return save_png(fig, path)
