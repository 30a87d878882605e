"""The table model and the classical baseline scored on the test rows, what evaluate writes
from those scores, and the card made of them.

The counterpart of the image kind's ``evaluation.results``: one :class:`TableScores` holds
every figure evaluate computes (the network's metrics, the baseline's, the paired gain over
it, permutation importance, the worst rows, the gate's floor), so that
``metrics/evaluate.json``, the plots, the gate and the card all read the same numbers. The
pieces are :mod:`reprotrain.tables.evaluation`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain import paths
from reprotrain.config import Params, to_dict
from reprotrain.evaluation import flatten_metrics, plots
from reprotrain.evaluation.metrics import classification_metrics
from reprotrain.fsio import atomic_write_json
from reprotrain.tables import card, classical, evaluation, importance, inference
from reprotrain.tables.features import InputSpec
from reprotrain.tables.schema import Schema
from reprotrain.tables.training import Split

#: The PNGs (the DVC plots' CSVs are in ``paths.PLOTS_DIR``; MLflow shows these as images).
IMAGES_DIR = paths.PLOTS_DIR / "images"


@dataclass(frozen=True)
class TableScores:
    """Everything evaluate computes on the test rows."""

    probs: np.ndarray  # the network's probabilities, one row per test row
    metrics: dict[str, Any]  # the network's (classification_metrics)
    baseline: dict[str, Any]  # the classical baseline's
    gain: dict[str, Any]  # evaluation.baseline_gain
    ranked: list[dict[str, Any]]  # permutation importance, most important first
    worst: list[dict[str, Any]]  # the most confidently wrong rows
    floor: tuple[float, str]  # the gate's accuracy floor and where it comes from

    def report(self) -> dict[str, Any]:
        """``metrics/evaluate.json``: the network's metrics at the top level."""
        return {
            **self.metrics,
            "baseline": self.baseline,
            "baseline_gain": {k: v for k, v in self.gain.items() if k != "summary"},
            "importance": {r["column"]: r["drop"] for r in self.ranked},
            "n_test": len(self.probs),
        }

    def flat_metrics(self) -> dict[str, float]:
        """The report's scalars as MLflow metrics (importance is logged on its own)."""
        report = self.report()
        return flatten_metrics({k: v for k, v in report.items() if k != "importance"})


def score(model: Any, test: Split, schema: Schema, params: Params) -> TableScores:
    """The network (``model``, loaded) and the classical baseline on ``test``."""
    cfg = params.evaluate
    spec, labels = InputSpec.from_schema(schema), list(schema.labels)
    probs = inference.predict_probs(model, test.inputs, spec)
    metrics = classification_metrics(
        test.y, probs, labels, top_k=cfg.top_k, calibration_bins=cfg.calibration_bins
    )
    base_probs = classical.baseline_probs(
        classical.load_baseline(paths.TABLE_BASELINE), test.frame, schema
    )
    base_metrics = classification_metrics(
        test.y, base_probs, labels, top_k=cfg.top_k, calibration_bins=cfg.calibration_bins
    )
    gain = evaluation.baseline_gain(
        test.y, base_probs.argmax(axis=1), probs.argmax(axis=1), alpha=cfg.alpha
    )
    ranked = importance.permutation_importance(
        lambda x: inference.predict_probs(model, x, spec),
        test.inputs,
        test.y,
        spec,
        seed=params.seed,
    )
    worst = evaluation.worst_rows(test.frame, test.y, probs, labels, spec, cfg.worst_examples)
    floor = evaluation.accuracy_floor(params.table.min_accuracy, base_metrics["accuracy"])
    return TableScores(probs, metrics, base_metrics, gain, ranked, worst, floor)


def write_results(
    scores: TableScores, test: Split, labels: list[str], metrics_file: Path
) -> dict[str, Any]:
    """Write ``metrics_file``, the plots and ``plots/predictions.csv`` (one row per test
    row: what predict and the server answer); returns the report."""
    report = scores.report()
    atomic_write_json(metrics_file, report)
    evaluation.write_plots(
        test.y,
        scores.probs,
        labels,
        plots.read_history(paths.TABLE_HISTORY),
        scores.worst,
        plots_dir=paths.PLOTS_DIR,
        images_dir=IMAGES_DIR,
    )
    rows = evaluation.prediction_rows(test.frame, test.y, scores.probs, labels)
    plots.write_csv(paths.PLOTS_DIR / "predictions.csv", rows, list(rows[0]))
    return report


def model_card(
    params: Params,
    schema: Schema,
    keras_name: str,
    scores: TableScores,
    promotion: Mapping[str, Any],
    export: Mapping[str, Any] | None,
    run_id: str,
) -> card.TableCard:
    """The card's fields: the registered version and its promotion, the scores, the export
    report, the params and how to reproduce the run."""
    return card.TableCard(
        model_name=promotion["registered_model"],
        version=promotion["version"],
        keras_name=keras_name,
        labels=list(schema.labels),
        schema=schema.to_dict(),
        metrics=scores.metrics,
        counts={"test": len(scores.probs)},
        params=to_dict(params),
        run_id=run_id,
        reproduce=f"python -m reprotrain reproduce {run_id}",
        baseline_gain=scores.gain,
        importance=scores.ranked,
        worst=scores.worst[:8],
        promotion=promotion,
        floor=scores.floor,
        export=export,
        data_source=params.data.source,
    )
