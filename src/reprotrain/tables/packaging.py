"""Logging the table model to MLflow so that it runs where reprotrain is not installed.

What differs from the photo model, given to the one logger
(:func:`reprotrain.serving.packaging.log_pyfunc`): the input columns by role and
``max_rows`` as ``model_config``, the few modules the served model imports
(:data:`SERVED_MODULES`), and a signature of one optional ``Any`` column per input (see
:mod:`reprotrain.tables.serving` for why).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reprotrain.serving.packaging import PyfuncModel, log_pyfunc
from reprotrain.tables.features import InputSpec
from reprotrain.tables.serving import DEFAULT_MAX_ROWS, TableClassifier

#: reprotrain modules the served table model imports, relative to the package.
SERVED_MODULES = (
    "__init__.py",
    "errors.py",
    "data/__init__.py",
    "data/decimal_comma.py",
    "tables/__init__.py",
    "tables/features.py",
    "tables/reading.py",
    "tables/inference.py",
    "tables/layers.py",
    "tables/serving.py",
)


def signature(spec: InputSpec) -> Any:
    """One optional ``Any`` column per input: MLflow passes the cells through untouched."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    return ModelSignature(
        inputs=Schema([ColSpec(AnyType(), c, required=False) for c in spec.columns])
    )


def log_table_model(
    run: Any,
    keras_path: Path | str,
    labels: Sequence[str],
    spec: InputSpec,
    *,
    name: str = "table_model",
    max_rows: int = DEFAULT_MAX_ROWS,
) -> str:
    """Log the raw-column model on ``run`` (a ``StageRun`` or a run id); return its URI."""
    model = PyfuncModel(
        name=name,
        python_model=TableClassifier(),
        modules=SERVED_MODULES,
        signature=signature(spec),
        files={"model": keras_path},
        texts={"labels": ("labels.json", json.dumps(list(labels)))},
        model_config={"inputs": spec.to_dict(), "max_rows": int(max_rows)},
    )
    return log_pyfunc(run, model)
