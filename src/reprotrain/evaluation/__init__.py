"""Held-out evaluation, split by concern:

- :mod:`~reprotrain.evaluation.metrics`: metrics from predicted probabilities
  (``sklearn.metrics`` plus what is ours: nulls for undefined, ECE, per-class tables);
- :mod:`~reprotrain.evaluation.predictions`: scoring a split (decoded once, one compiled
  predict function per model);
- :mod:`~reprotrain.evaluation.rows`: the test split's digest and per-example rows;
- :mod:`~reprotrain.evaluation.plots`: the DVC plot CSVs and PNGs, from computed curves;
- :mod:`~reprotrain.evaluation.gate`: the promotion rule as pure functions.

This package re-exports the names stages, commands and tests use.
"""

from __future__ import annotations

from reprotrain.evaluation.metrics import (
    EPSILON,
    MICRO,
    CurveSet,
    PlotInputs,
    classification_metrics,
    confusion_matrix,
    curve_points,
    expected_calibration_error,
    flatten_metrics,
    log_loss,
    macro_average_precision,
    per_class_table,
    plot_inputs,
    precision_recall_curve,
    roc_auc,
    roc_curve,
    top_k_accuracy,
)
from reprotrain.evaluation.predictions import (
    Batch,
    EvalSplit,
    SplitPredictions,
    WorstExample,
    eval_dataset,
    predict_split,
    score,
    to_probabilities,
)
from reprotrain.evaluation.rows import prediction_rows, split_sha256, test_digest

# ``commands/predict.py`` and its tests imported these from here; the one loader lives in
# ``models.loading``.
from reprotrain.models.loading import load_model, model_image_size

__all__ = [
    "EPSILON",
    "MICRO",
    "Batch",
    "CurveSet",
    "EvalSplit",
    "PlotInputs",
    "SplitPredictions",
    "WorstExample",
    "classification_metrics",
    "confusion_matrix",
    "curve_points",
    "eval_dataset",
    "expected_calibration_error",
    "flatten_metrics",
    "load_model",
    "log_loss",
    "macro_average_precision",
    "model_image_size",
    "per_class_table",
    "plot_inputs",
    "precision_recall_curve",
    "predict_split",
    "prediction_rows",
    "roc_auc",
    "roc_curve",
    "score",
    "split_sha256",
    "test_digest",
    "to_probabilities",
    "top_k_accuracy",
]
