"""Save a ``.keras`` model reproducibly; load one and check that it fits the data it is
about to see.

Why one loader: a model trained on another dataset (other classes, another input size)
loads fine and then produces confident nonsense, or fails deep inside TensorFlow. Every
caller (finetune, evaluate, the champion re-score, predict) loads through here, so the
check and its message are the same everywhere, and the cause of a failed load is kept.
"""

from __future__ import annotations

import io
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
CONFIG = "config.json"
WEIGHTS = "model.weights.h5"
#: Config keys that do not change what a model computes at inference: whether its layers
#: train, how it was compiled, and the ids Keras gives objects shared while saving.
NOT_INFERENCE_KEYS = frozenset({"trainable", "compile_config", "shared_object_id"})


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


def _inference_config(node: Any) -> Any:
    """A ``config.json`` tree without :data:`NOT_INFERENCE_KEYS`."""
    if isinstance(node, dict):
        return {k: _inference_config(v) for k, v in node.items() if k not in NOT_INFERENCE_KEYS}
    if isinstance(node, list):
        return [_inference_config(v) for v in node]
    return node


def _model_arrays(weights: Any) -> dict[str, Any]:
    """The model's weight datasets in an open ``model.weights.h5``, by path (the
    optimizer's state left out: it does not take part in inference)."""
    import h5py

    found: dict[str, Any] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and not name.startswith("optimizer/"):
            found[name] = obj

    weights.visititems(visit)
    return found


def same_inference(a: Path | str, b: Path | str) -> bool:
    """Whether two ``.keras`` files compute the same function at inference: the same
    architecture (``config.json`` without :data:`NOT_INFERENCE_KEYS`) and the same weights,
    bit for bit (``model.weights.h5`` without the optimizer's state).

    Why: when no fine-tuning epoch beats the head's weights, finetune saves exactly those
    weights, and a retrain can land on the champion's; the files differ in bytes (trainable
    flags, optimizer state) yet predict the same probabilities (deterministic ops), and
    loading and scoring one again costs evaluate ~4 s per model. Compared in the files,
    without building either model, stopping at the first difference (~0.3 s when equal).
    A file that cannot be read counts as different: the caller then loads it, and the
    loader reports the problem.
    """
    import h5py

    try:
        with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
            config_a, config_b = (json.loads(z.read(CONFIG)) for z in (za, zb))
            if _inference_config(config_a) != _inference_config(config_b):
                return False
            # In memory: h5py's many small reads through a zip stream took 4× as long.
            fa, fb = (io.BytesIO(z.read(WEIGHTS)) for z in (za, zb))
            with h5py.File(fa, "r") as ha, h5py.File(fb, "r") as hb:
                arrays_a, arrays_b = _model_arrays(ha), _model_arrays(hb)
                if arrays_a.keys() != arrays_b.keys():
                    return False
                for name, x in arrays_a.items():
                    y = arrays_b[name]
                    if x.shape != y.shape or x.dtype != y.dtype:
                        return False
                    if x[()].tobytes() != y[()].tobytes():
                        return False
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    return True
