"""Logging a model to MLflow as a pyfunc that runs where reprotrain is not installed.

Why a module of its own: what a served model does (:mod:`reprotrain.serving.pyfunc`,
``tables.serving``, ``series.serving``) is imported inside the serving container; how it
is packaged runs only in the evaluate stage, which logs it. Nothing here is packaged itself.

:func:`log_pyfunc` is the one logger every kind uses: the files and JSON documents as
artifacts, the few modules the served model imports as ``code_paths``, the signature, the
pinned requirements, and the warnings MLflow raises about choices settled on purpose
hidden. A kind says only what differs (:class:`PyfuncModel`); :func:`log_photo_model` is
the image kind's: the ``.keras`` file and ``labels.json``, the normalisation settings and
the serving limits as ``model_config``, :data:`SERVED_MODULES` as ``code_paths``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow

from reprotrain.serving.limits import DEFAULT_LIMITS, IMAGE_COLUMN, Limits
from reprotrain.serving.pyfunc import PhotoClassifier, PhotoInput

logger = logging.getLogger(__name__)

#: reprotrain modules the served model imports (``code_paths``), relative to the package.
SERVED_MODULES = (
    "__init__.py",
    "errors.py",
    "config.py",
    "config_kinds.py",
    "config_validation.py",
    "data/__init__.py",
    "data/images.py",
    "data/schema.py",
    "serving/__init__.py",
    "serving/limits.py",
    "serving/pyfunc.py",
)

#: What MLflow warns about at every ``log_model`` that this module settles on purpose: the
#: pickled ``python_model`` (our own class, packaged with its code), the missing input
#: example (MLflow 3.17's ``input_example`` fails for this model; the signature is given)
#: and pip's version (uv environments have no pip; ``pip_requirements`` are given).
SETTLED_WARNINGS = (
    "Passing a Python object as `python_model`",
    "An input example was not provided",
    "Failed to resolve installed pip version",
)


class _DropSettled(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in SETTLED_WARNINGS)


@contextmanager
def _settled_warnings_hidden() -> Iterator[None]:
    """Hide :data:`SETTLED_WARNINGS` (log records and ``warnings``), nothing else."""
    drop = _DropSettled()
    loggers = [logging.getLogger(n) for n in ("mlflow.pyfunc", "mlflow.utils.environment")]
    for log in loggers:
        log.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for text in SETTLED_WARNINGS:
                warnings.filterwarnings("ignore", message=f".*{text}")
            yield
    finally:
        for log in loggers:
            log.removeFilter(drop)


def _package_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def stage_code(dest: Path, modules: Sequence[str] = SERVED_MODULES) -> Path:
    """Copy ``modules`` (relative to the package; default :data:`SERVED_MODULES`) into
    ``dest/reprotrain``, the ``code_paths`` entry."""
    src = _package_dir()
    out = Path(dest) / "reprotrain"
    for rel in modules:
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, target)
    return out


def signature() -> Any:
    """One ``string`` column of image files in: base64 text in JSON, or bytes in process.

    Not ``binary``: the scoring server would decode that column itself and fail the whole
    request on one bad cell (see the docstring of :mod:`reprotrain.serving.pyfunc`).
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", IMAGE_COLUMN)]))


def requirements() -> list[str]:
    """Pinned from the installed distributions (skips MLflow's slow inference subprocess)."""
    import importlib.metadata as md

    reqs = []
    for dist in (
        "tensorflow-cpu",
        "tensorflow",
        "keras",
        "mlflow",
        "numpy",
        "pandas",
        "pillow",
        "pydantic",
        "pyyaml",
    ):
        try:
            reqs.append(f"{dist}=={md.version(dist)}")
        except md.PackageNotFoundError:
            continue
    return reqs


@dataclass(frozen=True)
class PyfuncModel:
    """What one kind's served model is made of; :func:`log_pyfunc` does the rest."""

    name: str  # the artifact path on the run (photo_model, table_model, forecaster)
    python_model: Any  # the ``mlflow.pyfunc.PythonModel`` instance
    modules: Sequence[str]  # reprotrain modules it imports, relative to the package
    signature: Any
    #: Artifacts already on disk, by key (the ``.keras`` file).
    files: Mapping[str, Path | str] = field(default_factory=dict)
    #: Artifacts written for the log, by key: (file name, text) (``labels.json``).
    texts: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    model_config: Mapping[str, Any] | None = None
    registered_model_name: str | None = None


def log_pyfunc(run: Any, model: PyfuncModel) -> str:
    """Log ``model`` on ``run`` (a ``StageRun`` or a run id; the active run when it is that
    one, else resumed for the log); return its model URI."""
    run_id = run if isinstance(run, str) else run.run_id
    active = mlflow.active_run()
    with tempfile.TemporaryDirectory(prefix="reprotrain-pyfunc-") as tmp:
        tmp_path = Path(tmp)
        artifacts = {key: str(path) for key, path in model.files.items()}
        for key, (file_name, text) in model.texts.items():
            (tmp_path / file_name).write_text(text, encoding="utf-8")
            artifacts[key] = str(tmp_path / file_name)
        kwargs = dict(
            name=model.name,
            python_model=model.python_model,
            artifacts=artifacts,
            code_paths=[str(stage_code(tmp_path / "code", model.modules))],
            model_config=dict(model.model_config) if model.model_config is not None else None,
            signature=model.signature,
            pip_requirements=requirements(),
            registered_model_name=model.registered_model_name,
        )
        with _settled_warnings_hidden():
            if active is not None and active.info.run_id == run_id:
                info = mlflow.pyfunc.log_model(**kwargs)
            else:
                with mlflow.start_run(run_id=run_id, nested=active is not None):
                    info = mlflow.pyfunc.log_model(**kwargs)
    logger.info("%s logged on run %s: %s", model.name, run_id, info.model_uri)
    return str(info.model_uri)


def log_photo_model(
    run: Any,
    keras_path: Path | str,
    labels: Sequence[str],
    photo_input: PhotoInput,
    *,
    name: str = "photo_model",
    registered_model_name: str | None = None,
    limits: Mapping[str, int] | None = None,
) -> str:
    """Log the photo-taking model on ``run`` (a ``StageRun`` or a run id); return its URI.

    ``photo_input``'s ``max_side``/``jpeg_quality`` must be the training data's ``prepare``
    values: the stored JPEG is part of what the model learnt from. ``registered_model_name``
    also registers it. ``limits`` overrides :data:`DEFAULT_LIMITS`: all of them are logged
    in ``model_config``, because MLflow applies a server's ``MLFLOW_PYFUNC_INFERENCE_CONFIG``
    only to keys the logged config has.
    """
    served_limits = Limits.from_config({**DEFAULT_LIMITS, **(limits or {})})
    model = PyfuncModel(
        name=name,
        python_model=PhotoClassifier(),
        modules=SERVED_MODULES,
        signature=signature(),
        files={"model": keras_path},
        texts={"labels": ("labels.json", json.dumps(list(labels)))},
        model_config={**photo_input.to_config(), **asdict(served_limits)},
        registered_model_name=registered_model_name,
    )
    return log_pyfunc(run, model)
