"""Logging the table model to MLflow so that it runs where reprotrain is not installed.

The table counterpart of :mod:`reprotrain.serving.packaging` (whose requirements and
settled-warning filter it reuses): the ``.keras`` file and ``labels.json`` as artifacts,
the input columns by role and ``max_rows`` as ``model_config``, the few modules the served
model imports (:data:`SERVED_MODULES`) as ``code_paths``, and a signature of one optional
``Any`` column per input (see :mod:`reprotrain.tables.serving` for why).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow

from reprotrain.serving.packaging import _settled_warnings_hidden, requirements
from reprotrain.tables.features import InputSpec
from reprotrain.tables.serving import DEFAULT_MAX_ROWS, TableClassifier

logger = logging.getLogger(__name__)

#: reprotrain modules the served table model imports, relative to the package.
SERVED_MODULES = (
    "__init__.py",
    "errors.py",
    "tables/__init__.py",
    "tables/features.py",
    "tables/reading.py",
    "tables/inference.py",
    "tables/layers.py",
    "tables/serving.py",
)


def stage_code(dest: Path) -> Path:
    """Copy :data:`SERVED_MODULES` into ``dest/reprotrain`` (the ``code_paths`` entry)."""
    src = Path(__file__).resolve().parents[1]
    out = Path(dest) / "reprotrain"
    for rel in SERVED_MODULES:
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, target)
    return out


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
    run_id = run if isinstance(run, str) else run.run_id
    active = mlflow.active_run()
    with tempfile.TemporaryDirectory(prefix="reprotrain-pyfunc-") as tmp:
        tmp_path = Path(tmp)
        code = stage_code(tmp_path / "code")
        labels_file = tmp_path / "labels.json"
        labels_file.write_text(json.dumps(list(labels)), encoding="utf-8")
        kwargs = dict(
            name=name,
            python_model=TableClassifier(),
            artifacts={"model": str(keras_path), "labels": str(labels_file)},
            code_paths=[str(code)],
            model_config={"inputs": spec.to_dict(), "max_rows": int(max_rows)},
            signature=signature(spec),
            pip_requirements=requirements(),
        )
        with _settled_warnings_hidden():
            if active is not None and active.info.run_id == run_id:
                info = mlflow.pyfunc.log_model(**kwargs)
            else:
                with mlflow.start_run(run_id=run_id, nested=active is not None):
                    info = mlflow.pyfunc.log_model(**kwargs)
    logger.info("table model logged on run %s: %s", run_id, info.model_uri)
    return str(info.model_uri)
