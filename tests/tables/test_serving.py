"""The served table model in process: logged with its packaged code, loaded through MLflow
(real SQLite store), answering a DataFrame, records and a Mapping row by row; the packaged
modules are complete. (Over real HTTP: tests/tables/test_e2e.py serves the pipeline's
registered versions with ``mlflow models serve``.)"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from reprotrain.config import load_params
from reprotrain.tables import features, inference
from reprotrain.tables import model as tm

LABELS = ["android", "iphone", "web"]
SPEC = features.InputSpec(
    text=("text",), numeric=("retweet_count", "favorite_count"), categorical=("hour",)
)

pytestmark = pytest.mark.slow  # real training / MLflow logging: tens of seconds


@pytest.fixture(scope="module")
def logged(assets, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import keras
    import mlflow

    from reprotrain.tables.packaging import log_table_model

    if assets is None:
        pytest.skip("offline assets (REPROTRAIN_ASSETS) not available")
    tmp = tmp_path_factory.mktemp("table-pyfunc")
    frame = pd.read_csv(assets / "datasets/trump_tweets/trump_tweets.csv", nrows=150)
    inputs = features.model_inputs(frame, SPEC)
    cfg = dataclasses.replace(
        load_params(Path("params.yaml")).table, max_tokens=500, sequence_length=16, hidden=(8,)
    )
    keras.utils.set_random_seed(0)
    model = tm.build(SPEC, 3, inputs, cfg, "functional")
    keras_path = tmp / "model.keras"
    model.save(keras_path)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.create_experiment("t", artifact_location=(tmp / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp) as active:
            model_uri = log_table_model(active.info.run_id, keras_path, LABELS, SPEC, max_rows=50)
        path, modules = list(sys.path), {k: v for k, v in sys.modules.items() if "reprotrain" in k}
        try:  # loading puts the packaged copy first: restore the installed package after
            served = mlflow.pyfunc.load_model(model_uri)
        finally:
            sys.path[:] = path
            sys.modules.update(modules)
    finally:
        mlflow.set_tracking_uri("")
    expected = inference.predict_probs(model, inputs, SPEC)
    return {"served": served, "frame": frame, "expected": expected, "keras": keras_path}


def _probs(rows: list[dict]) -> np.ndarray:
    return np.array([[r["probabilities"][c] for c in LABELS] for r in rows])


def test_dataframe_rows_answer_as_the_keras_model(logged) -> None:
    frame = logged["frame"].head(20)  # the label column is ignored
    rows = logged["served"].predict(frame)
    assert all(r["error"] is None for r in rows)
    np.testing.assert_allclose(_probs(rows), logged["expected"][:20], atol=1e-6)
    assert rows[0]["label"] == LABELS[int(np.argmax(logged["expected"][0]))]


def test_each_bad_row_gets_its_own_error(logged) -> None:
    frame = logged["frame"].head(4).copy().astype(object)
    frame.loc[1, "retweet_count"] = "lots"
    frame.loc[2, "text"] = ["a", "list"]
    frame.loc[3, "favorite_count"] = None  # missing: imputed, not an error
    rows = logged["served"].predict(frame)
    assert rows[0]["error"] is None and rows[3]["error"] is None and rows[3]["label"]
    assert "'lots' is not a number" in rows[1]["error"] and rows[1]["label"] is None
    assert "list is not text" in rows[2]["error"]
    np.testing.assert_allclose(_probs([rows[0]]), logged["expected"][:1], atol=1e-6)
    missing = logged["served"].predict(frame.drop(columns="hour"))
    assert all("missing column 'hour'" in r["error"] for r in missing)


def test_records_and_mappings(logged) -> None:
    python = logged["served"].unwrap_python_model()
    record = logged["frame"].iloc[0].to_dict()
    partial = {k: v for k, v in record.items() if k != "text"}
    rows = python.predict(None, [record, partial, "not a record"])
    assert rows[0]["error"] is None
    assert "missing column 'text'" in rows[1]["error"] and "not a str" in rows[2]["error"]
    (one,) = python.predict(None, {k: [v] for k, v in record.items()})
    assert one["label"] == rows[0]["label"]
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="limit is 50"):
        python.predict(None, pd.concat([logged["frame"]] * 1).head(51))


def test_bad_max_rows_is_refused_at_load(logged, tmp_path) -> None:
    from reprotrain.tables.serving import TableClassifier

    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    context = SimpleNamespace(
        artifacts={"model": str(logged["keras"]), "labels": str(tmp_path / "labels.json")},
        model_config={"inputs": SPEC.to_dict(), "max_rows": 0},
    )
    with pytest.raises(ValueError, match=r"max_rows=0: expected an integer >= 1"):
        TableClassifier().load_context(context)


def test_served_modules_hold_every_module_the_served_model_imports() -> None:
    from reprotrain.tables.packaging import SERVED_MODULES
    from scripts.write_dvc_yaml import REPO, stage_code

    package = REPO / "src" / "reprotrain"
    needed = {"__init__.py", "tables/__init__.py"}
    needed |= {
        Path(f).relative_to("src/reprotrain").as_posix()
        for f in stage_code(package / "tables/serving.py")
    }
    assert needed <= set(SERVED_MODULES), needed - set(SERVED_MODULES)
