"""``reprotrain.tables.predict.main`` (what ``python -m reprotrain predict`` hands a table
model to): rows from CSV/Parquet answered as the served model answers them, --text, the
exit codes, labels and inputs from the project's schema.json. In process, real Keras."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reprotrain.config import load_params
from reprotrain.tables import features, inference
from reprotrain.tables import model as tm
from reprotrain.tables.predict import main
from reprotrain.tables.schema import Schema

LABELS = ("android", "iphone", "web")

pytestmark = pytest.mark.slow  # real training / MLflow logging: tens of seconds


@pytest.fixture(scope="module")
def trained(assets, tmp_path_factory: pytest.TempPathFactory):
    if assets is None:
        pytest.skip("offline assets (REPROTRAIN_ASSETS) not available")
    root = tmp_path_factory.mktemp("predict")
    frame = pd.read_csv(assets / "datasets/trump_tweets/trump_tweets.csv", nrows=120)
    cfg = dataclasses.replace(
        load_params(Path("params.yaml")).table, max_tokens=500, sequence_length=16, hidden=(8,)
    )
    out = {"root": root, "frame": frame}
    for name, spec in (
        ("mixed", features.InputSpec(text=("text",), numeric=("retweet_count", "hour"))),
        ("text", features.InputSpec(text=("text",))),
    ):
        inputs = features.model_inputs(frame, spec)
        model = tm.build(spec, 3, inputs, cfg, "functional")
        model.save(root / f"{name}.keras")
        schema = Schema("label", LABELS, text=spec.text, numeric=spec.numeric)
        (root / name / "data/table/prepared").mkdir(parents=True)
        schema.save(root / name / "data/table/prepared/schema.json")
        out[name] = (model, spec, inputs)
    return out


def test_rows_from_csv_and_parquet_as_the_model_answers(trained, monkeypatch, capsys):
    root = trained["root"]
    model, spec, inputs = trained["mixed"]
    trained["frame"].head(6).to_csv(root / "rows.csv", index=False)
    trained["frame"].iloc[6:9].to_parquet(root / "rows.parquet")
    monkeypatch.chdir(root / "mixed")
    assert (
        main([str(root / "mixed.keras"), str(root / "rows.csv"), str(root / "rows.parquet")]) == 0
    )
    answers = json.loads(capsys.readouterr().out)
    assert [a["row"] for a in answers] == [2, 3, 4, 5, 6, 7, 2, 3, 4]
    probs = np.array([[a["probabilities"][c] for c in LABELS] for a in answers])
    np.testing.assert_allclose(probs, inference.predict_probs(model, inputs, spec)[:9], atol=1e-6)


def test_a_bad_row_is_reported_and_the_rest_predicted(trained, monkeypatch, capsys):
    root = trained["root"]
    rows = trained["frame"].head(3).astype(object)
    rows.loc[1, "hour"] = "noon"
    rows.to_csv(root / "bad.csv", index=False)
    monkeypatch.chdir(root / "mixed")
    assert main([str(root / "mixed.keras"), str(root / "bad.csv"), "--format", "csv"]) == 1
    out = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    assert out["error"].isna().tolist() == [True, False, True]
    assert "'noon' is not a number" in out["error"][1] and out["label"].notna()[0]


def test_text_and_usage_errors(trained, monkeypatch, capsys):
    root = trained["root"]
    monkeypatch.chdir(root / "text")
    assert main([str(root / "text.keras"), "--text", "Crooked media!", "--text", "Thank you"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [a["source"] for a in answers] == ["--text", "--text"] and answers[0]["label"] in LABELS
    monkeypatch.chdir(root / "mixed")
    assert main([str(root / "mixed.keras"), "--text", "hi"]) == 2  # two more columns needed
    assert main([str(root / "missing.keras"), str(root / "rows.csv")]) == 2
    monkeypatch.chdir(root)  # no schema.json here, and no --labels
    assert main([str(root / "mixed.keras"), str(root / "rows.csv")]) == 2
    assert (
        main(
            [
                str(root / "mixed.keras"),
                str(root / "rows.csv"),
                "--labels",
                str(root / "mixed/data/table/prepared/schema.json"),
            ]
        )
        == 0
    )


def test_semicolon_file_with_decimal_commas(trained, monkeypatch, capsys):
    """A spreadsheet's export in a comma-decimal locale (``;``, ``12,5``): split and read as
    prepare reads it, so each row is predicted as the same row with ``12.5``."""
    root = trained["root"]
    model, spec, _ = trained["mixed"]
    rows = trained["frame"].head(5).copy()
    rows["hour"] = rows["hour"] + 0.5
    rows.to_csv(root / "semi.csv", index=False, sep=";", decimal=",")
    assert ",5;web" in (root / "semi.csv").read_text()
    monkeypatch.chdir(root / "mixed")
    assert main([str(root / "mixed.keras"), str(root / "semi.csv")]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [a.get("error") for a in answers] == [None] * 5
    probs = np.array([[a["probabilities"][c] for c in LABELS] for a in answers])
    expected = inference.predict_probs(model, features.model_inputs(rows, spec), spec)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
