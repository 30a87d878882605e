"""reprotrain.tracking through its public API against a real SQLite store in tmp_path: one
pipeline row with nested stage runs, lineage tags (git, dvc.lock hashes, upstream sidecars),
datasets, FAILED/KILLED endings, the DVC_ROOT store rule and the unreachable-server check.

No TensorFlow here: stages are simulated by calling ``stage_run`` the way stages/*.py do.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from reprotrain import dag, paths, tracking
from reprotrain.config import load_params
from reprotrain.errors import TrackingError
from tests.conftest import (
    HEAD_MD5,
    PREPARED_MD5,
    enter_project,
    make_empty_db,
    make_tracking_project,
    project_client,
    run,
    simulate,
    subprocess_env,
)


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty MLflow SQLite file: creating one costs seconds, copying it does not."""
    return make_empty_db(tmp_path_factory.mktemp("db"))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_db: Path) -> Path:
    """dvc.yaml + params.yaml + the dep sources in a git repo, a dvc.lock and a manifest."""
    return enter_project(make_tracking_project(tmp_path / "proj", empty_db), monkeypatch)


client_for = project_client


@pytest.mark.slow
def test_stages_nest_under_one_pipeline_row_with_lineage(project: Path) -> None:
    prep = simulate(project, "prepare", sidecar=paths.PREPARE_RUN)
    head = simulate(project, "train_head", upstream=[paths.PREPARE_RUN], sidecar=paths.HEAD_RUN)
    fine = simulate(
        project,
        "finetune",
        upstream=[paths.PREPARE_RUN, paths.HEAD_RUN, paths.FINETUNED_RUN],
        sidecar=paths.FINETUNED_RUN,
        env={"tensorflow": "2.21.0", "devices": "CPU:0"},
    )
    client = client_for(project)
    parent_ids = {prep.parent_run_id, head.parent_run_id, fine.parent_run_id}
    assert len(parent_ids) == 1
    parent = client.get_run(prep.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["reprotrain.role"] == "pipeline"
    head_commit = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    # Named after what distinguishes it: the commit (params.yaml as committed).
    assert parent.info.run_name == head_commit[:7]
    assert "as committed" in parent.data.tags["mlflow.note.content"]
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # All params of every stage on the pipeline row, flattened.
    assert parent.data.params["finetune.learning_rate"] == "0.0001"
    assert parent.data.params["train_head.epochs"] == "10"
    assert parent.data.params["tracking.store"] == "mlruns"
    assert parent.data.metrics["finetune.val_accuracy"] == 0.75
    assert parent.data.tags["reprotrain.run.finetune"] == fine.run_id

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


@pytest.mark.slow
def test_pipeline_metrics_and_new_executions(project: Path) -> None:
    first = simulate(project, "prepare", sidecar=paths.PREPARE_RUN)
    params = load_params(project / "params.yaml")
    with tracking.stage_run(dag.Stage("evaluate", params=("evaluate",)), params, project) as ev:
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
    assert tags["reprotrain.git.dirty_paths"] == "params.yaml"  # the whole name (" M params…")
    # The new row is named after the changed param; its note lists it, and the headline test
    # accuracy is added to the note when evaluate logs it.
    with tracking.stage_run(dag.Stage("evaluate", params=("evaluate",)), params, project) as ev2:
        ev2.log_pipeline_metrics({"accuracy": 0.8125, "per class/f1 (bees)": 0.5})
    assert ev2.parent_run_id == fine.parent_run_id
    parent = client.get_run(fine.parent_run_id)
    commit = tags["reprotrain.git.commit"]
    assert parent.info.run_name == f"{commit[:7]} finetune.unfreeze_top=20"
    note = parent.data.tags["mlflow.note.content"]
    assert "`finetune.unfreeze_top`: 30 → 20" in note and "Test accuracy: 0.8125" in note
    # One sanitiser: characters MLflow rejects become "_", the allowed ones stay.
    assert parent.data.metrics["per class/f1 _bees_"] == 0.5


@pytest.mark.slow
def test_failure_interrupt_and_missing_sidecar(project: Path) -> None:
    params = load_params(project / "params.yaml")
    with (
        pytest.raises(ValueError, match="boom"),
        tracking.stage_run(
            dag.Stage(
                "train_head",
                params=("seed",),
                sidecar=str(paths.HEAD_RUN),
                upstream=(str(paths.PREPARE_RUN),),
            ),
            params,
            project,
        ) as failed,
    ):
        raise ValueError("boom: bad batch")
    client = client_for(project)
    assert client.get_run(failed.parent_run_id).info.status == "FAILED"
    with (
        pytest.raises(KeyboardInterrupt),
        tracking.stage_run(
            dag.Stage("finetune", params=("seed",), upstream=(str(paths.HEAD_RUN),)),
            params,
            project,
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


def test_non_chief_worker_records_nothing(project: Path) -> None:
    params = load_params(project / "params.yaml")
    with tracking.stage_run(
        dag.Stage("train_head", params=("seed",), sidecar=str(paths.HEAD_RUN)),
        params,
        project,
        chief=False,
    ) as r:
        assert isinstance(r, tracking.NoRun)
        r.log_metrics({"loss": 1.0}, step=1)
        r.set_tags({"a": 1})
        r.log_artifact(project / "params.yaml")
    assert not (project / paths.HEAD_RUN).exists()
    client = client_for(project)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def _monitor_threads() -> int:
    """MLflow's system-metrics sampler threads alive in this process."""
    return sum(t.name == "SystemMetricsMonitor" and t.is_alive() for t in threading.enumerate())


def _has_all(metrics: dict, keys: tuple[str, ...]) -> dict | None:
    return metrics if all(k in metrics for k in keys) else None


def _wait_for(probe, timeout: float = 60.0):
    """Poll ``probe`` until it returns something truthy (the sampler logs on its own clock)."""
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)
    return found


@pytest.mark.slow
def test_training_runs_log_system_metrics(project: Path) -> None:
    text = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(
        text.replace("system_metrics_interval: 10", "system_metrics_interval: 1")
    )
    params = load_params(project / "params.yaml")
    assert params.tracking.system_metrics and params.tracking.system_metrics_interval == 1
    client = client_for(project)
    keys = ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes")
    with tracking.stage_run(dag.Stage("baseline", params=("seed",)), params, project) as r:
        assert _monitor_threads() == 1
        metrics = _wait_for(lambda: _has_all(client.get_run(r.run_id).data.metrics, keys))
    with tracking.stage_run(dag.Stage("evaluate", params=("seed",)), params, project) as other:
        assert _monitor_threads() == 0  # nothing samples this run
    for key in keys:
        assert key in metrics, sorted(metrics)
    assert 0.0 <= metrics["system/cpu_utilization_percentage"] <= 100.0
    # Only the training stages sample; the interval setting does not leak.
    assert not any(k.startswith("system/") for k in client.get_run(other.run_id).data.metrics)
    assert "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL" not in os.environ


@pytest.mark.slow
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
    assert client_for(project).get_run(r.parent_run_id).info.run_name == "lucky-lion"
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
        tracking.stage_run(dag.Stage("prepare", params=("seed",)), params, project),
    ):
        pytest.fail("the stage body must not run")
    assert time.monotonic() - start < tracking.HEALTH_TIMEOUT + 2


def _stage_script(body: str) -> str:
    return (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from reprotrain import dag, tracking\n"
        "from reprotrain.config import load_params\n"
        "root = Path.cwd()\n" + body
    )


@contextmanager
def _sleeping_stage(project: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real process inside a train_head stage run (sleeping), once the run has started;
    killed afterwards if the test left it running."""
    script = _stage_script(
        "with tracking.stage_run(dag.Stage('train_head', params=('seed',)), load_params(), root):\n"
        "    (root / 'started').write_text('1')\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=project,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while not (project / "started").exists():
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the stage never started"
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_sigterm_ends_the_run_killed(project: Path) -> None:
    """`kill`/`dvc queue kill` sends SIGTERM: the run must not stay RUNNING."""
    with _sleeping_stage(project) as proc:
        proc.terminate()
        proc.wait(timeout=60)
    client = client_for(project)
    [stage] = client.search_runs(
        [client.get_experiment_by_name("reprotrain").experiment_id],
        filter_string="tags.`reprotrain.stage` = 'train_head'",
    )
    assert stage.info.status == "KILLED"
    assert "signal 15" in stage.data.tags["reprotrain.error"]
    parent = client.get_run(stage.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "KILLED"


@pytest.mark.slow
def test_sigkilled_run_is_marked_killed_by_the_next_stage(project: Path) -> None:
    """SIGKILL cannot be caught: the next stage run notices the owner is gone."""
    with _sleeping_stage(project) as proc:
        proc.kill()
        proc.wait(timeout=30)
    client = client_for(project)
    exp_id = client.get_experiment_by_name("reprotrain").experiment_id
    [stage] = client.search_runs([exp_id], filter_string="tags.`reprotrain.stage` = 'train_head'")
    assert stage.info.status == "RUNNING"  # nobody could close it
    assert stage.data.tags["reprotrain.pid"] == str(proc.pid)
    assert stage.data.tags["reprotrain.host"] == socket.gethostname()

    nxt = simulate(project, "finetune")
    killed = client.get_run(stage.info.run_id)
    assert killed.info.status == "KILLED"
    assert f"process {proc.pid}" in killed.data.tags["reprotrain.error"]
    assert "SIGKILL" in killed.data.tags["mlflow.note.content"]
    parent = client.get_run(stage.data.tags["mlflow.parentRunId"])
    assert parent.info.status in ("KILLED", "FINISHED")  # reaped, or reused by finetune
    assert client.get_run(nxt.run_id).info.status == "FINISHED"
    assert client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'") == []


def test_a_live_owner_is_left_alone(project: Path) -> None:
    """A RUNNING run whose process still runs (this one) is not touched."""
    from reprotrain.tracking.owners import owner_alive, process_tags

    assert owner_alive(process_tags())
    dead = {**process_tags(), "reprotrain.pid_start": "1.0"}  # our pid, another start time
    assert not owner_alive(dead)
    assert owner_alive({"reprotrain.host": "elsewhere", "reprotrain.pid": "1"})


@pytest.mark.slow
def test_two_concurrent_processes_share_one_sqlite_store(tmp_path: Path, project: Path) -> None:
    """Two queued experiments writing one fresh SQLite file: no "database is locked"."""
    (project / "mlruns" / "mlflow.db").unlink()  # fresh: both processes race to create it
    script = _stage_script(
        "name = sys.argv[1]\n"
        "for i in range(3):\n"
        "    spec = dag.Stage('train_head', params=('seed', 'train_head'))\n"
        "    with tracking.stage_run(spec, load_params(), root) as r:\n"
        "        for step in range(5):\n"
        "            r.log_metrics({'loss': 1.0 / (step + 1)}, step=step)\n"
        "        r.log_metrics({'val_accuracy': 0.5})\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, f"w{i}"],
            cwd=project,
            env=subprocess_env(DVC_EXP_NAME=f"exp-{i}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-4000:]
        assert "database is locked" not in out, out[-4000:]
    client = client_for(project)
    exp_id = client.get_experiment_by_name("reprotrain").experiment_id
    stages = client.search_runs([exp_id], filter_string="tags.`reprotrain.stage` = 'train_head'")
    assert len(stages) == 6 and all(r.info.status == "FINISHED" for r in stages)
