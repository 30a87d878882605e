"""The served model: an MLflow pyfunc that takes photo files, not pixel tensors.

Why a pyfunc around the Keras model: the registered Keras flavour expects a float32
``[N, S, S, 3]`` tensor, so every client would have to decode, fix orientation, downscale,
re-encode and resize exactly as ``prepare`` did, or get subtly different answers. This model
takes the file bytes (base64 text in JSON, raw bytes in process) and runs the project's own
normalisation (:func:`photo_pixels`), so the server sees what training saw.

Why the ``image`` column is declared ``string``, not ``binary``: MLflow's scoring server
base64-decodes a ``binary`` column itself (``cast_df_types_according_to_schema`` in
``mlflow/utils/proto_json_utils.py``), before the model sees the request, so one cell that is
not base64 (or a null) turned the whole request into an HTTP 400. A ``string`` column passes
through untouched; the model decodes each cell itself and answers a bad one with that row's
``error``. Requests are limited per row and per request (:class:`Limits`, ``model_config``
keys a server overrides with MLflow's ``MLFLOW_PYFUNC_INFERENCE_CONFIG``); :func:`scoring_app`
serves MLflow's own app with an HTTP body limit derived from them (see ``docs/serving.md``).

It needs no reprotrain installation where it is served: :func:`log_photo_model` packages the
few modules it imports (:data:`SERVED_MODULES`) as ``code_paths``, with the ``.keras`` file
and ``labels.json`` as artifacts and the normalisation settings as ``model_config``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: Input column holding the image files.
IMAGE_COLUMN = "image"
#: Serving limits, ``model_config`` keys a server may override with MLflow's
#: ``MLFLOW_PYFUNC_INFERENCE_CONFIG`` (see :class:`Limits`).
DEFAULT_LIMITS = {
    "max_image_bytes": 16 * 1024 * 1024,  # one file (a phone photo is 2-12 MB)
    "max_rows": 64,  # files in one request
    "max_request_bytes": 64 * 1024 * 1024,  # all files of one request together
}
#: Environment variable naming the model :func:`scoring_app` serves (a models:/ URI).
SERVE_MODEL_ENV = "REPROTRAIN_SERVE_MODEL"
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


def _is_missing(value: Any) -> bool:
    """A row without an image: ``None``, or the NaN pandas puts where a record lacked the key."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_bytes(value: Any, max_bytes: int) -> bytes:
    """A cell of the image column: bytes as they are, a str as base64 (the JSON form).

    The size is checked before decoding (a base64 text of ``n`` characters holds at most
    ``3n/4`` bytes), so an oversized cell costs no second copy. Whitespace is allowed (what
    ``base64 -b 76`` and ``base64.encodebytes`` write); any other non-base64 character is an
    error, not silently dropped. Raises ValueError with the row's reason.
    """
    if _is_missing(value):
        raise ValueError(f"no {IMAGE_COLUMN!r} in this row: send the file as base64 text")
    if not isinstance(value, str | bytes | bytearray | memoryview):
        raise ValueError(f"expected base64 text (or bytes), got {type(value).__name__}")
    if (size := _cell_size(value)) > max_bytes:
        raise ValueError(
            f"image of about {size} bytes is over the limit of {max_bytes} bytes "
            "(max_image_bytes): send a smaller file"
        )
    if not isinstance(value, str):
        return bytes(value)
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64: {exc}") from None


def _cells(model_input: Any) -> list[Any]:
    """The image cells of any input form: a DataFrame (the signature's), a Mapping of
    columns, a list of records (dicts) or of files. A missing column or key is a missing
    cell (that row's error), never a KeyError."""
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            return [None] * len(model_input)
        return list(model_input[IMAGE_COLUMN])
    if isinstance(model_input, Mapping):
        value = model_input.get(IMAGE_COLUMN)
        return [None] if value is None else list(np.atleast_1d(np.asarray(value, dtype=object)))
    cells = model_input if isinstance(model_input, list) else list(np.atleast_1d(model_input))
    return [c.get(IMAGE_COLUMN) if isinstance(c, Mapping) else c for c in cells]


@dataclass(frozen=True)
class Limits:
    """What one request may cost the server.

    ``max_image_bytes`` (one file: over it, that row's error, checked before decoding),
    ``max_rows`` and ``max_request_bytes`` (all files together: over either, the request is
    refused with HTTP 400). :attr:`body_bytes` is the largest JSON body a valid request
    needs: :func:`scoring_app` refuses a longer body (HTTP 413) before reading it.
    """

    max_image_bytes: int
    max_rows: int
    max_request_bytes: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Limits:
        """The limits of a ``model_config`` (defaults for a model logged before they
        existed). A value that is not an integer >= 1 is refused when the model loads, so a
        typo never starts a server without limits."""
        values = {}
        for key, default in DEFAULT_LIMITS.items():
            value = config.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model_config {key}={value!r}: expected an integer >= 1")
            values[key] = value
        return cls(**values)

    @property
    def body_bytes(self) -> int:
        """base64 of ``max_request_bytes`` (4/3), plus the JSON around each row and the
        request (64 KiB)."""
        return -(-self.max_request_bytes // 3) * 4 + 16 * self.max_rows + 64 * 1024

    def refuse(self, message: str) -> None:
        """Raise the error the scoring server answers with HTTP 400 (an MlflowException:
        any other exception becomes "an unexpected error" without the reason)."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        raise MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _cell_size(value: Any) -> int:
    """Bytes a cell holds (3/4 of a base64 text's length), before any decoding."""
    if isinstance(value, str):
        return len(value) * 3 // 4
    return len(value) if isinstance(value, bytes | bytearray | memoryview) else 0


def _error_row(reason: str) -> dict[str, Any]:
    return {"label": None, "confidence": None, "probabilities": None, "error": reason}


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
    ``probabilities`` (per class) and ``error``. A row that cannot be used (not base64, not an
    image, no ``image``, over ``max_image_bytes``) gets an ``error`` and no label: one bad
    upload does not fail the whole request. A request over ``max_rows`` or
    ``max_request_bytes`` is refused whole (HTTP 400), before anything is decoded."""

    def load_context(self, context: Any) -> None:
        import keras

        self.model = keras.saving.load_model(context.artifacts["model"], compile=False)
        self.labels = [str(x) for x in json.loads(Path(context.artifacts["labels"]).read_text())]
        config = dict(context.model_config or {})
        self.image_size = int(config["image_size"])
        self.max_side = config.get("max_side")
        self.jpeg_quality = int(config["jpeg_quality"])
        self.limits = Limits.from_config(config)
        logger.info("photo model serving limits: %s", self.limits)

    def predict(self, context, model_input: pd.DataFrame, params=None):
        # The one hint MLflow 3 derives no signature from (pandas types), and without a
        # hint it warns "Add type hints" when the class is defined, under its own "once"
        # filter. The logged signature (one string column) is the contract; a Mapping, a
        # list of records or of files is accepted too.
        cells, limits = _cells(model_input), self.limits
        if len(cells) > limits.max_rows:
            limits.refuse(
                f"{len(cells)} images in one request, over the limit of {limits.max_rows} "
                "(max_rows): split the request"
            )
        if (total := sum(map(_cell_size, cells))) > limits.max_request_bytes:
            limits.refuse(
                f"about {total} bytes of images in one request, over the limit of "
                f"{limits.max_request_bytes} (max_request_bytes): split the request"
            )
        rows: list[dict[str, Any]] = [{} for _ in cells]
        good, batch = [], []
        for i, cell in enumerate(cells):
            try:
                pixels = photo_pixels(
                    _as_bytes(cell, limits.max_image_bytes),
                    self.image_size,
                    self.max_side,
                    self.jpeg_quality,
                )
            except ValueError as exc:
                pixels = str(exc)
            if isinstance(pixels, str):
                rows[i] = _error_row(pixels)
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
    """One ``string`` column of image files in: base64 text in JSON, or bytes in process.

    Not ``binary``: the scoring server would decode that column itself and fail the whole
    request on one bad cell (see the module docstring).
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
    limits: Mapping[str, int] | None = None,
) -> str:
    """Log the photo-taking model on ``run`` (a ``StageRun`` or a run id); return its URI.

    ``max_side``/``jpeg_quality`` must be the training data's ``prepare`` values: the stored
    JPEG is part of what the model learnt from. ``registered_model_name`` also registers it.
    ``limits`` overrides :data:`DEFAULT_LIMITS`: all of them are logged in ``model_config``,
    because MLflow applies a server's ``MLFLOW_PYFUNC_INFERENCE_CONFIG`` only to keys the
    logged config has.
    """
    served_limits = Limits.from_config({**DEFAULT_LIMITS, **(limits or {})})
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
                **asdict(served_limits),
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


def scoring_app() -> Any:
    """MLflow's own scoring server app for the model named by ``$REPROTRAIN_SERVE_MODEL``,
    with an HTTP request body limit: ``uvicorn --factory reprotrain.serving.pyfunc:scoring_app``.

    Why: ``mlflow models serve`` reads a whole request body into memory before the model
    sees it, and neither MLflow 3.17 nor uvicorn has a setting that limits it. Starlette's
    ``max_body_size`` (FastAPI's app attribute, used when the app builds its middleware on
    the first request) answers a longer body with HTTP 413, from its Content-Length before
    reading, or as soon as a streamed body passes the limit. The limit is the model's
    :attr:`Limits.body_bytes`, so it follows ``MLFLOW_PYFUNC_INFERENCE_CONFIG`` too.
    Everything else (routes, formats, errors, timeout) is MLflow's.
    """
    from mlflow.pyfunc import scoring_server

    uri = os.environ.get(SERVE_MODEL_ENV)
    if not uri:
        raise RuntimeError(f"set {SERVE_MODEL_ENV} to the model to serve (models:/NAME@alias)")
    model = mlflow.pyfunc.load_model(uri)
    app = scoring_server.init(model)
    limits = Limits.from_config(model.model_config or {})
    app.max_body_size = limits.body_bytes
    logger.info("serving %s: request bodies over %d bytes get HTTP 413", uri, limits.body_bytes)
    return app


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
        DIRECTORY_FORMATS,
        FILENAMES,
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
            # (the SavedModel, the OpenVINO IR) directly under export/<format>.
            leaf = "" if fmt in DIRECTORY_FORMATS else f"/{FILENAMES[fmt]}"
            tags[f"export.{fmt}.uri"] = f"runs:/{export_run_id}/export/{fmt}{leaf}"
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    return tags
