"""Running a table model on input dicts: what evaluate, the served model, predict and the
exports' reference share.

Apart from :mod:`reprotrain.tables.model` (the builder) so that the served model imports
no more than it runs: numpy here, TensorFlow only when a model is called.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from reprotrain.tables.features import InputSpec

#: Rows per model call: a table row is small, and fewer calls cost less than bigger batches.
BATCH_ROWS = 1024


def takes_dict(model: Any) -> bool:
    """Whether ``model`` takes the column dict (Functional) or one stacked tensor
    (``model.api: sequential``)."""
    return model.__class__.__name__ != "Sequential"


def feed(model: Any, inputs: Mapping[str, np.ndarray], spec: InputSpec) -> Any:
    """What to call ``model`` with: the column dict (its own columns only), or the numeric
    columns stacked in schema order for the Sequential model."""
    if takes_dict(model):
        return {c: inputs[c] for c in spec.columns}
    return np.concatenate([inputs[c] for c in spec.numeric], axis=1).astype(np.float32)


def tensors(part: Any) -> Any:
    """Numpy inputs as TensorFlow tensors (object arrays of str → tf.string)."""
    import tensorflow as tf

    if isinstance(part, dict):
        return {k: tf.constant(v.astype(str) if v.dtype == object else v) for k, v in part.items()}
    return tf.constant(part)


def predict_probs(
    model: Any, inputs: Mapping[str, np.ndarray], spec: InputSpec, batch_size: int = BATCH_ROWS
) -> np.ndarray:
    """Softmax probabilities of every row of an input dict (float64 ``[n, classes]``), in
    inference mode, through the model's one compiled predict function."""
    data = feed(model, inputs, spec)
    n = len(next(iter(inputs.values()))) if inputs else 0
    if n == 0:
        return np.zeros((0, int(model.output_shape[-1])))
    out = []
    for start in range(0, n, batch_size):
        stop = start + batch_size
        part = (
            {k: v[start:stop] for k, v in data.items()}
            if isinstance(data, dict)
            else data[start:stop]
        )
        out.append(np.asarray(model.predict_on_batch(tensors(part)), dtype=np.float64))
    return np.concatenate(out)


def load(
    path: Any, *, num_classes: int | None = None, hint: str = "rerun train (dvc repro)"
) -> Any:
    """A table model file, loaded in safe mode (its registered layers imported first); a
    file that is missing, unreadable, not a table model or trained for another number of
    classes is a one-line ModelError saying ``hint``."""
    from pathlib import Path

    import keras

    from reprotrain.errors import ModelError
    from reprotrain.tables import layers  # noqa: F401  (registers ImputeMissing, MLPBlock)

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}; {hint}")
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # corrupt zip, unknown layer, version mismatch: all user-facing
        raise ModelError(
            f"{path}: cannot load the model ({type(exc).__name__}: {exc}); {hint}"
        ) from exc
    if not str(model.name).startswith("table"):
        raise ModelError(f"{path} is a {model.name!r} model, not a table model; {hint}")
    classes = int(model.output_shape[-1])
    if num_classes is not None and classes != num_classes:
        raise ModelError(
            f"{path} predicts {classes} classes but the data has {num_classes}; {hint}"
        )
    return model
