"""The series kind end to end (issue 25's Done-when), in ONE project built once: a slice of
co2 with a covariate through a real ``dvc repro`` (fetch → prepare → train → export →
evaluate), registered and promoted, served over HTTP by ``mlflow models serve`` and
predicted from a CSV; the prepare stage's MLflow run, sidecar and cuts.json in dvc.lock,
and its one-line error on bad data; then a second run (other units: train-only, so prepare
stays cached) against the first as champion, which the paired gate decides.

Small on purpose (each stage is a process that pays for importing TensorFlow and MLflow,
so the slice, the epochs and the units are what still proves each point): 320 weeks give
45 test windows, 2 epochs of 8 units beat the seasonal naive by far (MASE about 0.3)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from reprotrain import paths
from reprotrain.series.windows import load_meta
from scripts.project_copy import deep_update, make_project, subprocess_env
from tests.conftest import free_port, http_server, project_client, run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAME = "co2-forecaster"
WINDOW, HORIZON, SEASON = 26, 4, 52
SERIES = {
    "data": {
        "kind": "series",
        "sha256": None,
        "columns": {"time": "date", "target": "co2", "covariates": ["week"]},
    },
    "series": {
        "window": WINDOW,
        "horizon": HORIZON,
        "season": SEASON,  # longer than the window: the seasonal naive reads the series
        "units": 8,
        "epochs": 2,
        "learning_rate": 0.01,
        "batch_size": 32,
    },
    "export": {"formats": ["saved_model", "tflite_float32"], "latency_samples": 2},
    "tracking": {"registered_model": NAME, "system_metrics": False},
}


def co2_slice(assets: Path, dest: Path, rows: int = 320) -> Path:
    """The last ``rows`` weeks of co2, with a covariate known in advance (the week of the
    year, a seasonal clock), as a user's CSV would have it."""
    frame = pd.read_csv(assets / "datasets" / "co2" / "co2_weekly.csv").tail(rows)
    frame["week"] = pd.to_datetime(frame["date"]).dt.isocalendar().week.astype(float)
    dest.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(dest, index=False)
    return dest


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _set_params(proj: Path, extra: dict[str, Any]) -> None:
    path = proj / "params.yaml"
    path.write_text(yaml.safe_dump(deep_update(yaml.safe_load(path.read_text()), extra)))


@pytest.fixture(scope="module")
def project(assets: Path | None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if assets is None:
        pytest.skip("offline assets (REPROTRAIN_ASSETS) not available")
    tmp = tmp_path_factory.mktemp("series-e2e")
    source = co2_slice(assets, tmp / "data" / "co2.csv")
    proj = make_project(tmp / "proj", deep_update(SERIES, {"data": {"source": str(source)}}))
    env = subprocess_env()
    first = run(["dvc", "repro"], proj, env, timeout=1200)
    out: dict[str, Any] = {"root": proj, "env": env, "source": source, "first": first}
    out["evaluate"] = _json(proj / "metrics" / "evaluate.json")
    out["promotion"] = _json(proj / "metrics" / "promotion.json")
    out["export"] = _json(proj / "metrics" / "export.json")
    out["card"] = (proj / "reports" / "model_card.md").read_text()
    return out


@pytest.fixture(scope="module")
def second(project: dict[str, Any]) -> dict[str, Any]:
    """Another model (other units: a train-only param, prepare is not rerun) on the same
    windows, against v1 as champion."""
    proj = project["root"]
    _set_params(proj, {"series": {"units": 4}})
    proc = run(["dvc", "repro"], proj, project["env"], timeout=1200)
    return {"proc": proc, "promotion": _json(proj / "metrics" / "promotion.json")}


def test_the_prepare_stage_is_tracked_and_its_cuts_locked(project: dict[str, Any]) -> None:
    """prepare's MLflow run (from its sidecar), and cuts.json an output in dvc.lock."""
    proj = project["root"]
    meta = load_meta(proj / paths.SERIES_PREPARED)
    assert meta.channels == ("co2", "week")
    assert (proj / paths.SERIES_CUTS).is_file()
    sidecar = _json(proj / paths.SERIES_PREPARE_RUN)
    run_ = project_client(proj).get_run(sidecar["run_id"])
    assert run_.data.metrics["train_windows"] == meta.windows["train"]
    assert run_.data.params["series.window"] == str(WINDOW)
    lock = yaml.safe_load((proj / "dvc.lock").read_text())
    outs = {o["path"] for o in lock["stages"]["prepare"]["outs"]}
    assert str(paths.SERIES_CUTS) in outs


def test_metrics_baselines_and_intervals(project: dict[str, Any]) -> None:
    r = project["evaluate"]
    for key in ("mae", "rmse", "mase", "smape"):
        assert np.isfinite(r[key]) and len(r["by_step"][key]) == HORIZON
        for base in ("naive", "seasonal_naive"):
            assert len(r["baselines"][base]["by_step"][key]) == HORIZON
    assert r["mase"] == pytest.approx(r["mae"] / r["mase_scale"])
    assert r["mase_season"] == SEASON and r["n_windows"] > 20
    for key, level in (("80", 0.8), ("95", 0.95)):
        spec = r["intervals"][key]
        assert spec["nominal"] == level and len(spec["width"]) == HORIZON
        assert 0.0 <= spec["coverage"] <= 1.0 and len(spec["coverage_by_step"]) == HORIZON
    assert r["intervals"]["95"]["width"][0] >= r["intervals"]["80"]["width"][0]
    plots = project["root"] / "plots"
    forecast = pd.read_csv(plots / "forecast.csv")
    assert len(forecast) == r["n_windows"] * HORIZON
    assert {"actual", "forecast", "lower_80", "upper_95", "seasonal_naive"} <= set(forecast)
    for png in ("forecast.png", "error_by_step.png", "residuals.png"):
        assert (plots / "series" / png).stat().st_size > 1000
    card = project["card"]
    assert "seasonal naive" in card and "95%" in card and "model_card/forecast.png" in card


def test_first_run_is_registered_and_promoted(project: dict[str, Any]) -> None:
    p = project["promotion"]
    assert p["registered_model"] == NAME and p["version"] == 1
    assert p["comparable"] and p["champion_version"] is None
    assert p["mase"] == pytest.approx(project["evaluate"]["mase"])
    if p["mase"] < 1:
        assert p["promoted"] and p["alias"] == "champion", p["reason"]
    else:
        assert not p["promoted"] and "does not beat the seasonal-naive" in p["reason"]


def test_exports_are_rescored(project: dict[str, Any]) -> None:
    formats = project["export"]["formats"]
    assert set(formats) == {"saved_model", "tflite_float32"}
    for row in formats.values():
        assert row["shipped"], row["reason"]
        assert row["max_abs_diff"] < 1e-3 and row["mae_ratio"] == pytest.approx(1.0, abs=1e-3)
        assert row["size_bytes"] > 0 and row["latency_ms"] > 0


def _history(project: dict[str, Any], tmp: Path) -> tuple[Path, pd.DataFrame]:
    frame = pd.read_csv(project["source"]).tail(WINDOW + 5)
    path = tmp / "history.csv"
    frame.to_csv(path, index=False)
    return path, frame


def test_predict_from_csv(
    project: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The local model and the registered one (resolved from the project's registry), both
    through the image command's dispatch, in process (a ``python -m reprotrain predict``
    process would only add TensorFlow's import; the real server is the process here)."""
    from reprotrain.commands import predict

    proj = project["root"]
    history, frame = _history(project, tmp_path)
    local = str(proj / "models" / "series" / "model.keras")
    assert predict.main([local, str(history), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["forecast"]
    assert [r["step"] for r in rows] == list(range(1, HORIZON + 1))
    last = pd.Timestamp(frame["date"].iloc[-1])
    assert pd.Timestamp(rows[0]["time"]) == last + pd.Timedelta(weeks=1)
    assert all(r["lower_95"] <= r["lower_80"] <= r["forecast"] <= r["upper_80"] for r in rows)
    frame.head(WINDOW - 1).to_csv(tmp_path / "short.csv", index=False)
    assert predict.main([local, str(tmp_path / "short.csv")]) == 1
    assert f"needs the last {WINDOW}" in capsys.readouterr().err
    monkeypatch.chdir(proj)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert predict.main([f"models:/{NAME}/1", str(history)]) == 0
    served = pd.read_csv(io.StringIO(capsys.readouterr().out))
    np.testing.assert_allclose(served["forecast"], [r["forecast"] for r in rows], rtol=1e-5)


def test_the_python_api_forecasts_a_dataframe_or_a_file(
    project: dict[str, Any], tmp_path: Path
) -> None:
    """``Project.predict`` in a series project: the project's forecaster by default, the
    history as a DataFrame or a file path, the rows the command writes."""
    from reprotrain.api import Project
    from reprotrain.series.serving import HistoryError

    history, frame = _history(project, tmp_path)
    api = Project(project["root"])
    rows = api.predict(frame)
    assert rows["step"].tolist() == list(range(1, HORIZON + 1))
    assert {"time", "forecast", "lower_95", "upper_95"} <= set(rows.columns)
    pd.testing.assert_frame_equal(api.predict(history), rows)
    with pytest.raises(HistoryError, match=f"needs the last {WINDOW}"):
        api.predict(frame.head(WINDOW - 1))


def _post(url: str, frame: pd.DataFrame) -> tuple[int, Any]:
    body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))})
    req = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_served_over_http(project: dict[str, Any], tmp_path: Path) -> None:
    proj = project["root"]
    _, frame = _history(project, tmp_path)
    port = free_port()
    from reprotrain import tracking

    uri = tracking.default_uri(proj)  # the store and the registry: nothing inherited
    env = {**project["env"], "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}/1"]
    cmd += ["--env-manager", "local", "-p", str(port), "-h", "127.0.0.1", "--workers", "1"]
    base = f"http://127.0.0.1:{port}"
    with http_server(cmd, proj, env, base + "/ping", timeout=180, what="forecast server"):
        status, answer = _post(base + "/invocations", frame)
        assert status == 200, answer
        rows = answer["predictions"]
        assert len(rows) == HORIZON and {"time", "forecast", "lower_80", "upper_95"} <= set(rows[0])
        gap = frame.drop(frame.index[-3])
        status, answer = _post(base + "/invocations", gap)
        assert status == 400 and "not consecutive" in answer["message"]
        nan = frame.copy()
        nan.loc[nan.index[-2], "co2"] = None
        status, answer = _post(base + "/invocations", nan)
        assert status == 400 and "missing or not a number" in answer["message"]
        status, answer = _post(base + "/invocations", frame.tail(3))
        assert status == 400 and "needs the last" in answer["message"]


def test_second_run_meets_the_champion_in_the_paired_gate(
    project: dict[str, Any], second: dict[str, Any]
) -> None:
    out = second["proc"].stdout + second["proc"].stderr
    assert "Stage 'prepare' didn't change, skipping" in out  # a train-only param
    for stage in ("train", "export", "evaluate"):
        assert f"Running stage '{stage}'" in out
    p = second["promotion"]
    first = project["promotion"]
    assert p["version"] == 2 and p["comparable"]
    if not first["promoted"]:
        pytest.skip(f"v1 was not promoted ({first['reason']}): no champion to meet")
    assert p["champion_version"] == 1
    test = p["gate"]["paired_test"]
    assert test["test"] == "diebold_mariano_hln" and test["n"] == project["evaluate"]["n_windows"]
    assert p["champion_mase"] is not None and 0 <= test["p_value"] <= 1
    if p["mase"] >= 1:
        assert not p["promoted"]
    else:
        assert ("champion v1" in p["reason"]) and p["promoted"] == (p["alias"] == "champion")


def test_a_champion_with_another_horizon_is_not_comparable(
    project: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real champion in the project's SQLite registry that forecasts another horizon (the
    current champion's model, registered again with the horizon it would have under
    ``series.horizon: 8``: what evaluate reads is the version's tags), then the real evaluate
    stage script: "not comparable", naming that version, registered without an alias, and
    the registry's aliases as they were. The alias is given back afterwards."""
    from reprotrain import tracking
    from reprotrain.tracking.tags import VTAG_INPUTS, VTAG_KIND

    proj = project["root"]
    # create_model_version resolves the models:/m-... source through the default client
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.default_uri(proj))
    client = project_client(proj)
    previous = dict(client.get_registered_model(NAME).aliases)
    template = max(client.search_model_versions(f"name='{NAME}'"), key=lambda v: int(v.version))
    inputs = {**json.loads(template.tags[VTAG_INPUTS]), "horizon": 2 * HORIZON}
    other = client.create_model_version(
        NAME,
        template.source,
        run_id=template.run_id,
        tags={VTAG_KIND: "series", VTAG_INPUTS: json.dumps(inputs, sort_keys=True)},
    )
    client.set_registered_model_alias(NAME, "champion", other.version)
    before = dict(client.get_registered_model(NAME).aliases)
    try:
        proc = run([sys.executable, "stages/series/evaluate.py"], proj, project["env"])
        assert "Traceback" not in proc.stderr
        p = _json(proj / "metrics" / "promotion.json")
        assert p["comparable"] is False and p["promoted"] is False and p["alias"] is None
        assert p["champion_version"] == int(other.version)
        assert p["reason"].startswith(f"not comparable: champion v{other.version} takes other")
        assert f'"horizon": {2 * HORIZON}' in p["reason"]
        assert p["version"] == int(other.version) + 1
        assert dict(client.get_registered_model(NAME).aliases) == before
        assert client.get_model_version(NAME, str(p["version"])).aliases == []
    finally:
        for alias, version in previous.items():
            client.set_registered_model_alias(NAME, alias, version)


def test_nothing_crashed_and_stages_ran(project: dict[str, Any]) -> None:
    out = project["first"].stdout + project["first"].stderr
    for stage in ("prepare", "train", "export", "evaluate"):
        assert f"Running stage '{stage}'" in out
    assert "Traceback" not in out
    assert isinstance(project["first"], subprocess.CompletedProcess)


def test_the_prepare_stage_reports_bad_data_in_one_line(project: dict[str, Any]) -> None:
    """Last in the module: it edits params.yaml (restored) and leaves a failed run."""
    proj = project["root"]
    params_file = proj / "params.yaml"
    original = params_file.read_text()
    _set_params(proj, {"series": {"window": 400}})
    try:
        proc = run(["python", "stages/series/prepare.py"], proj, project["env"], check=False)
    finally:
        params_file.write_text(original)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"window 400 + horizon {HORIZON} needs at least {400 + HORIZON}" in proc.stderr
    assert load_meta(proj / paths.SERIES_PREPARED).window == WINDOW  # the old folder stays
    assert pd.read_csv(proj / paths.SERIES_PREPARED / "quarantine.csv").empty
