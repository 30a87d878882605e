"""The table model builder: raw columns in, every flavour loads in safe mode, masking,
imputation, custom encoders (real Keras, small slices of the real sets)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from reprotrain.config import load_params
from reprotrain.errors import ConfigError, ModelError
from reprotrain.tables import features, inference
from reprotrain.tables import model as tm

ROWS = 200


def _cfg(**kw):
    base = dict(max_tokens=2000, sequence_length=24, embedding_dim=16, hidden=(16,))
    return dataclasses.replace(load_params(Path("params.yaml")).table, **{**base, **kw})


@pytest.fixture(scope="module")
def tweets(assets):
    frame = pd.read_csv(assets / "datasets/trump_tweets/trump_tweets.csv", nrows=ROWS)
    spec = features.InputSpec(
        text=("text",), numeric=("retweet_count", "favorite_count"), categorical=("hour",)
    )
    return frame, spec, features.model_inputs(frame, spec)


@pytest.fixture(scope="module")
def churn(assets):
    frame = pd.read_csv(assets / "datasets/churn/churn.csv", nrows=ROWS)
    numeric = tuple(c for c in frame.columns if c != "label" and frame[c].dtype.kind in "if")
    spec = features.InputSpec(numeric=numeric)
    return frame, spec, features.model_inputs(frame, spec)


def my_encoder(sequence, name):
    """A user's own text encoder (``table.text_encoder: tests.tables.test_model:my_encoder``)."""
    return keras.layers.GlobalMaxPooling1D(name=f"{name}_max")(sequence)


def broken_encoder(sequence, name):
    return sequence  # 3-D: not a [batch, features] vector


@pytest.mark.parametrize("api", ["functional", "subclassed"])
def test_raw_columns_in_and_safe_mode_round_trip(tweets, tmp_path, api):
    _, spec, inputs = tweets
    model = tm.build(spec, 3, inputs, _cfg(), api)
    assert model.name == f"table_{api}" and tm.is_table_model(model)
    probs = inference.predict_probs(model, inputs, spec)
    assert probs.shape == (ROWS, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(inference.predict_probs(loaded, inputs, spec), probs, atol=1e-6)


def test_sequential_numbers_only(churn, tweets, tmp_path):
    _, spec, inputs = churn
    model = tm.build(spec, 2, inputs, _cfg(), "sequential")
    assert isinstance(model, keras.Sequential) and model.name == "table_sequential"
    probs = inference.predict_probs(model, inputs, spec)
    model.save(tmp_path / "s.keras")
    loaded = keras.saving.load_model(tmp_path / "s.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(inference.predict_probs(loaded, inputs, spec), probs, atol=1e-6)
    with pytest.raises(ConfigError, match=r"numbers only.*text"):
        tm.build(tweets[1], 3, tweets[2], _cfg(), "sequential")


def test_missing_numbers_are_imputed_with_an_indicator(churn):
    _, spec, inputs = churn
    model = tm.build(spec, 2, inputs, _cfg(), "functional")
    holes = {k: v.copy() for k, v in inputs.items()}
    holes[spec.numeric[0]][:10] = np.nan
    probs = inference.predict_probs(model, holes, spec)
    assert np.isfinite(probs).all()
    # NaN is the train mean plus the indicator: not the same as the mean itself.
    mean = {k: v.copy() for k, v in inputs.items()}
    mean[spec.numeric[0]][:10] = np.nanmean(inputs[spec.numeric[0]])
    assert not np.allclose(inference.predict_probs(model, mean, spec)[:10], probs[:10])
    impute = model.get_layer("impute_missing")
    assert impute.compute_output_shape((None, len(spec.numeric)))[-1] == 2 * len(spec.numeric)


def test_masking_same_text_two_paddings_same_probabilities(tweets):
    """Through the BiLSTM: the padding never reaches the encoder."""
    frame, _, _ = tweets
    spec = features.InputSpec(text=("text",))
    inputs = features.model_inputs(frame, spec)
    keras.utils.set_random_seed(1)
    short = tm.build(spec, 3, inputs, _cfg(text_encoder="bilstm", sequence_length=40), "functional")
    long = tm.build(spec, 3, inputs, _cfg(text_encoder="bilstm", sequence_length=90), "functional")
    long.set_weights(short.get_weights())  # no weight depends on the sequence length
    texts = {"text": np.array([["Make America great again"], ["thank you"]], dtype=object)}
    a, b = (inference.predict_probs(m, texts, spec) for m in (short, long))
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert short.get_layer("text_embedding").mask_zero


def test_custom_and_broken_text_encoders(tweets):
    _, spec, inputs = tweets
    model = tm.build(spec, 3, inputs, _cfg(text_encoder=f"{__name__}:my_encoder"), "functional")
    assert model.get_layer("text_max")
    with pytest.raises(ModelError, match="expected a \\[batch, features\\]"):
        tm.build(spec, 3, inputs, _cfg(text_encoder=f"{__name__}:broken_encoder"), "functional")
    with pytest.raises(ConfigError, match=r"table\.text_encoder"):
        tm.build(spec, 3, inputs, _cfg(text_encoder="no_such_module_xyz:f"), "functional")


def test_cells_convert_alike_and_bad_rows_are_reported():
    spec = features.InputSpec(text=("t",), numeric=("n",), categorical=("c",))
    frame = pd.DataFrame(
        {"t": ["ok", None, "x"], "n": [1, "2.5", "abc"], "c": [415, 415.0, "415"], "label": 1}
    )
    inputs, good, errors = features.row_inputs(frame, spec)
    assert good == [0, 1] and errors[:2] == [None, None] and "'abc' is not a number" in errors[2]
    assert inputs["c"].ravel().tolist() == ["415", "415"]
    assert inputs["n"].ravel().tolist() == [1.0, 2.5]
    _, good, errors = features.row_inputs(frame.drop(columns="c"), spec)
    assert good == [] and all("missing column 'c'" in e for e in errors)


@pytest.mark.slow
def test_exports_take_the_raw_columns_and_are_rescored(churn, tweets, tmp_path):
    """SavedModel and TFLite of a numbers+categories model and of the Sequential one agree
    with Keras (NaN rows included); a text model's TFLite needs the Flex delegate: reported
    not shipped, with the reason, never a crash."""
    from reprotrain.config import ExportConfig
    from reprotrain.tables import export

    cfg = ExportConfig(formats=("saved_model", "tflite_float32", "onnx"), latency_samples=2)
    frame, _, _ = tweets
    cats = features.InputSpec(numeric=("retweet_count",), categorical=("hour",))
    cases = {
        "categories": (cats, features.model_inputs(frame, cats), "functional", True),
        "sequential": (churn[1], churn[2], "sequential", True),
        "text": (tweets[1], tweets[2], "functional", False),
    }
    for name, (spec, inputs, api, tflite_ships) in cases.items():
        inputs = {k: v[:40].copy() for k, v in inputs.items()}
        first = spec.numeric[0]
        inputs[first][:3] = np.nan
        model = tm.build(spec, 3, inputs, _cfg(), api)
        model.save(tmp_path / f"{name}.keras")
        y = np.zeros(40, dtype=np.int64)
        report = export.export_and_verify(
            model, tmp_path / f"{name}.keras", tmp_path / name, spec, (inputs, y), cfg
        )
        rows = report["formats"]
        assert rows["saved_model"]["shipped"] and rows["saved_model"]["agreement"] == 1.0, name
        assert rows["tflite_float32"]["shipped"] is tflite_ships, (name, rows["tflite_float32"])
        if not tflite_ships:
            assert "Flex" in rows["tflite_float32"]["reason"]
        assert not rows["onnx"]["shipped"] and "string" in rows["onnx"]["reason"]
