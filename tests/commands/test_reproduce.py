"""The real DAG on the promoted tiny project (`dvc repro`): MLflow lineage of every stage, then
`python -m reprotrain reproduce` of its train_head run (prepare → train_head: the machinery
every stage's reproduction uses, at a fraction of the whole chain's cost) in a separate work
tree gives identical metrics and leaves the registry aliases alone."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import yaml

from reprotrain import tracking
from reprotrain.commands import reproduce
from tests.conftest import REPO, Project, run

STAGES = ("fetch", "prepare", "train_head", "finetune", "baseline", "export", "evaluate")
SIDECARS = {
    "prepare": "data/prepare.run.json",
    "train_head": "models/head.run.json",
    "finetune": "models/finetuned.run.json",
    "baseline": "models/baseline.run.json",
    "export": "models/export.run.json",
    "evaluate": "metrics/evaluate.run.json",
}


@pytest.fixture
def repro_project(promoted_project: Project) -> tuple[Path, dict[str, str]]:
    """The session's promoted tiny project: a real `dvc repro` of every stage, committed."""
    return promoted_project.root, promoted_project.env


@pytest.mark.slow
def test_plan_follows_dvc_stage_graph() -> None:
    assert reproduce.plan(REPO, "evaluate") == list(STAGES)
    assert reproduce.plan(REPO, "train_head") == ["fetch", "prepare", "train_head"]
    with pytest.raises(reproduce.ReproduceError, match="is not in dvc"):
        reproduce.plan(REPO, "deploy")
    rows = reproduce.compare({"a": [(0, 1.0), (1, 0.5)]}, {"a": [(0, 1.0), (1, 0.25)], "b": []})
    assert rows == [("a", 0.5, 0.25, False), ("b", None, None, False)]


@pytest.mark.slow
def test_lineage_of_every_stage(repro_project) -> None:
    proj, _ = repro_project
    uri = tracking.default_uri(proj)
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    ids = {s: json.loads((proj / p).read_text())["run_id"] for s, p in SIDECARS.items()}
    runs = {s: client.get_run(i) for s, i in ids.items()}
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs.values()}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert parent.info.status == "FINISHED" and parent.data.tags["reprotrain.role"] == "pipeline"
    assert "accuracy" in parent.data.metrics  # the final test metrics on the pipeline row
    assert parent.data.params["finetune.unfreeze_top"] == "10"
    lock = yaml.safe_load((proj / "dvc.lock").read_text())["stages"]

    def md5(stage: str, path: str) -> str:
        return next(o["md5"] for o in lock[stage]["outs"] if o["path"] == path)

    tags = {s: r.data.tags for s, r in runs.items()}
    assert tags["prepare"]["reprotrain.data.data/raw"] == md5("fetch", "data/raw")
    assert tags["finetune"]["reprotrain.data.data/prepared"] == md5("prepare", "data/prepared")
    assert tags["finetune"]["reprotrain.data.models/head.keras"] == md5(
        "train_head", "models/head.keras"
    )
    assert tags["evaluate"]["reprotrain.upstream.finetune"] == ids["finetune"]
    assert tags["evaluate"]["reprotrain.upstream.train_head"] == ids["train_head"]
    assert tags["finetune"]["reprotrain.env.tensorflow"]
    assert {d.dataset.name for d in runs["finetune"].inputs.dataset_inputs} == {
        "train",
        "val",
        "test",
    }
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert client.get_model_version_by_alias("reprotrain-classifier", "champion")


@pytest.mark.slow
def test_reproduce_train_head_run_is_identical(repro_project, tmp_path: Path) -> None:
    """Reproduce the train_head run (prepare → train_head): the same machinery as for any
    stage, at half the cost of replaying the whole chain in the suite's time budget."""
    proj, env = repro_project
    run_id = json.loads((proj / SIDECARS["train_head"]).read_text())["run_id"]
    work = tmp_path / "work"
    proc = run(
        ["python", "-m", "reprotrain", "reproduce", run_id, "--workdir", str(work)],
        proj,
        env,
        check=False,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "identical" in proc.stdout and " NO" not in proc.stdout, proc.stdout
    assert "val_accuracy" in proc.stdout
    assert "system/" not in proc.stdout  # samples of the machine are not compared
    # data/raw came from the DVC cache at the recorded hash; the snapshot stage did not rerun.
    assert "rerunning prepare → train_head" in proc.stderr, out[-6000:]
    assert (work / "models" / "head.keras").is_file()

    uri = tracking.default_uri(proj)
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    new_id = json.loads((work / SIDECARS["train_head"]).read_text())["run_id"]
    new = client.get_run(new_id)
    assert new_id != run_id
    assert new.data.tags["reprotrain.reproduces"] == run_id
    assert new.data.tags["reprotrain.reproduction"] == "identical"
    original_parent = client.get_run(run_id).data.tags["mlflow.parentRunId"]
    assert new.data.tags["mlflow.parentRunId"] != original_parent  # a pipeline row of its own
    champion = client.get_model_version_by_alias("reprotrain-classifier", "champion")
    assert int(champion.version) == 1


@pytest.mark.slow
def test_unknown_run_is_a_one_line_error(repro_project) -> None:
    proj, env = repro_project
    proc = run(
        ["python", "-m", "reprotrain", "reproduce", "0" * 32], proj, env, check=False, timeout=120
    )
    assert proc.returncode == 2
    assert "not found" in proc.stderr and "Traceback" not in proc.stderr
