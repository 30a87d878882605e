"""What the series train stage does around ``training.train``: the model from the train
windows' statistics, the forecasts of a model on windows, and the forecast config (interval
widths from the val period) saved beside the model.

Why the intervals are calibrated here rather than in evaluate: the widths belong to the
weights (a retrained model has other residuals), and serving, ``predict`` and the exports
read them from the file beside the ``.keras`` that train writes, so every consumer uses the
same widths. evaluate reads them back and measures their coverage on the test period.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain import fsio, stage_io
from reprotrain.series import conformal
from reprotrain.series import model as series_model
from reprotrain.series.serving import ForecastConfig

logger = logging.getLogger(__name__)


def prepared_digest(prepared: Path | str) -> str:
    """A digest of every file of the prepared folder (part of the resume key: other data,
    another run)."""
    files = sorted(p for p in Path(prepared).rglob("*") if p.is_file())
    return stage_io.fingerprint(
        [(p.relative_to(prepared).as_posix(), fsio.file_sha256(p)) for p in files]
    )


def build_model(cfg: Any, meta: Any, train: Any) -> Any:
    """The ``series.model`` forecaster for ``meta``'s windows, scaled by the train windows."""
    stats = series_model.scaling(train.x, train.y, cfg.anchor)
    return series_model.build(
        cfg.model, meta.window, meta.horizon, len(meta.channels), stats, units=cfg.units
    )


def predict(model: Any, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The model's forecasts [n, horizon] (float64) for windows ``x`` [n, window, channels]."""
    x = np.asarray(x, np.float32)
    if len(x) == 0:
        return np.zeros((0, int(model.output_shape[-1])))
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), np.float64)


def forecast_config(
    model: Any, meta: Any, val: Any, levels: Sequence[float], batch_size: int = 256
) -> ForecastConfig:
    """The served config: columns, frequency, and split-conformal widths from the model's
    residuals on the val windows."""
    residuals = np.abs(predict(model, val.x, batch_size) - np.asarray(val.y, np.float64))
    widths = conformal.widths(residuals, levels)
    for key, spec in widths.items():
        logger.info("interval %s%%: widths %s (val windows: %d)", key, spec["width"], len(val))
    return ForecastConfig(
        window=int(meta.window),
        horizon=int(meta.horizon),
        frequency=str(meta.frequency),
        time=str(meta.time),
        target=str(meta.target),
        covariates=tuple(meta.covariates),
        intervals=widths,
        model=str(model.name),
    )


def in_memory_dataset(
    x: np.ndarray, y: np.ndarray, *, batch_size: int, shuffle: bool, seed: int
) -> Any:
    """``(x, y)`` batches from arrays already in memory, of known length (a cosine
    schedule needs it), reshuffled each epoch in the same seeded order on every run.

    Why not re-read the TFRecords each epoch: a series' windows are a few MB at most (n ×
    window × channels floats) and evaluate needs the arrays anyway; parsing them every epoch
    would make the stage slower than a plain ``model.fit`` on arrays (the benchmark's bar).
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((np.asarray(x, np.float32), np.asarray(y, np.float32)))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
