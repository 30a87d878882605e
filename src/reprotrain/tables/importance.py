"""Permutation importance: how much test accuracy each input column carries.

Why permutation and not the weights: the model's first layers are lookups, embeddings and a
recurrent encoder, whose weights say nothing comparable across columns. Shuffling one
column's cells across the test rows keeps its distribution and breaks its link with the
label; the drop in accuracy is what the model relies on that column for (Breiman, 2001;
scikit-learn's ``permutation_importance``, done here on the model's own input dict so the
preprocessing inside the model sees raw shuffled cells). Seeded, ``repeats`` shuffles per
column: the mean drop and its spread. A column the model ignores scores about 0; a negative
score is noise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from reprotrain.progress import progress
from reprotrain.tables.features import InputSpec

logger = logging.getLogger(__name__)

#: Shuffles per column: enough to see the spread, cheap on a test split (one predict each).
REPEATS = 3


def permutation_importance(
    predict: Callable[[Mapping[str, np.ndarray]], np.ndarray],
    inputs: Mapping[str, np.ndarray],
    y: np.ndarray,
    spec: InputSpec,
    *,
    repeats: int = REPEATS,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per input column: its role, the mean and standard deviation of the accuracy drop over
    ``repeats`` seeded shuffles, most important first. ``predict`` maps an input dict to
    probabilities (``tables.inference.predict_probs`` of the model)."""
    y = np.asarray(y)
    base = float(np.mean(predict(inputs).argmax(axis=1) == y))
    rng = np.random.default_rng(seed)
    out = []
    roles = {c: r for r in ("text", "numeric", "categorical") for c in getattr(spec, r)}
    with progress(len(spec.columns) * repeats, "permutation importance", unit="shuffle") as bar:
        for column in spec.columns:
            drops = []
            for _ in range(repeats):
                shuffled = dict(inputs)
                shuffled[column] = inputs[column][rng.permutation(len(y))]
                drops.append(base - float(np.mean(predict(shuffled).argmax(axis=1) == y)))
                bar.update(1)
            out.append(
                {
                    "column": column,
                    "role": roles[column],
                    "drop": float(np.mean(drops)),
                    "std": float(np.std(drops)),
                    "drops": [round(d, 6) for d in drops],
                }
            )
    out.sort(key=lambda r: (-r["drop"], r["column"]))
    logger.info(
        "permutation importance (accuracy %.4f): %s",
        base,
        ", ".join(f"{r['column']} {r['drop']:+.3f}" for r in out[:5]),
    )
    return out


def as_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """MLflow metric names (``importance.<column>``) of the mean drops."""
    import re

    return {f"importance.{re.sub(r'[^A-Za-z0-9_.-]', '_', r['column'])}": r["drop"] for r in rows}
