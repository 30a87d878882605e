"""Raw cells → the arrays the table model takes, the same way in training, evaluation,
serving and predict.

Why one module: the model does its own preprocessing (imputation, lookups, tokenising), but
it needs each column as one dtype: numbers as float32 (NaN for a missing value), categories
and text as strings. A CSV read by pandas, a Parquet file, a JSON request and a TFRecord
give the same cell as ``415``, ``415.0``, ``"415"`` or ``b"415"``; converting them here,
once, keeps the served answers equal to the ones evaluate measured.

Two modes: :func:`model_inputs` (training and evaluation data: a bad cell is a DataError
naming the column and the row) and :func:`row_inputs` (serving and predict: a bad cell
makes that row's error, the other rows are predicted). A cell is read as prepare read it
(``reading.number_value`` / ``text_value``: the same missing spellings, the same stripped
text). Needs numpy, pandas and ``tables.reading`` (standard library only): the served model
imports it (``tables.packaging`` ships both).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from reprotrain.tables import reading

#: What a missing category or text becomes (StringLookup maps it to the OOV bucket unless
#: the train split had missing values too, in which case it has its own index).
MISSING = ""


@dataclass(frozen=True)
class InputSpec:
    """The model's input columns by role (the schema's, without the label): what the served
    model needs to know about the data, logged with it as JSON."""

    text: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()

    @classmethod
    def from_schema(cls, schema: Any) -> InputSpec:
        return cls(
            tuple(schema.text or ()), tuple(schema.numeric or ()), tuple(schema.categorical or ())
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        return cls(*(tuple(str(c) for c in data.get(k) or ()) for k in _ROLES))

    def to_dict(self) -> dict[str, list[str]]:
        return {k: list(getattr(self, k)) for k in _ROLES}

    @property
    def columns(self) -> tuple[str, ...]:
        """Every input column, text first, then numbers, then categories."""
        return (*self.text, *self.numeric, *self.categorical)


_ROLES = ("text", "numeric", "categorical")


class CellError(ValueError):
    """A cell the model cannot take (the message names the column)."""


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float | np.floating) and math.isnan(value)


def _scalar(value: Any, column: str, what: str) -> Any:
    """numpy scalars as Python ones; CellError for a list, a dict, ..."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str | int | float):
        raise CellError(f"column {column!r}: a {type(value).__name__} is not {what}")
    return value


def number(value: Any, column: str) -> float:
    """A numeric cell as prepare reads it (``reading.number_value``: missing spellings are
    NaN); CellError for a boolean or anything else that is not a number."""
    if _missing(value):
        return math.nan
    value = _scalar(value, column, "a number")
    if isinstance(value, bool):
        raise CellError(f"column {column!r}: {value!r} is a boolean, not a number")
    try:
        result = reading.number_value(value)
    except reading.NotANumber:
        raise CellError(f"column {column!r}: {str(value)[:40]!r} is not a number") from None
    return math.nan if result is None else float(result)


def category(value: Any, column: str) -> str:
    """A categorical cell as prepare stores it (``reading.text_value``), missing as
    :data:`MISSING`; an integral float is the integer (pandas reads a column of codes with a
    gap as floats: ``415.0`` is the ``415`` of the file)."""
    if _missing(value):
        return MISSING
    value = _scalar(value, column, "a category")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return reading.text_value(value) or MISSING


def text(value: Any, column: str) -> str:
    """A text cell as prepare stores it (``reading.text_value``, missing as empty)."""
    if _missing(value):
        return MISSING
    return reading.text_value(_scalar(value, column, "text")) or MISSING


_CONVERT = {"text": text, "numeric": number, "categorical": category}


def _column_cells(frame: pd.DataFrame, column: str) -> Sequence[Any]:
    return frame[column].tolist()


def model_inputs(frame: pd.DataFrame, spec: InputSpec) -> dict[str, np.ndarray]:
    """The model's input dict of a training or evaluation frame; a missing column or a bad
    cell is a DataError naming it (the data prepare wrote should have none)."""
    from reprotrain.errors import DataError

    missing = [c for c in spec.columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"column {missing[0]!r} is not in the data; the model takes "
            f"{', '.join(spec.columns)} (rerun prepare, or retrain on this data)"
        )
    out: dict[str, np.ndarray] = {}
    for role in _ROLES:
        convert = _CONVERT[role]
        for column in getattr(spec, role):
            try:
                cells = [convert(v, column) for v in _column_cells(frame, column)]
            except CellError as exc:
                raise DataError(f"{exc}; fix the data or its column roles (data.columns)") from None
            out[column] = _array(role, cells)
    return out


def _array(role: str, cells: Sequence[Any]) -> np.ndarray:
    if role == "numeric":
        return np.asarray(cells, dtype=np.float32).reshape(-1, 1)
    return np.asarray(cells, dtype=object).reshape(-1, 1)


def row_inputs(
    frame: pd.DataFrame, spec: InputSpec
) -> tuple[dict[str, np.ndarray], list[int], list[str | None]]:
    """Serving: the input dict of the rows that can be used, their positions in ``frame``,
    and per row of ``frame`` its error (None: predicted). Extra columns (a label) are
    ignored; a missing column is every row's error."""
    n = len(frame)
    errors: list[str | None] = [None] * n
    absent = [c for c in spec.columns if c not in frame.columns]
    if absent:
        reason = f"missing column {absent[0]!r} (the model takes {', '.join(spec.columns)})"
        return {}, [], [reason] * n
    converted: dict[str, list[Any]] = {}
    for role in _ROLES:
        convert = _CONVERT[role]
        for column in getattr(spec, role):
            cells = []
            for i, value in enumerate(_column_cells(frame, column)):
                try:
                    cells.append(convert(value, column))
                except CellError as exc:
                    errors[i] = errors[i] or str(exc)
                    cells.append(None)
            converted[column] = cells
    good = [i for i in range(n) if errors[i] is None]
    inputs = {
        column: _array(_role_of(spec, column), [cells[i] for i in good])
        for column, cells in converted.items()
    }
    return inputs, good, errors


def _role_of(spec: InputSpec, column: str) -> str:
    return next(role for role in _ROLES if column in getattr(spec, role))


def take(inputs: Mapping[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    """The rows ``index`` of an input dict (permutation importance shuffles one column)."""
    return {k: v[index] for k, v in inputs.items()}
