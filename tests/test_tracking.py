"""reprotrain.tracking through its public API against a real SQLite store in tmp_path: one
pipeline row with nested stage runs, lineage tags (git, dvc.lock hashes, upstream sidecars),
datasets, FAILED/KILLED endings, the DVC_ROOT store rule and the unreachable-server check.

No TensorFlow here: stages are simulated by calling ``stage_run`` the way stages/*.py do.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from reprotrain import paths, tracking
from reprotrain.config import load_params
from reprotrain.errors import TrackingError
from tests.conftest import REPO, run, subprocess_env

PREPARED_MD5 = "0123456789abcdef0123456789abcdef.dir"
HEAD_MD5 = "fedcba9876543210fedcba9876543210"


def write_lock(root: Path) -> None:
    """A dvc.lock as DVC 3 writes it, for the outputs later stages read."""
    lock = {
        "schema": "2.0",
        "stages": {
            "prepare": {
                "cmd": "python stages/prepare.py",
                "outs": [
                    {"path": "data/prepared", "hash": "md5", "md5": PREPARED_MD5, "size": 10},
                    {"path": "data/prepare.run.json", "hash": "md5", "md5": "aa" * 16},
                ],
            },
            "train_head": {
                "cmd": "python stages/train_head.py",
                "outs": [{"path": "models/head.keras", "hash": "md5", "md5": HEAD_MD5}],
            },
        },
    }
    (root / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))


def write_manifest(root: Path) -> None:
    rows = ["path,label,label_index,split,sha256,height,width"]
    for i in range(9):
        split = ("train", "val", "test")[i % 3]
        rows.append(f"img{i}.jpg,{'ab'[i % 2]},{i % 2},{split},{i:064x},32,32")
    manifest = root / paths.PREPARED_DIR / "manifest.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty MLflow SQLite file: creating one costs seconds, copying it does not."""
    db = tmp_path_factory.mktemp("db") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_db: Path) -> Path:
    """dvc.yaml + params.yaml + the dep sources in a git repo, a dvc.lock and a manifest."""
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", tracking.ENV_REPRODUCES):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "proj"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        (root / name).write_text((REPO / name).read_text())
    (root / "stages").mkdir()
    (root / "stages" / "finetune.py").write_text("# stage\n")
    env = subprocess_env()
    run(["git", "init", "-q", "-b", "main"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "init"], root, env)
    write_lock(root)
    write_manifest(root)
    (root / "mlruns").mkdir()
    shutil.copy2(empty_db, root / "mlruns" / "mlflow.db")
    monkeypatch.chdir(root)
    return root


def client_for(root: Path) -> mlflow.MlflowClient:
    uri = tracking.default_uri(root)
    return mlflow.MlflowClient(uri, registry_uri=uri)


def simulate(root: Path, stage: str, upstream=(), sidecar=None, metrics=None, env=None):
    params = load_params(root / "params.yaml")
    with tracking.stage_run(
        stage, params, sections=("seed", stage), root=root, upstream=upstream,
        sidecar=sidecar, environment=env or {"python": "3.11", "cuda": "none"},
    ) as r:  # fmt: skip
        r.log_metrics({"loss": 1.0}, step=1)
        r.log_metrics({"loss": 0.5}, step=2)
        r.log_metrics(metrics or {"val_accuracy": 0.75})
    return r


def test_stages_nest_under_one_pipeline_row_with_lineage(project: Path) -> None:
    prep = simulate(project, "prepare", sidecar=paths.PREPARE_RUN)
    head = simulate(project, "train_head", upstream=[paths.PREPARE_RUN], sidecar=paths.HEAD_RUN)
    fine = simulate(
        project, "finetune", upstream=[paths.PREPARE_RUN, paths.HEAD_RUN, paths.FINETUNED_RUN],
        sidecar=paths.FINETUNED_RUN, env={"tensorflow": "2.21.0", "devices": "CPU:0"},
    )  # fmt: skip
    client = client_for(project)
    parent_ids = {prep.parent_run_id, head.parent_run_id, fine.parent_run_id}
    assert len(parent_ids) == 1
    parent = client.get_run(prep.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "pipeline"
    # All params of every stage on the pipeline row, flattened.
    assert parent.data.params["finetune.learning_rate"] == "1e-05"
    assert parent.data.params["train_head.epochs"] == "10"
    assert parent.data.params["tracking.store"] == "mlruns"
    assert parent.data.metrics["finetune.val_accuracy"] == 0.75
    assert parent.data.tags["reprotrain.run.finetune"] == fine.run_id

    head_commit = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    r = client.get_run(fine.run_id)
    tags = r.data.tags
    assert r.info.status == "FINISHED"
    assert tags["mlflow.parentRunId"] == parent.info.run_id
    assert tags["reprotrain.stage"] == "finetune"
    assert tags["reprotrain.git.commit"] == head_commit
    assert tags["reprotrain.git.dirty"] == "false"
    assert tags["reprotrain.pipeline_id"] == parent.data.tags["reprotrain.pipeline_id"]
    assert tags["reprotrain.data.data/prepared"] == PREPARED_MD5
    assert tags["reprotrain.data.models/head.keras"] == HEAD_MD5
    assert tags["reprotrain.upstream.prepare"] == prep.run_id
    assert tags["reprotrain.upstream.train_head"] == head.run_id
    assert tags["reprotrain.env.tensorflow"] == "2.21.0"
    assert (
        r.data.params["finetune.unfreeze_top"] == "30" and "train_head.epochs" not in r.data.params
    )
    history = client.get_metric_history(fine.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5)]
    # Datasets: one input per split of the manifest, named by split, with a digest.
    inputs = {d.dataset.name: d.dataset for d in r.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "test"}
    assert all(d.digest for d in inputs.values())
    sidecar = json.loads((project / paths.FINETUNED_RUN).read_text())
    assert sidecar["run_id"] == fine.run_id and sidecar["stage"] == "finetune"
    assert sidecar["pipeline_run_id"] == parent.info.run_id


def test_pipeline_metrics_and_new_executions(project: Path) -> None:
    first = simulate(project, "prepare", sidecar=paths.PREPARE_RUN)
    params = load_params(project / "params.yaml")
    with tracking.stage_run("evaluate", params, ("evaluate",), project) as ev:
        ev.log_pipeline_metrics({"accuracy": 0.9, "auc": 0.95})
    assert ev.parent_run_id == first.parent_run_id
    client = client_for(project)
    assert client.get_run(ev.parent_run_id).data.metrics["accuracy"] == 0.9
    # Same configuration again (`dvc repro -f`): prepare already ran there → a new row.
    again = simulate(project, "prepare", sidecar=paths.PREPARE_RUN)
    assert again.parent_run_id != first.parent_run_id
    # A param change is a new configuration: a new pipeline id; the cached upstream run is
    # still linked through its sidecar.
    text = (project / "params.yaml").read_text().replace("unfreeze_top: 30", "unfreeze_top: 20")
    (project / "params.yaml").write_text(text)
    fine = simulate(project, "finetune", upstream=[paths.PREPARE_RUN])
    tags = client.get_run(fine.run_id).data.tags
    assert (
        tags["reprotrain.pipeline_id"]
        != client.get_run(again.run_id).data.tags["reprotrain.pipeline_id"]
    )
    assert tags["reprotrain.upstream.prepare"] == again.run_id
    assert tags["reprotrain.git.dirty"] == "true"  # params.yaml differs from HEAD


def test_failure_interrupt_and_missing_sidecar(project: Path) -> None:
    params = load_params(project / "params.yaml")
    with pytest.raises(ValueError, match="boom"), tracking.stage_run(
        "train_head", params, ("seed",), project, upstream=[paths.PREPARE_RUN],
        sidecar=paths.HEAD_RUN,
    ) as failed:  # fmt: skip
        raise ValueError("boom: bad batch")
    client = client_for(project)
    assert client.get_run(failed.parent_run_id).info.status == "FAILED"
    with (
        pytest.raises(KeyboardInterrupt),
        tracking.stage_run(
            "finetune", params, ("seed",), project, upstream=[paths.HEAD_RUN]
        ) as killed,
    ):
        raise KeyboardInterrupt
    r = client.get_run(failed.run_id)
    assert r.info.status == "FAILED"
    assert "boom: bad batch" in r.data.tags["reprotrain.error"]
    assert r.data.tags["reprotrain.upstream.prepare"] == "missing"
    killed_tags = client.get_run(killed.run_id).data.tags
    assert killed_tags["reprotrain.upstream.train_head"] == "missing"  # named by dvc.yaml
    assert client.get_run(killed.run_id).info.status == "KILLED"
    assert client.get_run(killed.parent_run_id).info.status == "KILLED"
    assert not (project / paths.HEAD_RUN).exists()
    running = client.search_runs(
        [failed.experiment_id], filter_string="attributes.status = 'RUNNING'"
    )
    assert running == []


def test_store_follows_dvc_root_and_exp_name(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dvc exp run --temp` runs in a copy but sets DVC_ROOT to the original repository."""
    temp_copy = tmp_path / "exp-tmp"
    temp_copy.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        (temp_copy / name).write_text((project / name).read_text())
    monkeypatch.setenv("DVC_ROOT", str(project))
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-lion")
    r = simulate(temp_copy, "prepare")
    assert (project / "mlruns" / "mlflow.db").is_file()
    assert not (temp_copy / "mlruns").exists()
    run_ = client_for(project).get_run(r.run_id)
    assert run_.data.tags["reprotrain.dvc.exp_name"] == "lucky-lion"
    assert run_.info.artifact_uri.startswith((project / "mlruns" / "artifacts").as_uri())


def test_unreachable_server_fails_fast(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    params = load_params(project / "params.yaml")
    start = time.monotonic()
    with (
        pytest.raises(TrackingError, match="unreachable"),
        tracking.stage_run("prepare", params, ("seed",), project),
    ):
        pytest.fail("the stage body must not run")
    assert time.monotonic() - start < tracking.HEALTH_TIMEOUT + 2


def test_sigterm_ends_the_run_killed(project: Path) -> None:
    """`kill`/`dvc queue kill` sends SIGTERM: the run must not stay RUNNING."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from reprotrain import tracking\n"
        "from reprotrain.config import load_params\n"
        "root = Path.cwd()\n"
        "with tracking.stage_run('train_head', load_params(), ('seed',), root):\n"
        "    (root / 'started').write_text('1')\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=project, env=subprocess_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not (project / "started").exists():
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the stage never started"
            time.sleep(0.2)
        proc.terminate()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    client = client_for(project)
    [stage] = client.search_runs(
        [client.get_experiment_by_name("reprotrain").experiment_id],
        filter_string="tags.`reprotrain.stage` = 'train_head'",
    )
    assert stage.info.status == "KILLED"
    assert "signal 15" in stage.data.tags["reprotrain.error"]
    parent = client.get_run(stage.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "KILLED"
