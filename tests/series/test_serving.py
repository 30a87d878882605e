"""The served forecaster's contract, in process: a history table in (any row order), the
forecast rows with timestamps at the recorded frequency and intervals out, and one clear
error per unusable history (HTTP 400 through MLflow's INVALID_PARAMETER_VALUE; the real
server is exercised in test_e2e.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from reprotrain.series import model as series_model
from reprotrain.series import serving

CFG = serving.ForecastConfig(
    window=6,
    horizon=3,
    frequency="MS",
    time="month",
    target="sales",
    covariates=("price",),
    intervals={"80": {"level": 0.8, "width": [1.0, 2.0, 3.0]}},
    model="series_lstm",
)


def _history(n: int = 8) -> pd.DataFrame:
    months = pd.date_range("2020-01-01", periods=n, freq="MS")
    return pd.DataFrame(
        {"month": months.strftime("%Y-%m-%d"), "sales": np.arange(n) + 10.0, "price": 1.5}
    )


def test_last_window_rows_in_time_order_and_future_times() -> None:
    frame = _history().sample(frac=1.0, random_state=0)  # any order: sorted by time
    x, last = serving.history_window(frame, CFG)
    assert x.shape == (1, 6, 2) and x.dtype == np.float32
    assert x[0, :, 0].tolist() == [12.0, 13.0, 14.0, 15.0, 16.0, 17.0]
    assert last == pd.Timestamp("2020-08-01")
    rows = serving.forecast_rows(np.array([1.0, 2.0, 3.0]), last, CFG)
    assert [r["time"][:10] for r in rows] == ["2020-09-01", "2020-10-01", "2020-11-01"]
    assert rows[2]["lower_80"] == 0.0 and rows[2]["upper_80"] == 6.0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.head(4), "has 4 rows; the model needs the last 6"),
        (lambda f: f.drop(columns="price"), "lacks column(s) 'price'"),
        (lambda f: f.assign(sales=f["sales"].where(f.index != 6)), "missing or not a number"),
        (
            lambda f: f.drop(index=5),
            "not consecutive MS steps ending at 2020-08-01 00:00:00 (missing: 2020-06-01 00:00:00)",
        ),
        (lambda f: pd.concat([f, f.tail(1)]), "(repeated: 2020-08-01 00:00:00)"),
        (
            lambda f: f.assign(month=[*f["month"][:-1], "2020-08-15"]),
            "(not on the MS grid: 2020-08-15 00:00:00)",
        ),
        (lambda f: f.assign(month=["x"] * len(f)), "is not a timestamp"),
        (lambda f: f.assign(price="cheap"), "'price' is missing or not a number"),
    ],
)
def test_unusable_histories_are_one_clear_error(edit, message) -> None:
    with pytest.raises(serving.HistoryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        serving.history_window(edit(_history()), CFG)


def test_the_pyfunc_answers_rows_or_an_invalid_parameter_error(tmp_path: Path) -> None:
    from mlflow.exceptions import MlflowException

    x = np.random.default_rng(0).normal(size=(20, 6, 2)).astype(np.float32)
    y = x[:, -3:, 0]
    m = series_model.build("lstm", 6, 3, 2, series_model.scaling(x, y), units=2)
    m.save(tmp_path / "model.keras")
    config = CFG.write(tmp_path / "forecast.json")
    model = serving.Forecaster()
    model.load_context(
        SimpleNamespace(artifacts={"model": str(tmp_path / "model.keras"), "config": str(config)})
    )
    rows = model.predict(None, _history())
    expected = np.asarray(m(serving.history_window(_history(), CFG)[0]))[0]
    np.testing.assert_allclose([r["forecast"] for r in rows], expected, rtol=1e-5)
    with pytest.raises(MlflowException) as info:
        model.predict(None, _history(3))
    assert info.value.get_http_status_code() == 400 and "needs the last 6" in info.value.message


@pytest.mark.slow
def test_exports_are_rescored_and_int8_is_a_reasoned_row(tmp_path: Path) -> None:
    """SavedModel, TFLite float32 and ONNX re-scored on windows against Keras; tflite_int8 is
    reported as not shipped with the reason, not a failure (serving formats of the kind)."""
    from reprotrain.series import export

    rng = np.random.default_rng(1)
    x = (rng.normal(size=(12, 6, 2)) + 50).astype(np.float32)
    y = x[:, -3:, 0] + 1
    m = series_model.build("lstm", 6, 3, 2, series_model.scaling(x, y), units=3)
    m.save(tmp_path / "model.keras")
    report = export.export_and_verify(
        m,
        tmp_path / "model.keras",
        tmp_path / "export",
        x,
        y,
        ["saved_model", "tflite_float32", "onnx", "tflite_int8"],
        max_diff=0.01,
        latency_samples=2,
    )
    rows = report["formats"]
    for name in ("saved_model", "tflite_float32", "onnx"):
        assert rows[name]["shipped"] and rows[name]["max_abs_diff"] < 1e-3, rows[name]
        assert rows[name]["size_bytes"] > 0 and rows[name]["latency_ms"] > 0
    assert not rows["tflite_int8"]["shipped"] and "no fixed range" in rows["tflite_int8"]["reason"]
    assert report["keras"]["mae"] > 0 and report["test_windows"] == 12
    bad = export.verdict(y + 1.0, y, y, 0.01)
    assert not bad["shipped"] and bad["max_abs_diff"] == pytest.approx(1.0)
