"""Load a saved ``.keras`` model and check that it fits the data it is about to see.

Why one function: a model trained on another dataset (other classes, another input size)
loads fine and then produces confident nonsense, or fails deep inside TensorFlow. Every
caller (finetune, evaluate, the champion re-score, predict) loads through here, so the
check and its message are the same everywhere, and the cause of a failed load is kept.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

from reprotrain.errors import ModelError
from reprotrain.timing import timed


def model_image_size(model: Any) -> int:
    """The square input size a model expects (``[None, S, S, 3]``)."""
    shape = model.input_shape
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise ModelError(f"expected a model taking [batch, S, S, 3] images, got input {shape}")
    return int(shape[1])


@timed("model")
def load_model(
    path: Path | str,
    *,
    num_classes: int | None = None,
    image_size: int | None = None,
    strategy: Any = None,
    hint: str = "rerun the stage that wrote it (dvc repro)",
) -> Any:
    """Load ``path`` for inference or further training (safe mode, not compiled).

    ``num_classes`` / ``image_size``, when given, must match the model's output width and
    input size; otherwise a :class:`ModelError` names both and says ``hint``. ``strategy``
    (a ``tf.distribute.Strategy``) scopes the variables for training under it.
    """
    import keras

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}; {hint}")
    try:
        with strategy.scope() if strategy is not None else nullcontext():
            model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # corrupt zip, unknown layer, version mismatch: all user-facing
        raise ModelError(
            f"{path}: cannot load the model ({type(exc).__name__}: {exc}); {hint}"
        ) from exc
    got_classes = int(model.output_shape[-1])
    got_size = model_image_size(model)
    if (num_classes is not None and got_classes != num_classes) or (
        image_size is not None and got_size != image_size
    ):
        want = ", ".join(
            part
            for part in (
                f"{num_classes} classes" if num_classes is not None else "",
                f"{image_size}px (model.image_size)" if image_size is not None else "",
            )
            if part
        )
        raise ModelError(
            f"{path} was trained for {got_classes} classes at {got_size}px but the data "
            f"needs {want}; {hint}"
        )
    return model
