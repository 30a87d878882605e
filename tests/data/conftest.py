"""What the tf.data tests (pipeline, cache, augmentation) share: one small prepared dataset
per module, a random JPEG, and one epoch of a dataset as arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import prepared_tree


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("pipeline")
    return prepared_tree(tmp, {"cats": 24, "dogs": 24}, shard_size=8)


def jpeg_bytes(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    return tf.io.encode_jpeg(arr, quality=95).numpy()


def epoch_arrays(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(xs), np.concatenate(ys)
