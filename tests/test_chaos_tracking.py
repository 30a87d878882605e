"""Chaos for tracking: the MLflow server stops while `train_head` trains (real `mlflow server`,
real `dvc repro`, real TensorFlow). The stage must end with one clear error line, and the
rerun after the server is back must resume from the per-epoch backup and finish; the run the
dead stage left RUNNING is then marked KILLED."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import mlflow
import pytest

from reprotrain.commands import ui
from tests.conftest import (
    TINY_PARAMS,
    deep_update,
    free_port,
    http_server,
    make_class_tree,
    make_project,
    run,
    subprocess_env,
)

HISTORY = Path(".reprotrain/checkpoints/train_head/history.json")


def _epochs_recorded(proj: Path) -> int:
    try:
        return len(json.loads((proj / HISTORY).read_text()))
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
def test_server_stops_mid_training_then_rerun_resumes(tmp_path: Path) -> None:
    data = make_class_tree(tmp_path / "images", {"cats": 16, "dogs": 16})
    params = deep_update(
        TINY_PARAMS,
        {
            "data": {"source": str(data), "sha256": None},
            # Enough epochs that the server is down before training ends; no early stop.
            "train_head": {"epochs": 25, "feature_cache": "off", "early_stopping_patience": 100,
                           "reduce_lr_patience": 100},
        },
    )  # fmt: skip
    proj = make_project(tmp_path / "proj", params)
    port = free_port()
    server_uri = f"http://127.0.0.1:{port}"
    backend = f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}"
    (tmp_path / "server").mkdir()
    cmd = ui.server_command(backend, port=port)
    env = subprocess_env(
        MLFLOW_TRACKING_URI=server_uri,
        # MLflow retries a failing request for minutes by default; keep the test short.
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
        MLFLOW_HTTP_REQUEST_TIMEOUT="10",
    )
    health = server_uri + "/health"

    with http_server(cmd, tmp_path, ui.server_env(), health, timeout=180, what="mlflow server"):
        repro = subprocess.Popen(
            ["dvc", "repro", "train_head"], cwd=proj, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 600
        while _epochs_recorded(proj) < 1:
            if repro.poll() is not None:
                pytest.fail(f"dvc repro ended before an epoch:\n{repro.stdout.read()[-6000:]}")
            assert time.monotonic() < deadline, "no epoch recorded in 10 minutes"
            time.sleep(0.2)
    # The server is stopped (http_server's exit) while the stage trains.
    try:
        out, _ = repro.communicate(timeout=600)
    finally:
        if repro.poll() is None:
            repro.kill()
    assert repro.returncode != 0, out[-6000:]
    assert _epochs_recorded(proj) < 25, "training ended before the server stopped"
    assert f"MLflow tracking server {server_uri} failed while logging train_head metrics" in out
    assert "restart the server and rerun" in out
    assert "Traceback" not in out, out[-6000:]

    with http_server(cmd, tmp_path, ui.server_env(), health, timeout=180, what="mlflow server"):
        again = run(["dvc", "repro", "train_head"], proj, env, timeout=900)
        log = again.stdout + again.stderr
        assert "resuming" in log, log[-6000:]
        assert (proj / "models" / "head.keras").is_file()

        client = mlflow.MlflowClient(server_uri)
        exp = client.get_experiment_by_name("reprotrain")
        runs = client.search_runs(
            [exp.experiment_id], filter_string="tags.`reprotrain.stage` = 'train_head'"
        )
        by_status = sorted(r.info.status for r in runs)
        # The stage killed by the outage is closed (KILLED by the rerun, or FAILED if the
        # server answered once more); the rerun FINISHED. Nothing is left RUNNING.
        assert len(runs) == 2 and "FINISHED" in by_status and "RUNNING" not in by_status
