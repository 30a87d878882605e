"""Logging the forecaster as an MLflow pyfunc that runs where reprotrain is not installed.

As ``serving.packaging`` does for the photo model: the ``.keras`` file and the forecast
config (``forecast.json``) as artifacts, the few modules the served model imports as
``code_paths``, pinned requirements, and a signature rather than an input example (MLflow
3.17's ``log_model(input_example=...)`` fails; the signature is what ``mlflow models serve``
validates requests against). The signature declares the time column a ``string`` so that
any timestamp text passes through to the model, which parses and checks it itself (one
clear 400 per bad history instead of MLflow's schema error).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow

from reprotrain.series.serving import CONFIG_ARTIFACT, ForecastConfig, Forecaster
from reprotrain.serving import packaging as photo_packaging

logger = logging.getLogger(__name__)

#: reprotrain modules the served forecaster imports (``code_paths``), relative to the package.
SERVED_MODULES = ("__init__.py", "errors.py", "series/__init__.py", "series/serving.py")


def stage_code(dest: Path) -> Path:
    """Copy :data:`SERVED_MODULES` into ``dest/reprotrain`` (the ``code_paths`` entry)."""
    src = Path(__file__).resolve().parents[1]
    out = Path(dest) / "reprotrain"
    for rel in SERVED_MODULES:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, out / rel)
    return out


def signature(cfg: ForecastConfig) -> Any:
    """Rows of history in: the time column (text), the target and covariates (numbers)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    cols = [ColSpec("string", cfg.time)] + [ColSpec("double", c) for c in cfg.channels]
    return ModelSignature(inputs=Schema(cols))


def log_forecaster(run: Any, keras_path: Path | str, config: ForecastConfig) -> str:
    """Log the forecaster on ``run`` (a ``StageRun``); return its model URI."""
    with tempfile.TemporaryDirectory(prefix="reprotrain-forecaster-") as tmp:
        tmp_path = Path(tmp)
        config_file = tmp_path / CONFIG_ARTIFACT
        config.write(config_file)
        kwargs = dict(
            name="forecaster",
            python_model=Forecaster(),
            artifacts={"model": str(keras_path), "config": str(config_file)},
            code_paths=[str(stage_code(tmp_path / "code"))],
            signature=signature(config),
            pip_requirements=photo_packaging.requirements(),
        )
        with photo_packaging._settled_warnings_hidden():
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run.run_id:
                info = mlflow.pyfunc.log_model(**kwargs)
            else:
                with mlflow.start_run(run_id=run.run_id, nested=active is not None):
                    info = mlflow.pyfunc.log_model(**kwargs)
    logger.info("forecaster logged on run %s: %s", run.run_id, info.model_uri)
    return str(info.model_uri)
