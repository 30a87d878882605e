"""The served table model: an MLflow pyfunc that takes a DataFrame of raw columns.

Why a pyfunc around the Keras model: the Keras flavour wants one tensor per column, typed
exactly (float32 with NaN, strings), so a client would have to convert each cell as
training did. This model takes the rows as they come (a CSV read by pandas, JSON records)
and converts every cell with the project's one conversion
(:mod:`reprotrain.tables.features`), so the server answers what evaluate measured.

Each row gets ``label``, ``confidence``, ``probabilities`` (per class) and ``error``. A row
that cannot be used (a non-number in a numeric column, a list where text belongs, a key
missing from its record) gets its ``error`` and no label; the other rows are predicted.
A column missing from the whole request is every row's error. A missing *value* is not an
error: a NaN number is imputed by the model (with its missing indicator), a missing text or
category is the empty string. A request over ``max_rows`` (``model_config``, overridable
with ``MLFLOW_PYFUNC_INFERENCE_CONFIG``) is refused whole (HTTP 400).

Why every input column is declared ``Any`` and optional in the signature: MLflow's schema
enforcement would otherwise convert each column before the model sees it, and one bad cell
(or one missing column) would fail the whole request with HTTP 400.

The server imports this module, :mod:`.features`, :mod:`.inference` and :mod:`.layers`
(registered layers the model needs to load in safe mode); ``tables.packaging`` ships them as
``code_paths``, so no reprotrain installation is needed there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from reprotrain.tables.features import InputSpec, row_inputs
from reprotrain.tables.inference import BATCH_ROWS, predict_probs

logger = logging.getLogger(__name__)

#: Rows one request may hold (``model_config`` key).
DEFAULT_MAX_ROWS = 10_000


def _frame(model_input: Any, spec: InputSpec) -> tuple[pd.DataFrame, list[str | None]]:
    """Any input form as a DataFrame, plus per row a missing-key error (records only)."""
    if isinstance(model_input, pd.DataFrame):
        return model_input, [None] * len(model_input)
    if isinstance(model_input, Mapping):
        model_input = pd.DataFrame(
            {k: np.atleast_1d(np.asarray(v, dtype=object)) for k, v in model_input.items()}
        )
        return model_input, [None] * len(model_input)
    records = list(model_input)
    errors: list[str | None] = []
    for record in records:
        if not isinstance(record, Mapping):
            errors.append(f"a row must be a record of columns, not a {type(record).__name__}")
            continue
        absent = [c for c in spec.columns if c not in record]
        errors.append(f"missing column {absent[0]!r}" if absent else None)
    rows = [r if isinstance(r, Mapping) else {} for r in records]
    return pd.DataFrame(rows, columns=list(spec.columns)), errors


def error_row(reason: str) -> dict[str, Any]:
    return {"label": None, "confidence": None, "probabilities": None, "error": reason}


def prediction_row(p: np.ndarray, labels: list[str]) -> dict[str, Any]:
    top = int(np.argmax(p))
    return {
        "label": labels[top],
        "confidence": float(p[top]),
        "probabilities": dict(zip(labels, map(float, p), strict=True)),
        "error": None,
    }


def predict_rows(
    model: Any,
    labels: list[str],
    spec: InputSpec,
    frame: pd.DataFrame,
    batch_size: int = BATCH_ROWS,
) -> list[dict]:
    """One answer per row of ``frame`` (predict and the served model share it)."""
    inputs, good, errors = row_inputs(frame, spec)
    rows = [error_row(e) if e is not None else {} for e in errors]
    if good:
        probs = predict_probs(model, inputs, spec, batch_size)
        for i, p in zip(good, probs, strict=True):
            rows[i] = prediction_row(p, labels)
    return rows


class TableClassifier(mlflow.pyfunc.PythonModel):
    """Rows of raw columns in; one dict per row out (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        import keras

        from reprotrain.tables import layers  # noqa: F401  (registers the model's layers)

        self.model = keras.saving.load_model(
            context.artifacts["model"], safe_mode=True, compile=False
        )
        self.labels = [str(x) for x in json.loads(Path(context.artifacts["labels"]).read_text())]
        config = dict(context.model_config or {})
        self.spec = InputSpec.from_dict(config["inputs"])
        self.max_rows = int(config.get("max_rows", DEFAULT_MAX_ROWS))
        if self.max_rows < 1:
            raise ValueError(f"model_config max_rows={self.max_rows}: expected an integer >= 1")

    def predict(self, context, model_input: pd.DataFrame, params=None):
        # The pandas hint only: the logged signature (one optional Any column per input) is
        # the contract; a Mapping of columns or a list of records works too.
        frame, missing = _frame(model_input, self.spec)
        if len(frame) > self.max_rows:
            from mlflow.exceptions import MlflowException

            raise MlflowException.invalid_parameter_value(
                f"{len(frame)} rows in one request; the limit is {self.max_rows} (max_rows)"
            )
        rows = predict_rows(self.model, self.labels, self.spec, frame)
        # A list of dicts, not a DataFrame: pandas would turn a failed row's None into NaN.
        return [error_row(m) if m is not None else r for r, m in zip(rows, missing, strict=True)]
