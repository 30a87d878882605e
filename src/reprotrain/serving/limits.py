"""What one scoring request may hold and cost, and how its image cells are read.

Why a module of its own: the served model (:mod:`reprotrain.serving.pyfunc`) and the HTTP
app in front of it must agree on the same limits, and a request's cells arrive in several
forms (a DataFrame from the scoring server, a Mapping, a list of records or of files in
process). Reading a cell and bounding its size before it is decoded is one job, kept apart
from running the model. The server imports it (it is one of the packaged modules), so it
needs only numpy and pandas; MLflow is imported only to refuse a request.

Why the limits are ``model_config`` keys: a server overrides them with MLflow's
``MLFLOW_PYFUNC_INFERENCE_CONFIG`` without re-logging the model (see ``docs/serving.md``).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

#: Input column holding the image files.
IMAGE_COLUMN = "image"
#: Serving limits, ``model_config`` keys a server may override with MLflow's
#: ``MLFLOW_PYFUNC_INFERENCE_CONFIG`` (see :class:`Limits`).
DEFAULT_LIMITS = {
    "max_image_bytes": 16 * 1024 * 1024,  # one file (a phone photo is 2-12 MB)
    "max_rows": 64,  # files in one request
    "max_request_bytes": 64 * 1024 * 1024,  # all files of one request together
}


@dataclass(frozen=True)
class Limits:
    """What one request may cost the server.

    ``max_image_bytes`` (one file: over it, that row's error, checked before decoding),
    ``max_rows`` and ``max_request_bytes`` (all files together: over either, the request is
    refused with HTTP 400). :attr:`body_bytes` is the largest JSON body a valid request
    needs: ``pyfunc.scoring_app`` refuses a longer body (HTTP 413) before reading it.
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

    def check_request(self, cells: list[Any]) -> None:
        """Refuse a request over ``max_rows`` or ``max_request_bytes`` whole, before
        anything is decoded."""
        if len(cells) > self.max_rows:
            self.refuse(
                f"{len(cells)} images in one request, over the limit of {self.max_rows} "
                "(max_rows): split the request"
            )
        if (total := sum(map(cell_size, cells))) > self.max_request_bytes:
            self.refuse(
                f"about {total} bytes of images in one request, over the limit of "
                f"{self.max_request_bytes} (max_request_bytes): split the request"
            )


def is_missing(value: Any) -> bool:
    """A row without an image: ``None``, or the NaN pandas puts where a record lacked the key."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def cell_size(value: Any) -> int:
    """Bytes a cell holds (3/4 of a base64 text's length), before any decoding."""
    if isinstance(value, str):
        return len(value) * 3 // 4
    return len(value) if isinstance(value, bytes | bytearray | memoryview) else 0


def cell_bytes(value: Any, max_bytes: int) -> bytes:
    """A cell of the image column: bytes as they are, a str as base64 (the JSON form).

    The size is checked before decoding (a base64 text of ``n`` characters holds at most
    ``3n/4`` bytes), so an oversized cell costs no second copy. Whitespace is allowed (what
    ``base64 -b 76`` and ``base64.encodebytes`` write); any other non-base64 character is an
    error, not silently dropped. Raises ValueError with the row's reason.
    """
    if is_missing(value):
        raise ValueError(f"no {IMAGE_COLUMN!r} in this row: send the file as base64 text")
    if not isinstance(value, str | bytes | bytearray | memoryview):
        raise ValueError(f"expected base64 text (or bytes), got {type(value).__name__}")
    if (size := cell_size(value)) > max_bytes:
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


def image_cells(model_input: Any) -> list[Any]:
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
