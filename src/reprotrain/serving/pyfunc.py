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
``error``. Requests are limited per row and per request (:class:`~reprotrain.serving.limits.Limits`,
``model_config`` keys a server overrides with MLflow's ``MLFLOW_PYFUNC_INFERENCE_CONFIG``);
:func:`scoring_app` serves MLflow's own app with an HTTP body limit derived from them (see
``docs/serving.md``).

This module and :mod:`reprotrain.serving.limits` are what the server imports: they need no
reprotrain installation there, because ``serving.packaging.log_photo_model`` packages them
(with the few modules they import) as ``code_paths``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from reprotrain.serving.limits import Limits, cell_bytes, image_cells

logger = logging.getLogger(__name__)

#: Environment variable naming the model :func:`scoring_app` serves (a models:/ URI).
SERVE_MODEL_ENV = "REPROTRAIN_SERVE_MODEL"


def photo_pixels(data: bytes, image_size: int, max_side: int | None, quality: int) -> Any:
    """File bytes → the uint8 ``[S, S, 3]`` pixels the model saw in training, or the reason
    (a string) the file cannot be used.

    The served model calls the project's one normalisation function
    (``reprotrain.data.images.model_pixels``), which prepare and predict call too.
    """
    from reprotrain.data import images

    result = images.model_pixels(data, image_size, max_side, quality)
    return result.reason if isinstance(result, images.Rejected) else result


@dataclass(frozen=True)
class PhotoInput:
    """How a file becomes the model's input: the model's ``image_size`` and the training
    data's ``prepare.max_side`` and ``prepare.jpeg_quality``.

    Why together: the three are logged together (``model_config``), read together when the
    model loads and used together for every file; apart, one of them is easily passed from
    the wrong source.
    """

    image_size: int
    max_side: int | None
    jpeg_quality: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PhotoInput:
        """The settings of a logged ``model_config``."""
        return cls(int(config["image_size"]), config.get("max_side"), int(config["jpeg_quality"]))

    def to_config(self) -> dict[str, Any]:
        """The ``model_config`` entries :meth:`from_config` reads back."""
        return {
            "image_size": int(self.image_size),
            "max_side": None if self.max_side is None else int(self.max_side),
            "jpeg_quality": int(self.jpeg_quality),
        }

    def pixels(self, data: bytes) -> Any:
        """:func:`photo_pixels` with these settings."""
        return photo_pixels(data, self.image_size, self.max_side, self.jpeg_quality)


def _error_row(reason: str) -> dict[str, Any]:
    return {"label": None, "confidence": None, "probabilities": None, "error": reason}


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
        self.photo_input = PhotoInput.from_config(config)
        self.limits = Limits.from_config(config)
        logger.info("photo model serving limits: %s", self.limits)

    def predict(self, context, model_input: pd.DataFrame, params=None):
        # The one hint MLflow 3 derives no signature from (pandas types), and without a
        # hint it warns "Add type hints" when the class is defined, under its own "once"
        # filter. The logged signature (one string column) is the contract; a Mapping, a
        # list of records or of files is accepted too.
        cells = image_cells(model_input)
        self.limits.check_request(cells)
        decoded = [self._pixels(cell) for cell in cells]
        good = [i for i, px in enumerate(decoded) if not isinstance(px, str)]
        rows = [_error_row(px) if isinstance(px, str) else {} for px in decoded]
        if good:
            batch = np.stack([decoded[i] for i in good]).astype(np.float32)
            probs = np.asarray(self.model(batch, training=False), dtype=np.float64)
            for i, p in zip(good, probs, strict=True):
                rows[i] = self._prediction_row(p)
        # A list of dicts, not a DataFrame: pandas would turn a failed row's None into NaN,
        # which is not JSON; this way the server answers null.
        return rows

    def _pixels(self, cell: Any) -> Any:
        """One cell's model input, or the reason (a str) that row cannot be used."""
        try:
            return self.photo_input.pixels(cell_bytes(cell, self.limits.max_image_bytes))
        except ValueError as exc:
            return str(exc)

    def _prediction_row(self, p: np.ndarray) -> dict[str, Any]:
        top = int(np.argmax(p))
        return {
            "label": self.labels[top],
            "confidence": float(p[top]),
            "probabilities": dict(zip(self.labels, map(float, p), strict=True)),
            "error": None,
        }


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
