"""Save a ``.keras`` model reproducibly; load one and check that it fits the data it is
about to see.

Why one loader: a model trained on another dataset (other classes, another input size)
loads fine and then produces confident nonsense, or fails deep inside TensorFlow. Every
caller (finetune, evaluate, the champion re-score, predict) loads through here, so the
check and its message are the same everywhere, and the cause of a failed load is kept.
"""

from __future__ import annotations

import json
import zipfile
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


def inference_function(model: Any, dtype: str = "float32", name: str | None = None) -> Any:
    """``model`` in inference mode as one ``tf.function`` of ``[None, S, S, 3]`` pixel
    batches of ``dtype`` (cast to float32 inside, so uint8 batches stay uint8 in memory),
    traced once: the open batch dimension lets a short last batch or a single image reuse
    the graph, where each retrace of a backbone costs seconds. ``name`` names the input
    (a SavedModel signature's input key). Scoring, export's reference and the exported
    SavedModel all run the model through this.
    """
    import tensorflow as tf

    size = model_image_size(model)
    spec = tf.TensorSpec([None, size, size, 3], dtype, name=name)
    return tf.function(
        lambda images: model(tf.cast(images, tf.float32), training=False), input_signature=[spec]
    )


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


#: The date every entry of a saved ``.keras`` archive gets (the zip format's earliest).
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
METADATA = "metadata.json"


def save_model(model: Any, path: Path | str) -> None:
    """``model.save(path)``, then the same bytes for the same model (:func:`normalize_archive`).

    Why: Keras stamps the wall clock into every ``.keras`` file (``date_saved`` in
    ``metadata.json``, and the zip date of the weights entry). A training stage rerun with
    the same result then still changes its output's hash, and DVC reruns export and evaluate
    (≈ 1.5 min, and a new registered version) for nothing.
    """
    model.save(path)
    normalize_archive(Path(path))


def normalize_archive(path: Path) -> None:
    """Rewrite a ``.keras`` zip in place with fixed entry dates and without ``date_saved``.

    Entries keep their order, compression and contents (Keras reads ``date_saved`` only to
    display it)."""
    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w") as dst:
        for info, data in entries:
            if info.filename == METADATA:
                meta = json.loads(data)
                meta.pop("date_saved", None)
                data = json.dumps(meta, sort_keys=True).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=ZIP_EPOCH)
            fixed.compress_type = info.compress_type
            fixed.external_attr = info.external_attr
            dst.writestr(fixed, data)
