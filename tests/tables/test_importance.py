"""Permutation importance on a known model: the column it uses matters, the other does not."""

from __future__ import annotations

import numpy as np

from reprotrain.tables.features import InputSpec
from reprotrain.tables.importance import as_metrics, permutation_importance


def test_the_used_column_matters_and_the_ignored_one_does_not() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 1)).astype(np.float32)
    b = rng.normal(size=(400, 1)).astype(np.float32)
    y = (a[:, 0] > 0).astype(np.int64)
    spec = InputSpec(numeric=("a", "b"))

    def predict(inputs):
        p1 = (inputs["a"][:, 0] > 0).astype(float)
        return np.stack([1 - p1, p1], axis=1)

    first = permutation_importance(predict, {"a": a, "b": b}, y, spec, repeats=3, seed=1)
    again = permutation_importance(predict, {"a": a, "b": b}, y, spec, repeats=3, seed=1)
    assert first == again  # seeded
    assert [r["column"] for r in first] == ["a", "b"]
    assert first[0]["drop"] > 0.4 and len(first[0]["drops"]) == 3
    assert first[1]["drop"] == 0.0 and first[1]["role"] == "numeric"
    assert as_metrics(first) == {"importance.a": first[0]["drop"], "importance.b": 0.0}
