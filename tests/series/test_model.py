"""The forecaster: raw values in, raw forecasts out (normalisation inside, from the train
windows), the built-in variants and a custom builder, a safe-mode round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reprotrain.errors import ConfigError, ModelError
from reprotrain.series import model as series_model

WINDOW, HORIZON = 12, 4


def co2_windows(assets: Path | None, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Windows of the co2 series (or a seasonal stand-in without the assets), with a
    covariate channel (week of year), made by Keras' own windowing."""
    import keras

    if assets is not None:
        values = pd.read_csv(assets / "datasets/co2/co2_weekly.csv")["co2"].to_numpy()[:n]
    else:
        t = np.arange(n)
        values = 320 + 0.03 * t + 3 * np.sin(2 * np.pi * t / 52)
    values = pd.Series(values).interpolate().to_numpy(np.float32)
    cov = (np.arange(len(values)) % 52).astype(np.float32)
    data = np.stack([values, cov], axis=1)
    ds = keras.utils.timeseries_dataset_from_array(
        data[:-HORIZON], None, sequence_length=WINDOW, batch_size=10_000
    )
    x = next(iter(ds)).numpy()
    y = np.stack([values[i + WINDOW : i + WINDOW + HORIZON] for i in range(len(x))])
    return x, y


def custom_core(window: int, channels: int, units: int):
    import keras

    return keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(units)], name="mine")


def flat_core(window: int, channels: int, units: int):
    import keras

    return keras.layers.Dense(units)  # keeps the time axis: a 3-D output


@pytest.mark.parametrize("anchor", ["last", "mean"])
def test_untrained_model_takes_raw_values_and_returns_their_scale(assets, anchor, tmp_path):
    import keras

    x, y = co2_windows(assets)
    stats = series_model.scaling(x, y, anchor)
    m = series_model.build("lstm", WINDOW, HORIZON, 2, stats, units=8)
    assert m.name == "series_lstm" and series_model.is_series_model(m)
    assert m.input_shape == (None, WINDOW, 2) and m.output_shape == (None, HORIZON)
    f = np.asarray(m(x[:50]))
    # Near the data's level (the network's output is scaled by the train statistics).
    assert np.abs(f - y[:50]).mean() < 5 * np.abs(y - y.mean()).mean() + 1
    # The input layer normalises each channel by its train mean and std.
    normalised = np.asarray(keras.Model(m.input, m.get_layer("normalise").output)(x))
    channels = x.reshape(-1, 2)
    expected = (x - channels.mean(axis=0)) / channels.std(axis=0)
    assert np.allclose(normalised, expected, atol=1e-3)
    m.save(tmp_path / "m.keras")
    back = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True, compile=False)
    assert np.allclose(np.asarray(back(x[:5])), np.asarray(m(x[:5])), atol=1e-5)


def test_variants_and_custom_builder(assets) -> None:
    x, y = co2_windows(assets, 150)
    stats = series_model.scaling(x, y)
    for name, layers in (("gru", "gru"), ("stacked", "stacked")):
        m = series_model.build(name, WINDOW, HORIZON, 2, stats, units=4)
        assert m.name == f"series_{name}" and m.get_layer(layers) is not None
    m = series_model.build("tests.series.test_model:custom_core", WINDOW, HORIZON, 2, stats)
    assert m.name == "series_custom_core" and m.output_shape == (None, HORIZON)
    with pytest.raises(ModelError, match="expected fn"):
        series_model.build("tests.series.test_model:flat_core", WINDOW, HORIZON, 2, stats)
    with pytest.raises(ConfigError, match=r"series\.model"):
        series_model.build("tests.series.test_model:nope", WINDOW, HORIZON, 2, stats)
    with pytest.raises(ModelError, match="channels"):
        series_model.build("lstm", WINDOW, HORIZON, 3, stats)


def test_scaling_uses_only_what_it_is_given_and_survives_constant_channels() -> None:
    x = np.ones((5, 3, 2), np.float32)
    x[..., 0] = np.arange(15).reshape(5, 3)
    y = np.arange(10, dtype=np.float32).reshape(5, 2)
    s = series_model.scaling(x, y, "last")
    assert s.variance[1] == 1.0  # a constant covariate: no division by zero
    assert np.allclose(s.out_std, (y - x[:, -1, :1]).std(axis=0))
    with pytest.raises(ModelError, match="train period"):
        series_model.scaling(x[:0], y[:0])
