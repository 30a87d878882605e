"""`python -m reprotrain ui` starts a real MLflow server on 127.0.0.1 against the project
store; its REST API shows one pipeline row per execution with the stage runs under it, and
only to requests whose Host header is a loopback name with the port (DNS rebinding).
(The screenshot of the same page in headless Chromium: scripts/ui_screenshot.sh.)"""

from __future__ import annotations

import json
import sys
import urllib.error
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


def status(url: str, host: str) -> int:
    """The HTTP status of a GET of ``url`` sent with the ``Host`` header ``host`` (what a
    browser sends for a DNS-rebinding page: its own name, resolved to this machine)."""
    req = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


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
    hosts = cmd[cmd.index("--allowed-hosts") + 1].split(",")
    assert hosts == ["localhost:5123", "127.0.0.1:5123", "[::1]:5123"]
    shared = ui.server_command(uri, "0.0.0.0", 5123, extra_hosts=["box.lan"])
    assert shared[shared.index("--allowed-hosts") + 1].endswith(",box.lan:5123")


def test_binding_every_interface_warns() -> None:
    assert ui.exposure_warning("127.0.0.1", 5000) is None
    assert ui.exposure_warning("localhost", 5000) is None
    warning = ui.exposure_warning("0.0.0.0", 5000)
    assert warning is not None and "WITHOUT authentication" in warning
    assert "--app-name basic-auth" in warning and "\n" not in warning
    assert "WITHOUT authentication" in (ui.exposure_warning("192.168.1.7", 5000) or "")


@pytest.mark.slow
def test_ui_serves_pipeline_rows_and_stage_runs(store_with_runs: Path) -> None:
    root, port = store_with_runs, free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "reprotrain", "ui", "--port", str(port), "--root", str(root)]
    with http_server(cmd, root, subprocess_env(), base + "/health", timeout=90, what="mlflow ui"):
        # DNS rebinding: MLflow's default check accepts any private address; only the
        # loopback names with the port are let through.
        search = base + "/api/2.0/mlflow/experiments/search?max_results=1"
        assert status(search, "10.1.2.3:5000") == 403
        assert status(search, f"192.168.0.9:{port}") == 403
        assert status(search, f"rebind.attacker.example:{port}") == 403
        assert status(search, f"127.0.0.1:{port}") == 200
        assert status(search, f"localhost:{port}") == 200
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
