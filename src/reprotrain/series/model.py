"""The forecaster: raw windows in, raw forecasts out, every statistic from the train period.

Why the normalisation lives inside the model: the saved ``.keras`` file then takes the values
as they are recorded and returns forecasts in the same units, so serving, predict and the
exports need no statistics file that could drift from the weights. The input layer
``normalise`` holds each channel's train mean and standard deviation (target first, then the
covariates) as a ``Rescaling`` (:func:`_normalise`); the output is de-normalised by a
``Rescaling`` of the train statistics and, with ``anchor: last`` (the default), added to the
last observed target: the network learns the change over the horizon, so a trend that leaves
the train range (co2) is followed instead of being clipped by saturated recurrent units; its
input is then the target's change from the last value too (:func:`_relative_target`).
``anchor: mean`` is the seed's level forecast (train mean + std × output) on the normalised
levels.

Models are named ``series_<model>``: ``predict`` dispatches on the ``series`` prefix.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from reprotrain.errors import ModelError

logger = logging.getLogger(__name__)

#: What a ``series.model: package.module:function`` must be.
CUSTOM_CONTRACT = (
    "fn(window, channels, units) -> a keras.Model (or Layer) taking the normalised "
    "[batch, window, channels] inputs to [batch, features]; reprotrain adds Dense(horizon) "
    "and the de-normalisation"
)
NAME_PREFIX = "series"


@dataclass(frozen=True)
class Scaling:
    """The train period's statistics the model is built with.

    ``mean``/``variance``: per input channel (target first). ``out_mean``/``out_std``: per
    horizon step, of what the network's output is scaled to: the target itself (anchor
    mean) or its change from the last observed value (anchor last).
    """

    mean: np.ndarray
    variance: np.ndarray
    out_mean: np.ndarray
    out_std: np.ndarray
    anchor: str


def scaling(x: np.ndarray, y: np.ndarray, anchor: str = "last") -> Scaling:
    """The statistics of the train windows ``x`` [n, window, channels] and targets ``y``
    [n, horizon]; a constant channel gets variance 1 (no division by zero)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 3 or y.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ModelError(
            f"train windows of shape {x.shape} and targets {y.shape}: expected "
            "[n, window, channels] and [n, horizon] with n > 0 (is the train period empty?)"
        )
    flat = x.reshape(-1, x.shape[-1])
    variance = flat.var(axis=0)
    variance = np.where(variance > 1e-12, variance, 1.0)
    if anchor == "last":
        target = y - x[:, -1, :1]
        out_mean = np.zeros(y.shape[1])
    elif anchor == "mean":
        target = y
        out_mean = np.full(y.shape[1], flat[:, 0].mean())
    else:
        raise ModelError(f"series.anchor = {anchor!r}: expected 'last' or 'mean'")
    out_std = target.std(axis=0) if anchor == "last" else np.full(y.shape[1], flat[:, 0].std())
    out_std = np.where(out_std > 1e-12, out_std, 1.0)
    return Scaling(flat.mean(axis=0), variance, out_mean, out_std, anchor)


def _core(name: str, window: int, channels: int, units: int) -> Any:
    """The network between the normalised inputs and Dense(horizon)."""
    import keras

    if name == "lstm":
        return keras.layers.LSTM(units, name="lstm")
    if name == "gru":
        return keras.layers.GRU(units, name="gru")
    if name == "stacked":
        return keras.Sequential(
            [
                keras.layers.LSTM(units, return_sequences=True, name="lstm_1"),
                keras.layers.LSTM(units, name="lstm_2"),
            ],
            name="stacked",
        )
    from reprotrain.models.backbones import import_function

    fn = import_function(name, key="series.model")
    where = f"series.model = {name!r}"
    try:
        core = fn(window, channels, units)
    except Exception as exc:
        raise ModelError(f"{where}: the function failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(core, keras.layers.Layer) or isinstance(core, keras.layers.Lambda):
        raise ModelError(
            f"{where}: returned {type(core).__name__}; expected {CUSTOM_CONTRACT} (a Lambda "
            "does not load with safe_mode=True)"
        )
    return core


def _normalise(stats: Scaling) -> Any:
    """``(x - mean) / std`` per channel, as ``Normalization`` computes it (the std floored
    at Keras' epsilon), written as a ``Rescaling`` by ``1/std`` with offset ``-mean/std``.

    Why not ``Normalization(mean=..., variance=...)``: it keeps the given statistics as
    tensors captured by the traced function, and tf2onnx turns those into graph inputs the
    ONNX model then asks for (``Required inputs (['.../normalise_1/Sub/y:0', ...]) are
    missing``): the forecaster could not ship as ONNX. A ``Rescaling``'s factors are
    constants in the graph, and the ``.keras`` file still holds them.
    """
    import keras

    std = np.maximum(np.sqrt(np.asarray(stats.variance, np.float64)), keras.backend.epsilon())
    mean = np.asarray(stats.mean, np.float64)
    return keras.layers.Rescaling(
        scale=(1.0 / std).astype(np.float32).tolist(),
        offset=(-mean / std).astype(np.float32).tolist(),
        name="normalise",
    )


def _relative_target(norm: Any, stats: Scaling, channels: int) -> Any:
    """The target channel as its change from the window's last value, in units of the
    train's one-step change (the covariates stay as normalised).

    Why: a level normalised by the train period's mean and variance drifts out of range
    as a trend continues, and a season's shape is a small ripple on it; relative to "now"
    the network sees the last ``window`` steps' shape at the scale of the changes it must
    forecast (on co2 this cut the test MAE about threefold against the level input).
    """
    import keras

    target = norm[:, :, 0:1]
    change = keras.layers.Subtract(name="relative")([target, target[:, -1:, :]])
    scale = float(np.sqrt(stats.variance[0]) / stats.out_std[0])
    change = keras.layers.Rescaling(scale, name="change_scale")(change)
    if channels == 1:
        return change
    return keras.layers.Concatenate(axis=-1, name="channels")([change, norm[:, :, 1:]])


def model_name(name: str) -> str:
    """``series_<model>`` (a custom ref's function name, made a valid Keras name)."""
    short = name.rpartition(":")[2] if ":" in name else name
    return f"{NAME_PREFIX}_{re.sub(r'[^0-9A-Za-z_]', '_', short)}"


def build(
    name: str,
    window: int,
    horizon: int,
    channels: int,
    stats: Scaling,
    *,
    units: int = 64,
) -> Any:
    """``Input(window, channels)`` → normalise → ``name``'s core → Dense(horizon) →
    de-normalisation (see the module docstring): a Functional ``series_<name>`` model."""
    import keras

    if len(stats.mean) != channels or len(stats.out_std) != horizon:
        raise ModelError(
            f"statistics for {len(stats.mean)} channels and {len(stats.out_std)} steps; the "
            f"model has {channels} channels and horizon {horizon}: rerun prepare and train"
        )
    inputs = keras.Input((window, channels), name="history")
    norm = _normalise(stats)(inputs)
    if stats.anchor == "last":
        norm = _relative_target(norm, stats, channels)
    features = _core(name, window, channels, units)(norm)
    if len(features.shape) != 2:
        raise ModelError(
            f"series.model = {name!r}: its core outputs shape {tuple(features.shape)}; "
            f"expected {CUSTOM_CONTRACT}"
        )
    steps = keras.layers.Dense(horizon, name="steps")(features)
    out = keras.layers.Rescaling(
        scale=stats.out_std.astype(np.float32).tolist(),
        offset=stats.out_mean.astype(np.float32).tolist(),
        name="denormalise",
    )(steps)
    if stats.anchor == "last":
        last = inputs[:, -1, 0:1]
        out = keras.layers.Add(name="forecast")([out, last])
    model = keras.Model(inputs, out, name=model_name(name))
    logger.info(
        "model %s: window %d × %d channels → %d steps (%d params)",
        model.name,
        window,
        channels,
        horizon,
        model.count_params(),
    )
    return model


def is_series_model(model: Any) -> bool:
    """Whether a loaded Keras model is a forecaster (its name's prefix)."""
    return str(getattr(model, "name", "")).startswith(NAME_PREFIX)


def check_shape(model: Any, window: int, channels: int, horizon: int) -> None:
    """A model built for other windows (another params.series, stale file) stops here."""
    got_in = tuple(model.input_shape[1:])
    got_out = int(model.output_shape[-1])
    if got_in != (window, channels) or got_out != horizon:
        raise ModelError(
            f"the model takes windows {got_in} and forecasts {got_out} steps; the data has "
            f"window {window} × {channels} channels and horizon {horizon}: rerun train "
            "(dvc repro)"
        )


def load(path: Any, *, hint: str = "rerun train (dvc repro)") -> Any:
    """A saved forecaster (safe mode, not compiled); a one-line ModelError when the file is
    missing, unreadable or not a forecaster. (``models.loading.load_model`` checks an image
    input, which a forecaster does not have.)"""
    from pathlib import Path

    import keras

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}; {hint}")
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # corrupt zip, unknown layer, version mismatch
        raise ModelError(
            f"{path}: cannot load the model ({type(exc).__name__}: {exc}); {hint}"
        ) from exc
    if not is_series_model(model):
        raise ModelError(
            f"{path} is the Keras model {model.name!r}, not a forecaster (series_*): {hint}"
        )
    return model
