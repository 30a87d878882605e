"""Tiny, learnable training inputs shared by the model/training tests.

Why real weights even in unit tests: a randomly initialised MobileNetV2 in inference mode
outputs ~1e-12 features at 32×32 (nothing to learn from, gradients vanish), so the tests
load the real ImageNet 0.35 weights (the 2 MB file) by path into a 32×32 model: fast, and
the base computes real features whose gradients actually move the unfrozen layers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain.config import ModelConfig, RuntimeConfig, TrainConfig
from reprotrain.models.transfer import imagenet_weights_filename
from tests.conftest import ASSETS

SIZE = 32
ALPHA = 0.35


def tiny_weights() -> Path:
    """The 0.35/224 no-top weights: from the offline assets, else downloaded by Keras."""
    name = imagenet_weights_filename(ALPHA, 224)
    if ASSETS is not None and (ASSETS / "keras" / "models" / name).is_file():
        return ASSETS / "keras" / "models" / name
    import keras

    url = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/" + name
    return Path(keras.utils.get_file(name, url, cache_subdir="models"))


def tiny_model_cfg(weights: str | None = None) -> ModelConfig:
    return ModelConfig(alpha=ALPHA, image_size=SIZE, weights=weights or str(tiny_weights()))


def tiny_cnn(num_classes: int = 2):
    """A two-block from-scratch CNN at 32×32: for tests of the training loop itself (resume,
    backups), where what is trained does not matter and a MobileNetV2 only costs tracing
    time."""
    from reprotrain.models import scratch

    return scratch.build("cnn", SIZE, num_classes, filters=(8, 16))


def tiny_arrays(n: int = 24, num_classes: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Raw 0–255 images whose class is their dominant colour, and int32 labels."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % num_classes).astype(np.int32)
    x = rng.integers(0, 60, size=(n, SIZE, SIZE, 3)).astype(np.float32)
    for c in range(num_classes):
        x[y == c, :, :, c % 3] += 180
    return x, y


def tiny_dataset(x: np.ndarray, y: np.ndarray, batch_size: int = 8):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def train_tiny(
    checkpoint_dir: Path,
    cfg: TrainConfig,
    *,
    hook: Callable[[int, dict[str, float]], None] | None = None,
    resume_key: str = "same-inputs",
    validate_on_train: bool = False,
    tensorboard_dir: Path | None = None,
) -> tuple[Any, Any]:
    """``training.train`` of a fresh :func:`tiny_cnn` (seed-5 runtime) on 16
    :func:`tiny_arrays` images, validated on 8 others (or on the same 16 with
    ``validate_on_train``): the run the resume tests kill, fail and resume. Returns
    ``(model, result)``."""
    from reprotrain import runtime, training

    info = runtime.configure(RuntimeConfig(), seed=5)
    model = tiny_cnn()
    x, y = tiny_arrays(16)
    xv, yv = (x, y) if validate_on_train else tiny_arrays(8, seed=3)
    result = training.train(
        model,
        tiny_dataset(x, y),
        tiny_dataset(xv, yv),
        cfg,
        info,
        training.RunOptions(
            checkpoint_dir, tensorboard_dir=tensorboard_dir, resume_key=resume_key, epoch_hook=hook
        ),
    )
    return model, result


def tensorboard_steps(log_dir: Path) -> dict[str, list[int]]:
    """Every step logged per split folder, duplicates kept (read from the event files)."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    out: dict[str, list[int]] = {}
    for events in sorted(log_dir.glob("*/events.out.tfevents.*")):
        for raw in tf.data.TFRecordDataset(str(events)):
            event = event_pb2.Event.FromString(raw.numpy())
            if any(v.tag == "epoch_loss" for v in event.summary.value):
                out.setdefault(events.parent.name, []).append(int(event.step))
    return {k: sorted(v) for k, v in out.items()}
