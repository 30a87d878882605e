"""`python -m reprotrain ui` starts a real MLflow server on 127.0.0.1 against the project
store; its REST API shows one pipeline row per execution with the stage runs under it.
(The screenshot of the same page in headless Chromium: scripts/ui_screenshot.sh.)"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import mlflow
import pytest

from reprotrain import paths, tracking
from reprotrain.commands import ui
from tests.conftest import (
    enter_project,
    free_port,
    http_server,
    make_tracking_project,
    simulate,
    subprocess_env,
)


def api(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        base + path, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture
def store_with_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two executions: prepare → train_head → finetune, then a finetune param change."""
    root = enter_project(make_tracking_project(tmp_path / "proj"), monkeypatch)
    simulate(root, "prepare", sidecar=paths.PREPARE_RUN)
    simulate(root, "train_head", upstream=[paths.PREPARE_RUN], sidecar=paths.HEAD_RUN)
    simulate(root, "finetune", upstream=[paths.PREPARE_RUN, paths.HEAD_RUN])
    text = (root / "params.yaml").read_text().replace("unfreeze_top: 30", "unfreeze_top: 20")
    (root / "params.yaml").write_text(text)
    simulate(root, "finetune", upstream=[paths.PREPARE_RUN, paths.HEAD_RUN])
    mlflow.set_tracking_uri(None)
    return root


def test_server_command_points_at_the_store(tmp_path: Path) -> None:
    uri = tracking.default_uri(tmp_path)
    cmd = ui.server_command(uri, port=5123)
    assert cmd[cmd.index("--backend-store-uri") + 1] == uri
    artifacts = cmd[cmd.index("--default-artifact-root") + 1]
    assert artifacts == (tmp_path / "mlruns" / "artifacts").as_uri()
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"


@pytest.mark.slow
def test_ui_serves_pipeline_rows_and_stage_runs(store_with_runs: Path) -> None:
    root, port = store_with_runs, free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "reprotrain", "ui", "--port", str(port), "--root", str(root)]
    with http_server(cmd, root, subprocess_env(), base + "/health", timeout=90, what="mlflow ui"):
        exp = api(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=reprotrain")
        exp_id = exp["experiment"]["experiment_id"]
        kind = {t["key"]: t["value"] for t in exp["experiment"]["tags"]}["mlflow.experimentKind"]
        assert kind == "custom_model_development"  # the UI opens its model-training view
        parents = api(
            base,
            "/api/2.0/mlflow/runs/search",
            {"experiment_ids": [exp_id], "filter": "tags.`reprotrain.role` = 'pipeline'"},
        )["runs"]
        assert len(parents) == 2  # one row per execution
        by_id = {p["info"]["run_id"]: p for p in parents}
        names = sorted(p["info"]["run_name"] for p in parents)
        commit = parents[0]["data"]["tags"]
        commit = next(t["value"] for t in commit if t["key"] == "reprotrain.git.commit")[:7]
        assert names == [commit, f"{commit} finetune.unfreeze_top=20"]  # what differs
        for parent in parents:
            assert parent["info"]["status"] == "FINISHED"
            params = {p["key"]: p["value"] for p in parent["data"]["params"]}
            assert {"finetune.unfreeze_top", "train_head.epochs", "seed"} <= set(params)
            metrics = {m["key"] for m in parent["data"]["metrics"]}
            assert "finetune.val_accuracy" in metrics
        stages = {}
        for run_id in by_id:
            children = api(
                base,
                "/api/2.0/mlflow/runs/search",
                {"experiment_ids": [exp_id], "filter": f"tags.mlflow.parentRunId = '{run_id}'"},
            )["runs"]
            stages[run_id] = sorted(
                t["value"]
                for c in children
                for t in c["data"]["tags"]
                if t["key"] == "reprotrain.stage"
            )
        assert sorted(stages.values()) == [["finetune"], ["finetune", "prepare", "train_head"]]


def test_ui_refuses_a_remote_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.raises(tracking.TrackingError, match="server already"):
        ui.main(["--root", str(tmp_path), "--port", "5999"])
