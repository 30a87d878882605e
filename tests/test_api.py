"""reprotrain.api: the Python facade, and docs/quickstart.ipynb executed in a real Jupyter
kernel (nbclient) on a copy of the session's tiny promoted project."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
from pathlib import Path

import pytest

from reprotrain import api, cli
from reprotrain.errors import ConfigError
from tests.conftest import (
    REPO,
    TINY_PARAMS,
    TRACKING_ENV,
    Project,
    deep_update,
    enter_project,
    make_empty_db,
    make_project,
    params_project,
    project_client,
)

NOTEBOOK = REPO / "docs" / "quickstart.ipynb"
WIDGET = "application/vnd.jupyter.widget-view+json"


def test_override_args_are_dvc_exp_run_set_params() -> None:
    args = api.override_args(
        {
            "train_head.epochs": 3,
            "finetune__learning_rate": 1e-4,
            "data.sha256": None,
            "pipeline.cache": "memory",
            "runtime.deterministic": True,
            "export.formats": ["saved_model", "tflite_int8"],
        }
    )
    assert args == [
        "-S",
        "train_head.epochs=3",
        "-S",
        "finetune.learning_rate=0.0001",
        "-S",
        "data.sha256=null",
        "-S",
        "pipeline.cache=memory",
        "-S",
        "runtime.deterministic=true",
        "-S",
        'export.formats=["saved_model", "tflite_int8"]',
    ]
    with pytest.raises(ConfigError, match=r"expected a dotted params\.yaml key"):
        api.override_args({"train head": 1})


def test_project_outside_a_project_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not inside a reprotrain project"):
        api.Project(tmp_path)


def test_project_reads_metrics_and_leaves_the_environment_alone(tmp_path: Path) -> None:
    root = params_project(tmp_path / "proj")
    metrics = root / "metrics"
    metrics.mkdir()
    (metrics / "evaluate.json").write_text(json.dumps({"accuracy": 0.75}))
    (metrics / "evaluate.run.json").write_text(json.dumps({"run_id": "abc"}))  # a sidecar
    before = dict(os.environ)
    project = api.Project(metrics)  # found upwards, like git
    assert project.root == root.resolve()
    assert project.metrics() == {"evaluate": {"accuracy": 0.75}}
    assert project.params.tracking.registered_model == "reprotrain-classifier"
    env = project.env()
    for key, value in cli.PROCESS_ENV.items():
        assert env[key] == before.get(key, value)
    assert dict(os.environ) == before


@pytest.mark.slow
def test_promote_keeps_the_callers_mlflow_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """promote and champion on a real SQLite registry: the alias moves with its audit, and
    MLflow's process-wide URIs and the environment are as the caller left them."""
    import mlflow

    root = enter_project(params_project(tmp_path / "proj"), monkeypatch)
    (root / "mlruns").mkdir()
    make_empty_db(root / "mlruns")
    monkeypatch.chdir(tmp_path)  # the project is not the working directory
    project = api.Project(root)
    client = project_client(root)
    client.create_registered_model("reprotrain-classifier")
    client.create_model_version("reprotrain-classifier", source=(tmp_path / "m").as_uri())
    mine = f"sqlite:///{tmp_path / 'mine.db'}"
    mlflow.set_tracking_uri(mine)
    # set_tracking_uri exports the URIs (here and in earlier tests of this worker): start clean
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    uris = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {k: os.environ.get(k) for k in uris}
    try:
        assert project.champion() is None
        moved = project.promote(1, reason="approved")
        assert (moved["champion"], moved["previous"], moved["reason"]) == (1, None, "approved")
        assert project.champion() == 1
        assert mlflow.get_tracking_uri() == mine
        assert {k: os.environ.get(k) for k in uris} == before == dict.fromkeys(uris)
    finally:
        mlflow.set_tracking_uri(None)
    tags = client.get_model_version("reprotrain-classifier", "1").tags
    assert tags["reprotrain.promotion_reason"].endswith("approved")


@pytest.mark.slow
def test_a_failed_stage_is_one_pipeline_error(tmp_path: Path) -> None:
    """A real `dvc repro` whose fetch stage cannot find its source: the stage's one
    `error:` line, raised in this process (which goes on)."""
    params = deep_update(TINY_PARAMS, {"data": {"source": str(tmp_path / "nowhere")}})
    project = api.Project(make_project(tmp_path / "proj", params))
    with pytest.raises(api.PipelineError, match=r"`dvc repro fetch` failed \(exit \d+\)") as err:
        project.repro("fetch")
    assert "nowhere': no such file or directory" in str(err.value)
    assert "Traceback" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_ctrl_c_stops_dvc_and_keeps_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while a stage runs (fetch, downloading from a local server that never
    answers): the KeyboardInterrupt reaches the caller, and DVC and its stage are gone."""
    import psutil

    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "REPROTRAIN_DATA_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no cached download
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    held: list[socket.socket] = []
    main = threading.main_thread().ident
    assert main is not None

    def interrupt_on_connect() -> None:
        conn, _ = server.accept()  # the stage is downloading: the pipeline is running
        held.append(conn)  # never answered
        signal.pthread_kill(main, signal.SIGINT)  # what Ctrl-C / a notebook's Interrupt sends

    threading.Thread(target=interrupt_on_connect, daemon=True).start()
    url = f"http://127.0.0.1:{port}/photos.zip"
    params = deep_update(TINY_PARAMS, {"data": {"source": url, "sha256": None}})
    proj = make_project(tmp_path / "proj", params)
    project = api.Project(proj)
    try:
        with pytest.raises(KeyboardInterrupt):
            project.repro("fetch")
    finally:
        server.close()
        for conn in held:
            conn.close()
    left = []
    for p in psutil.process_iter(["cwd", "cmdline"]):
        try:
            if str(proj) in (p.info["cwd"] or ""):
                left.append(p.info["cmdline"])
        except psutil.Error:
            pass
    assert not left, left


def _outputs(cell: dict) -> list[dict]:
    return [o for o in cell.get("outputs", []) if o.get("output_type") != "stream"]


@pytest.mark.slow
def test_quickstart_notebook_runs_through_the_api(
    promoted_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every cell of docs/quickstart.ipynb, in a real kernel: repro (DVC finds nothing to
    rerun but the always-changed fetch), runs, predict, promote and a reproduction of the
    prepare run. On a copy, so the shared project's registry is untouched."""
    import nbformat
    from nbclient import NotebookClient

    proj = tmp_path / "proj"
    shutil.copytree(promoted_project.root, proj, symlinks=True)
    # A model not yet the champion (what `dvc repro` leaves for review): the notebook promotes.
    project_client(proj).delete_registered_model_alias("reprotrain-classifier", "champion")
    for var in TRACKING_ENV:
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # reproduce's work tree
    monkeypatch.setenv("PATH", promoted_project.env["PATH"])
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(proj)}}
    )
    client.execute()
    _, repro, runs, predict, promote, reproduce = [c for c in nb.cells if c.cell_type == "code"]

    # repro: the stage progress is a notebook widget (tqdm.auto), the metrics a dict.
    assert "project.repro()" in repro.source
    assert any(WIDGET in o.get("data", {}) for o in _outputs(repro)), repro.outputs
    result = _outputs(repro)[-1]["data"]["text/plain"]
    assert "'accuracy'" in result and "'n_test'" in result
    # runs: a DataFrame of pipeline rows; predict: one row per photo, no errors.
    assert "metrics.accuracy" in _outputs(runs)[-1]["data"]["text/html"]
    predicted = _outputs(predict)[-1]["data"]["text/plain"]
    assert predicted.count("None") == 4, predicted  # the error column
    # promote: audited in the copy's registry.
    client_ = project_client(proj)
    assert _outputs(promote)[-1]["data"]["text/plain"] == "1"
    champion = client_.get_model_version_by_alias("reprotrain-classifier", "champion")
    reason = champion.tags["reprotrain.promotion_reason"]
    assert reason.endswith("reviewed in the quick-start notebook"), reason
    # reproduce: the prepare run rebuilt identically.
    assert _outputs(reproduce)[-1]["data"]["text/plain"] == "True", reproduce.outputs
    assert "identical" in "".join(o.get("text", "") for o in reproduce.outputs)

    # The evaluate run of the pipeline logged its figures as MLflow images.
    sidecar = json.loads((proj / "metrics" / "evaluate.run.json").read_text())
    names = [Path(f.path).name for f in client_.list_artifacts(sidecar["run_id"], "images")]
    for key in ("confusion_matrix", "roc", "pr", "training_curves", "worst_examples"):
        assert any(n.startswith(f"evaluate~{key}+step+0+") for n in names), (key, names)
    card_figures = sorted((proj / "reports" / "model_card").glob("*.png"))
    assert any(p.stem == "reliability" for p in card_figures)
    for png in card_figures:  # reliability, confusion, a Grad-CAM per worst error
        assert any(n.startswith(f"model_card~{png.stem}+step+0+") for n in names), (png, names)
    # ... and the stages ran on the allocator the stage process sets.
    head = json.loads((proj / "models" / "head.run.json").read_text())
    assert client_.get_run(head["run_id"]).data.tags["reprotrain.env.cpu_allocator"] == "bfc"
