"""Logging the forecaster as an MLflow pyfunc that runs where reprotrain is not installed.

What differs from the photo model, given to the one logger
(:func:`reprotrain.serving.packaging.log_pyfunc`): the forecast config
(``forecast.json``) as an artifact beside the ``.keras`` file, the few modules the served
model imports, and its signature. The signature declares the time column a ``string`` so
that any timestamp text passes through to the model, which parses and checks it itself
(one clear 400 per bad history instead of MLflow's schema error).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reprotrain.series.serving import CONFIG_ARTIFACT, ForecastConfig, Forecaster
from reprotrain.serving.packaging import PyfuncModel, log_pyfunc

#: reprotrain modules the served forecaster imports (``code_paths``), relative to the package.
SERVED_MODULES = ("__init__.py", "errors.py", "series/__init__.py", "series/serving.py")


def signature(cfg: ForecastConfig) -> Any:
    """Rows of history in: the time column (text), the target and covariates (numbers)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    cols = [ColSpec("string", cfg.time)] + [ColSpec("double", c) for c in cfg.channels]
    return ModelSignature(inputs=Schema(cols))


def log_forecaster(run: Any, keras_path: Path | str, config: ForecastConfig) -> str:
    """Log the forecaster on ``run`` (a ``StageRun`` or a run id); return its model URI."""
    # The text ForecastConfig.write writes (fsio.atomic_write_json's format).
    text = json.dumps(config.to_dict(), indent=2) + "\n"
    model = PyfuncModel(
        name="forecaster",
        python_model=Forecaster(),
        modules=SERVED_MODULES,
        signature=signature(config),
        files={"model": keras_path},
        texts={"config": (CONFIG_ARTIFACT, text)},
    )
    return log_pyfunc(run, model)
