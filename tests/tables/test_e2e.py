"""The table kind end to end (issue 24's Done-when), in ONE project built once: churn,
topics8 and trump_tweets slices each through a real ``dvc repro`` (data.source changed
between runs), each registered, served over HTTP by ``mlflow models serve`` and predicted
from a CSV. Between topics8 and trump, the image quick start (tiny generated images) runs in
the same project, so trump's run is the switch back to the table: the gate says "not
comparable" across kinds and inputs, nothing crashes, and neither kind's outputs are touched
by the other's runs. The prepare and baseline stages' own checks (tracked runs, dvc.lock
outputs, a bad column's one-line error) run on this project too."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from reprotrain.tables.schema import Schema
from scripts.project_copy import deep_update, make_project, subprocess_env
from tests.conftest import TINY_PARAMS, free_port, http_server, make_class_tree, run
from tests.tables.conftest import DATASETS, slice_csv

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROWS = 160
#: The table runs' params, merged over the image quick start's (TINY_PARAMS): switching kinds
#: changes data.kind and data.source only. Small, so that each stage costs little more than
#: its process start-up: 1 epoch, few tokens, a short sequence, no system metrics.
TABLE = {
    "data": {"kind": "table", "sha256": None},
    "prepare": {"shard_size": 64},
    "table": {
        "epochs": 1,
        "batch_size": 32,
        "max_tokens": 2000,
        "sequence_length": 32,
        "embedding_dim": 8,
        "hidden": [8],
        "min_accuracy": 0.0,  # the first version becomes the champion the others meet
    },
    "train_head": {"epochs": 1},
    "baseline": {"epochs": 1},
    "evaluate": {"worst_examples": 4},
    "tracking": {"system_metrics": False},
}
SETS = ("churn", "topics8", "trump")
#: Only churn's run converts to TFLite (it ships there: no text); the others SavedModel only
#: (a text model's TFLite is "not shipped, needs Flex": tests/tables/test_model.py).
TFLITE_SET = "churn"


def _set_params(proj: Path, extra: dict[str, Any]) -> None:
    path = proj / "params.yaml"
    params = deep_update(yaml.safe_load(path.read_text()), extra)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _repro(proj: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """What ``make repro`` does: dvc.yaml for the kind in params.yaml, then ``dvc repro``."""
    run([sys.executable, "scripts/write_dvc_yaml.py"], proj, env)
    return run(["dvc", "repro"], proj, env, timeout=1200)


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def project(assets: Path | None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if assets is None:
        pytest.skip("offline assets (REPROTRAIN_ASSETS) not available")
    tmp = tmp_path_factory.mktemp("tables-e2e")
    sources = {
        name: slice_csv(assets / "datasets" / DATASETS[name], tmp / "data" / f"{name}.csv", ROWS)
        for name in SETS
    }
    proj = make_project(
        tmp / "proj",
        deep_update(deep_update(TINY_PARAMS, TABLE), {"data": {"source": str(sources["churn"])}}),
    )
    env = subprocess_env()
    out: dict[str, Any] = {"root": proj, "env": env, "runs": {}}
    for name in SETS:
        if name == SETS[-1]:
            # The image quick start in the same project (tiny generated images, untrained
            # base) between two table runs: the last set's run is the switch back.
            out["table_files"] = _digests(proj, "data/table/prepared", "models/table")
            images = make_class_tree(tmp / "images", {"cats": 12, "dogs": 12})
            _set_params(proj, {"data": {"kind": "images", "source": str(images)}})
            _repro(proj, env)
            out["image_promotion"] = _json(proj / "metrics/promotion.json")
            out["table_files_after_images"] = _digests(proj, "data/table/prepared", "models/table")
            out["image_files"] = _digests(proj, "data/prepared", "models/head.keras")
        formats = ["saved_model", "tflite_float32"] if name == TFLITE_SET else ["saved_model"]
        _set_params(
            proj,
            {
                "data": {"kind": "table", "source": str(sources[name])},
                "export": {"formats": formats},
            },
        )
        out["back"] = _repro(proj, env)  # kept: the last set's, the switch back
        rows = tmp / f"{name}-test-rows.csv"
        frame = _test_frame(proj)
        frame.to_csv(rows, index=False)
        out["runs"][name] = {
            "promotion": _json(proj / "metrics/promotion.json"),
            "evaluate": _json(proj / "metrics/evaluate.json"),
            "export": _json(proj / "metrics/export.json"),
            "card": (proj / "reports/model_card.md").read_text(),
            "predictions": pd.read_csv(proj / "plots/predictions.csv"),
            "rows": rows,
            "model": tmp / f"{name}.keras",
        }
        shutil.copy2(proj / "models/table/model.keras", out["runs"][name]["model"])
    out["stages"] = _stage_outputs(proj)  # the trump run's prepare and baseline
    out["image_files_after_back"] = _digests(proj, "data/prepared", "models/head.keras")
    return out


def _stage_outputs(proj: Path) -> dict[str, Any]:
    """What the prepare and baseline stages left (read while the files are the table's)."""
    from reprotrain import paths

    return {
        "stats": _json(proj / paths.TABLE_PREPARED / "stats.json"),
        "schema": Schema.load(proj / paths.TABLE_PREPARED),
        "last_schema": Schema.load(proj / "data/table/schema.json"),
        "ledger": (proj / paths.TABLE_LEDGER).is_file(),
        "prepare_run": _json(proj / paths.TABLE_PREPARE_RUN)["run_id"],
        "baseline": _json(proj / "metrics/baseline.json"),
        "baseline_run": _json(proj / paths.TABLE_BASELINE_RUN)["run_id"],
        "lock": yaml.safe_load((proj / "dvc.lock").read_text()),
    }


def _test_frame(proj: Path) -> pd.DataFrame:
    from reprotrain.tables import records

    return records.read_frame(proj / "data/table/prepared", "test")


def _digests(root: Path, *names: str) -> dict[str, str]:
    import hashlib

    out = {}
    for name in names:
        base = root / name
        files = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
        for f in files:
            out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _post(url: str, body: Any) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _probs(answers: list[dict], labels: list[str]) -> np.ndarray:
    return np.array([[a["probabilities"][c] for c in labels] for a in answers])


def test_each_set_registered_with_metrics_gain_importance_and_card(project) -> None:
    versions = [project["runs"][n]["promotion"]["version"] for n in SETS]
    assert versions == [1, 2, 4] and project["image_promotion"]["version"] == 3
    first = project["runs"]["churn"]["promotion"]
    assert first["promoted"] and first["alias"] == "champion"  # table.min_accuracy: 0
    for name in SETS[1:]:  # other inputs than the churn champion's
        p = project["runs"][name]["promotion"]
        assert not p["comparable"] and "takes other inputs" in p["reason"], p["reason"]
    for name in SETS:
        r = project["runs"][name]
        ev = r["evaluate"]
        assert 0 <= ev["accuracy"] <= 1 and ev["n_test"] == len(r["predictions"])
        assert ev["baseline_gain"]["verdict"] in ("better", "worse", "no_gain")
        assert set(ev["importance"]) == set(_json_schema_inputs(project, name))
        for section in (
            "Gain over the classical baseline",
            "Permutation importance",
            "Worst test errors",
            "Promotion gate",
            "Data and inputs",
        ):
            assert f"## {section}" in r["card"], section
        saved = r["export"]["formats"]["saved_model"]
        assert saved["shipped"] and saved["agreement"] == 1.0
    tfl = project["runs"][TFLITE_SET]["export"]["formats"]["tflite_float32"]
    assert tfl["shipped"] or tfl["reason"].startswith("not shipped")


def _json_schema_inputs(project, name: str) -> list[str]:
    frame = pd.read_csv(project["runs"][name]["rows"], nrows=1)
    return [c for c in frame.columns if c != "label"]


def test_predict_from_a_csv_gives_the_numbers_of_predictions_csv(
    project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """churn through a real ``python -m reprotrain predict`` process (a registry URI); the
    other two through the same entry point in this process (a registry URI; the copied
    .keras with the project's schema.json as --labels), which spares two TensorFlow starts."""
    from reprotrain.__main__ import main

    monkeypatch.chdir(project["root"])
    for name in SETS:
        r = project["runs"][name]
        schema = str(project["root"] / "data/table/prepared/schema.json")
        model = f"models:/reprotrain-classifier/{r['promotion']['version']}"
        if name == SETS[-1]:
            argv = ["predict", str(r["model"]), str(r["rows"]), "--labels", schema]
        else:
            argv = ["predict", model, str(r["rows"])]
        if name == SETS[0]:
            out = run(
                [sys.executable, "-m", "reprotrain", *argv],
                project["root"],
                project["env"],
                check=False,
            )
            assert out.returncode == 0, out.stderr[-3000:]
            stdout = out.stdout
        else:
            capsys.readouterr()
            assert main(argv) == 0, name
            stdout = capsys.readouterr().out
        answers = json.loads(stdout)
        labels = [
            c.removeprefix("prob_") for c in r["predictions"].columns if c.startswith("prob_")
        ]
        np.testing.assert_allclose(
            _probs(answers, labels), r["predictions"][[f"prob_{c}" for c in labels]], atol=1e-5
        )


def test_the_python_api_predicts_rows_of_a_dataframe_or_a_file(project) -> None:
    """``Project.predict`` in a table project: the project's model by default, a DataFrame
    (its index as ``row``) or a CSV path, the numbers of predictions.csv, a bad row as that
    row's error."""
    from reprotrain.api import Project

    r = project["runs"][SETS[-1]]  # the project's current set (the switch back)
    labels = [c.removeprefix("prob_") for c in r["predictions"].columns if c.startswith("prob_")]
    expected = r["predictions"][[f"prob_{c}" for c in labels]].to_numpy()
    api = Project(project["root"])
    frame = pd.read_csv(r["rows"])
    answers = api.predict(frame)
    assert list(answers.columns[:2]) == ["source", "row"] and set(answers["source"]) == {
        "dataframe"
    }
    assert answers["row"].tolist() == frame.index.tolist() and answers["error"].isna().all()
    np.testing.assert_allclose(_probs(answers.to_dict("records"), labels), expected, atol=1e-5)
    from_file = api.predict(r["rows"], model="models/table/model.keras")
    np.testing.assert_allclose(_probs(from_file.to_dict("records"), labels), expected, atol=1e-5)
    numeric = json.loads((project["root"] / "data/table/prepared/schema.json").read_text())
    column = numeric["numeric"][0]
    bad = frame.head(2).astype({column: object})
    bad.loc[bad.index[0], column] = "lots"
    answers = api.predict(bad)
    assert f"column {column!r}: 'lots' is not a number" in answers["error"].iloc[0]
    assert pd.isna(answers["error"].iloc[1]) and answers["label"].iloc[1] in labels


def test_served_over_http_per_row_errors(project) -> None:
    """All three versions served at once by ``mlflow models serve``: each answers its test
    rows as predictions.csv says; a bad cell is that row's error, the others predicted."""
    # The project's store as the servers' registry too: a registry URI that an earlier
    # in-process test exported (MLflow does) must not send the lookups elsewhere.
    uri = f"sqlite:///{project['root'] / 'mlruns/mlflow.db'}"
    env = dict(project["env"], MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri)
    with ExitStack() as stack:
        urls = {}
        for name in SETS:
            port = free_port()
            version = project["runs"][name]["promotion"]["version"]
            cmd = [
                sys.executable,
                "-m",
                "mlflow",
                "models",
                "serve",
                "-m",
                f"models:/reprotrain-classifier/{version}",
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ]
            urls[name] = f"http://127.0.0.1:{port}"
            stack.enter_context(
                http_server(cmd, project["root"], env, f"{urls[name]}/ping", 300, f"serve {name}")
            )
        for name, url in urls.items():
            r = project["runs"][name]
            rows = pd.read_csv(r["rows"]).head(5)
            records = json.loads(rows.to_json(orient="records"))
            status, answer = _post(url, {"dataframe_records": records})
            assert status == 200, answer
            labels = [
                c.removeprefix("prob_") for c in r["predictions"].columns if c.startswith("prob_")
            ]
            np.testing.assert_allclose(
                _probs(answer["predictions"], labels),
                r["predictions"][[f"prob_{c}" for c in labels]].head(5),
                atol=1e-5,
            )
        # trump_tweets: a non-number in a numeric column, a missing column.
        bad = json.loads(
            pd.read_csv(project["runs"]["trump"]["rows"]).head(3).to_json(orient="records")
        )
        bad[1]["retweet_count"] = "many"
        status, answer = _post(urls["trump"], {"dataframe_records": bad})
        assert status == 200, answer
        good, wrong, good2 = answer["predictions"]
        assert good["error"] is None and good2["error"] is None and good["label"]
        assert wrong["label"] is None and "'many' is not a number" in wrong["error"]
        status, answer = _post(urls["trump"], {"dataframe_records": [{"text": "hello"}]})
        assert status == 200 and "missing column" in answer["predictions"][0]["error"]


def test_switching_kinds_and_back(project) -> None:
    """churn, topics8, the image quick start, then trump: the image run's gate compares
    with the table champion across kinds and says so; back on the table, the trump run (DVC
    reruns the stages whose lock entries the image run's same-named stages replaced) ends
    well and its gate compares with the churn champion only by its inputs."""
    image = project["image_promotion"]
    assert not image["comparable"] and "data.kind table" in image["reason"], image["reason"]
    assert not image["promoted"] and image["alias"] is None
    assert project["table_files_after_images"] == project["table_files"]  # images left them
    assert project["image_files_after_back"] == project["image_files"]  # the table left these
    assert project["back"].returncode == 0
    back = project["runs"][SETS[-1]]["promotion"]
    assert not back["comparable"] and back["champion_version"] == 1
    assert "takes other inputs" in back["reason"]


# The prepare and baseline stages, as tests/tables/test_prepare.py checked them in a project
# of their own (fetch → prepare → baseline, here the trump run's).


def test_the_stages_prepare_fit_the_baseline_and_are_tracked(project) -> None:
    import mlflow

    from reprotrain import paths

    st = project["stages"]
    assert st["schema"].text == ("text",)
    assert st["stats"]["rows"] == ROWS and st["ledger"]
    assert st["last_schema"] == st["schema"]
    client = mlflow.MlflowClient(f"sqlite:///{project['root'] / 'mlruns' / 'mlflow.db'}")
    prep = client.get_run(st["prepare_run"])
    assert prep.data.metrics["train_rows"] == st["stats"]["splits"]["train"]["total"]
    assert prep.data.params["table.sequence_length"] == str(TABLE["table"]["sequence_length"])
    metrics = st["baseline"]
    assert metrics["model"] == "LogisticRegression"
    assert metrics["test_accuracy"] > metrics["test_majority_accuracy"]
    base = client.get_run(st["baseline_run"])
    assert base.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    outs = {o["path"] for o in st["lock"]["stages"]["prepare"]["outs"]}
    assert {str(paths.TABLE_LEDGER), "data/table/schema.json"} <= outs


def test_the_stage_reports_a_bad_column_in_one_line(project) -> None:
    """Last: on the project as the run back to the table (trump) left it."""
    root = project["root"]
    params_file = root / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["data"]["columns"]["numeric"] = ["likes"]
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        proc = run(
            [sys.executable, "stages/table/prepare.py"],
            root,
            project["env"],
            check=False,
            timeout=300,
        )
    finally:
        params_file.write_text(original)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "data.columns.numeric names 'likes'" in proc.stderr and "retweet_count" in proc.stderr
