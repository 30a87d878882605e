"""The images an export is checked and calibrated on: the whole test split, and a seeded
sample of train images for int8 calibration.

Why apart from the converters: these read TFRecords through the training pipeline (no
augmentation, no cache), while the converters never touch data; the stage loads them in
the gaps while the second process converts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reprotrain.config import PipelineConfig
from reprotrain.errors import ModelError


def load_split(
    files: Sequence[Path | str],
    pipeline_cfg: PipelineConfig,
    *,
    image_size: int,
    batch_size: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """All images (float32 0..255) and labels of a split, in file order (the test set)."""
    from reprotrain.data.pipeline import make_dataset

    cfg = dataclasses.replace(pipeline_cfg, cache="none")  # read once: nothing to cache
    ds = make_dataset(
        files, cfg, training=False, image_size=image_size, batch_size=batch_size, seed=seed
    )
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
    if not images:
        raise ModelError(f"no images in {len(files)} TFRecord shard(s): rerun prepare")
    return np.concatenate(images), np.concatenate(labels)


def calibration_images(
    files: Sequence[Path | str],
    pipeline_cfg: PipelineConfig,
    *,
    image_size: int,
    count: int,
    seed: int,
) -> np.ndarray:
    """A seeded sample of ``count`` train images (float32 0..255, not augmented).

    The training pipeline's seeded shuffle picks them, so the sample is the same on every
    run with the same seed and data, and only ``count`` images are decoded.
    """
    from reprotrain.data.pipeline import make_dataset

    cfg = dataclasses.replace(pipeline_cfg, cache="none")
    ds = make_dataset(
        files, cfg, training=True, augment=False, image_size=image_size, batch_size=1, seed=seed
    )
    sample = [x.numpy()[0] for x, _ in ds.take(count)]
    if not sample:
        raise ModelError("no train images for int8 calibration: rerun prepare")
    return np.stack(sample)
