"""The served model: an MLflow pyfunc that takes photo files, not pixel tensors.

Why a pyfunc around the Keras model: the registered Keras flavour expects a float32
``[N, S, S, 3]`` tensor, so every client would have to decode, fix orientation, downscale,
re-encode and resize exactly as ``prepare`` did, or get subtly different answers. This model
takes the file bytes (base64 in JSON, the MLflow convention for ``binary`` columns) and runs
the project's own normalisation (:func:`photo_pixels`), so the server sees what training saw.

It needs no reprotrain installation where it is served: :func:`log_photo_model` packages the
few modules it imports (:data:`SERVED_MODULES`) as ``code_paths``, with the ``.keras`` file
and ``labels.json`` as artifacts and the normalisation settings as ``model_config``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: Input column holding the image files.
IMAGE_COLUMN = "image"
#: reprotrain modules the served model imports (``code_paths``), relative to the package.
SERVED_MODULES = (
    "__init__.py",
    "errors.py",
    "config.py",
    "data/__init__.py",
    "data/images.py",
    "data/pipeline.py",
    "data/schema.py",
    "serving/__init__.py",
    "serving/pyfunc.py",
)


def photo_pixels(data: bytes, image_size: int, max_side: int | None, quality: int) -> Any:
    """File bytes → the uint8 ``[S, S, 3]`` pixels the model saw in training, or the reason
    (a string) the file cannot be used.

    The served model calls the project's one normalisation function
    (``reprotrain.data.images.model_pixels``), which prepare and predict call too.
    """
    from reprotrain.data import images

    result = images.model_pixels(data, image_size, max_side, quality)
    return result.reason if isinstance(result, images.Rejected) else result


def _as_bytes(value: Any) -> bytes:
    """A cell of the image column: bytes as they are, a str as base64 (in-process callers;
    the scoring server already decodes base64 for a ``binary`` column)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"not base64: {exc}") from None
    raise ValueError(f"expected bytes or a base64 string, got {type(value).__name__}")


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


class PhotoClassifier(mlflow.pyfunc.PythonModel):
    """Image files in; out, one dict per input row: ``label``, ``confidence``,
    ``probabilities`` (per class) and ``error``. A file that cannot be decoded gets an
    ``error`` and no label: one bad upload does not fail the whole request."""

    def load_context(self, context: Any) -> None:
        import keras

        self.model = keras.saving.load_model(context.artifacts["model"], compile=False)
        self.labels = [str(x) for x in json.loads(Path(context.artifacts["labels"]).read_text())]
        config = dict(context.model_config or {})
        self.image_size = int(config["image_size"])
        self.max_side = config.get("max_side")
        self.jpeg_quality = int(config["jpeg_quality"])

    def predict(self, context, model_input: pd.DataFrame, params=None):
        # The one hint MLflow 3 derives no signature from (pandas types), and without a
        # hint it warns "Add type hints" when the class is defined, under its own "once"
        # filter. The logged signature (one binary column) is the contract; a Mapping or an
        # array of files is accepted too.
        if isinstance(model_input, pd.DataFrame):
            if IMAGE_COLUMN not in model_input.columns:
                raise ValueError(f"expected a column named {IMAGE_COLUMN!r} with image files")
            cells = list(model_input[IMAGE_COLUMN])
        elif isinstance(model_input, Mapping):
            cells = list(np.atleast_1d(model_input[IMAGE_COLUMN]))
        else:
            cells = list(np.atleast_1d(model_input))
        rows: list[dict[str, Any]] = [{} for _ in cells]
        good, batch = [], []
        for i, cell in enumerate(cells):
            try:
                pixels = photo_pixels(
                    _as_bytes(cell), self.image_size, self.max_side, self.jpeg_quality
                )
            except ValueError as exc:
                pixels = str(exc)
            if isinstance(pixels, str):
                rows[i] = {"label": None, "confidence": None, "probabilities": None}
                rows[i]["error"] = pixels
            else:
                good.append(i)
                batch.append(pixels)
        if batch:
            probs = np.asarray(
                self.model(np.stack(batch).astype(np.float32), training=False), dtype=np.float64
            )
            for i, p in zip(good, probs, strict=True):
                top = int(np.argmax(p))
                rows[i] = {
                    "label": self.labels[top],
                    "confidence": float(p[top]),
                    "probabilities": dict(zip(self.labels, map(float, p), strict=True)),
                    "error": None,
                }
        # A list of dicts, not a DataFrame: pandas would turn a failed row's None into NaN,
        # which is not JSON; this way the server answers null.
        return rows


def _package_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def stage_code(dest: Path) -> Path:
    """Copy :data:`SERVED_MODULES` into ``dest/reprotrain`` (the ``code_paths`` entry)."""
    src = _package_dir()
    out = Path(dest) / "reprotrain"
    for rel in SERVED_MODULES:
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, target)
    return out


def signature() -> Any:
    """One ``binary`` column of image files in (base64 in JSON)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("binary", IMAGE_COLUMN)]))


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


def log_photo_model(
    run: Any,
    keras_path: Path | str,
    labels: Sequence[str],
    image_size: int,
    max_side: int | None,
    jpeg_quality: int,
    *,
    name: str = "photo_model",
    registered_model_name: str | None = None,
) -> str:
    """Log the photo-taking model on ``run`` (a ``StageRun`` or a run id); return its URI.

    ``max_side``/``jpeg_quality`` must be the training data's ``prepare`` values: the stored
    JPEG is part of what the model learnt from. ``registered_model_name`` also registers it.
    """
    run_id = run if isinstance(run, str) else run.run_id
    active = mlflow.active_run()
    with tempfile.TemporaryDirectory(prefix="reprotrain-pyfunc-") as tmp:
        tmp_path = Path(tmp)
        code = stage_code(tmp_path / "code")
        labels_file = tmp_path / "labels.json"
        labels_file.write_text(json.dumps(list(labels)), encoding="utf-8")
        kwargs = dict(
            name=name,
            python_model=PhotoClassifier(),
            artifacts={"model": str(keras_path), "labels": str(labels_file)},
            code_paths=[str(code)],
            model_config={
                "image_size": int(image_size),
                "max_side": None if max_side is None else int(max_side),
                "jpeg_quality": int(jpeg_quality),
            },
            signature=signature(),
            pip_requirements=requirements(),
            registered_model_name=registered_model_name,
        )
        with _settled_warnings_hidden():
            if active is not None and active.info.run_id == run_id:
                info = mlflow.pyfunc.log_model(**kwargs)
            else:
                with mlflow.start_run(run_id=run_id, nested=active is not None):
                    info = mlflow.pyfunc.log_model(**kwargs)
    logger.info("photo model logged on run %s: %s", run_id, info.model_uri)
    return str(info.model_uri)


# --------------------------------------------------------------------------- exported formats


def attach_exports(
    name: str,
    version: str | int,
    report: Mapping[str, Any],
    export_run_id: str | None,
    *,
    client: Any = None,
) -> dict[str, str]:
    """Tag a registered version with the export report: ``export.<format>.<metric>`` for
    every format, ``export.shipped`` (the formats that passed) and, for each shipped format,
    ``export.<format>.uri``: where the export stage logged the file (``runs:/<id>/export/…``).

    Why tags and URIs rather than copies: a registered version's artifacts are its logged
    model; the exported files are already artifacts of the export run, so the version points
    at them (``mlflow artifacts download -u <uri>``) instead of storing them twice.
    """
    from reprotrain.serving.export import (
        FILENAMES,
        SAVED_MODEL,
        flat_metrics,
        shipped_formats,
    )

    client = client or mlflow.MlflowClient()
    tags = {k: repr(v) if isinstance(v, float) else str(v) for k, v in flat_metrics(report).items()}
    shipped = shipped_formats(report)
    tags["export.shipped"] = ",".join(shipped) or "none"
    for fmt, row in report.get("formats", {}).items():
        tags[f"export.{fmt}.reason"] = str(row.get("reason", ""))[:5000]
    if export_run_id:
        tags["export.run_id"] = export_run_id
        for fmt in shipped:
            # stages/export.py logs a file under export/<format>/, a directory's contents
            # (the SavedModel) directly under export/<format>.
            leaf = "" if fmt == SAVED_MODEL else f"/{FILENAMES[fmt]}"
            tags[f"export.{fmt}.uri"] = f"runs:/{export_run_id}/export/{fmt}{leaf}"
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    return tags
