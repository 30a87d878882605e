"""``python -m reprotrain predict MODEL history.csv`` for a series model: CSV or JSON out,
exit 0 / 1 (bad history) / 2 (usage, model), dispatched from the image command by the
model's name."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reprotrain.commands import predict as image_predict
from reprotrain.series import model as series_model
from reprotrain.series import predict, serving
from tests.conftest import run


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("series-predict")
    x = np.random.default_rng(0).normal(size=(20, 5, 1)).astype(np.float32) + 100
    m = series_model.build("gru", 5, 2, 1, series_model.scaling(x, x[:, -2:, 0]), units=2)
    path = tmp / "model.keras"
    m.save(path)
    serving.ForecastConfig(
        window=5,
        horizon=2,
        frequency="D",
        time="day",
        target="load",
        intervals={"95": {"level": 0.95, "width": [0.5, 1.0]}},
    ).write(serving.config_path(path))
    return path


def _csv(tmp: Path, n: int = 7) -> Path:
    days = pd.date_range("2024-02-27", periods=n, freq="D")
    path = tmp / "history.csv"
    pd.DataFrame({"day": days, "load": np.linspace(99, 101, n)}).to_csv(path, index=False)
    return path


def test_csv_and_json_out(model_file: Path, tmp_path: Path, capsys) -> None:
    history = _csv(tmp_path)
    assert image_predict.model_kind(model_file) == "series"
    assert image_predict.main([str(model_file), str(history)]) == 0
    out = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    assert list(out.columns) == ["step", "time", "forecast", "lower_95", "upper_95"]
    assert out["time"].tolist() == ["2024-03-05T00:00:00", "2024-03-06T00:00:00"]  # leap day
    target = tmp_path / "out.json"
    assert predict.main([str(model_file), str(history), "--format", "json", "-o", str(target)]) == 0
    doc = json.loads(target.read_text())
    assert doc["model"] == "series_gru" and len(doc["forecast"]) == 2
    np.testing.assert_allclose([r["forecast"] for r in doc["forecast"]], out["forecast"], rtol=1e-6)


def test_exit_codes(model_file: Path, tmp_path: Path, capsys) -> None:
    short = _csv(tmp_path, 3)
    assert predict.main([str(model_file), str(short)]) == 1
    assert "has 3 rows; the model needs the last 5" in capsys.readouterr().err
    assert predict.main([str(model_file), str(tmp_path / "nope.csv")]) == 1
    assert "history file not found" in capsys.readouterr().err
    alone = tmp_path / "alone.keras"
    alone.write_bytes(model_file.read_bytes())
    assert predict.main([str(alone), str(_csv(tmp_path))]) == 2
    assert "no forecast config" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(model_file)])
    assert exit_info.value.code == 2


def test_a_semicolon_history_with_decimal_commas_is_read_as_prepare_reads_it(
    model_file: Path, tmp_path: Path, capsys
) -> None:
    """A history saved as the training source often is (``;``, ``1,5``) gives the forecast
    of the same values written with dots; a row that cannot be split names its line."""
    history = _csv(tmp_path)
    assert predict.main([str(model_file), str(history)]) == 0
    expected = capsys.readouterr().out
    frame = pd.read_csv(history)
    european = tmp_path / "history_eu.csv"
    european.write_text(frame.to_csv(sep=";", index=False, decimal=","))
    assert "," in european.read_text().splitlines()[1]  # the values are written 99,0…
    assert predict.main([str(model_file), str(european)]) == 0
    assert capsys.readouterr().out == expected
    ragged = tmp_path / "ragged.csv"
    ragged.write_text(european.read_text() + "2024-03-05;1;2\n")
    assert predict.main([str(model_file), str(ragged)]) == 1
    assert re.search(r"ragged\.csv:9: malformed row.*fix the row", capsys.readouterr().err)


@pytest.mark.slow
def test_as_a_process_csv_json_and_a_short_history(model_file: Path, tmp_path: Path) -> None:
    """``python -m reprotrain predict`` as a user runs it: the module entry point, the
    dispatch by the model's name, the output written and the exit code, in a real process
    (the in-process tests above cannot see a traceback printed or an exit code lost)."""
    history = _csv(tmp_path)
    cmd = [sys.executable, "-m", "reprotrain", "predict", str(model_file)]
    as_csv = run([*cmd, str(history)], tmp_path)
    out = pd.read_csv(io.StringIO(as_csv.stdout))
    assert list(out.columns) == ["step", "time", "forecast", "lower_95", "upper_95"]
    assert out["step"].tolist() == [1, 2]
    assert out["time"].tolist() == ["2024-03-05T00:00:00", "2024-03-06T00:00:00"]
    assert (out["lower_95"] <= out["forecast"]).all() and (out["forecast"] <= out["upper_95"]).all()
    target = tmp_path / "out.json"
    as_json = run([*cmd, str(history), "--format", "json", "-o", str(target)], tmp_path)
    assert as_json.stdout == ""
    doc = json.loads(target.read_text())
    assert doc["model"] == "series_gru" and [r["step"] for r in doc["forecast"]] == [1, 2]
    np.testing.assert_allclose([r["forecast"] for r in doc["forecast"]], out["forecast"], rtol=1e-6)

    short = run([*cmd, str(_csv(tmp_path, 3))], tmp_path, check=False)
    assert short.returncode == 1 and short.stdout == ""
    assert "Traceback" not in short.stderr
    # besides INFO log lines (the timing summary), the reason in one line
    lines = [x for x in short.stderr.splitlines() if not re.match(r"[\d:]+ INFO ", x)]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "has 3 rows; the model needs the last 5" in lines[0]
