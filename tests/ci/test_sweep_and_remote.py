"""The DVC remote round trip and a parallel experiment sweep, on the tiny project that
test_retrain.py trained and pushed (shared: the expensive first `dvc repro` runs once).

- Remote: a fresh `git clone` + `dvc pull` + `dvc repro` retrains nothing.
- Sweep: `dvc exp run --queue -S finetune.learning_rate=...` twice, `dvc queue start -j 2`;
  both experiments land in the project's one SQLite MLflow store tagged with their DVC
  experiment name, nothing is left RUNNING or corrupted, `dvc exp show` has their params and
  metrics, and `dvc exp apply` brings the chosen one into the workspace without a rerun.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from reprotrain.tracking import TAG_EXP
from tests.ci.test_retrain import Project, promoted_project, retrain
from tests.conftest import project_client, run

TRAINING_STAGES = ("prepare", "train_head", "finetune", "evaluate")
#: -S value as typed → its value. DVC writes 3e-5 back as `3e-05`, which YAML 1.1 (PyYAML)
#: reads as a string: the sweep also checks that params.yaml still loads as a number.
SWEEP = {"1e-3": 1e-3, "3e-5": 3e-5}
SWEEP_TIMEOUT = 900.0


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return promoted_project(tmp_path_factory)


def _tree_digest(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*"))}


# ----------------------------------------------------------------- remote round trip


def test_fresh_clone_pulls_and_retrains_nothing(project: Project, tmp_path: Path) -> None:
    """What a colleague (or the next scheduled job) gets: the promoted commit, its data and
    models from the remote, and a `dvc repro` that only re-snapshots the source.

    `fetch` is always_changed (its source lives outside the repo), so it runs; it finds the
    same files (data.source is an absolute tmp path here, still present), its output hash is
    unchanged, and every training stage is skipped.
    """
    env = project.env
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project.root), str(clone)], tmp_path, env)
    run(["dvc", "pull"], clone, env)  # strict: everything the lock names is in the remote
    prepared = _tree_digest(clone / "data" / "prepared")
    assert (clone / "models" / "finetuned.keras").is_file()

    proc = retrain(clone, env)
    log = proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "outcome=up-to-date", log
    assert "Running stage 'fetch'" in log
    for stage in TRAINING_STAGES:
        assert f"Running stage '{stage}'" not in log, log
        assert f"Stage '{stage}' didn't change, skipping" in log, log
    assert _tree_digest(clone / "data" / "prepared") == prepared
    assert run(["git", "status", "--porcelain", "--untracked-files=no"], clone, env).stdout == ""
    assert not (clone / "mlruns").exists(), "no stage that tracks to MLflow ran"


# ----------------------------------------------------------------- sweep


def _queue_status(proj: Path, env: dict[str, str]) -> str:
    return run(["dvc", "queue", "status"], proj, env).stdout


@pytest.fixture(scope="module")
def sweep(project: Project) -> dict[str, Any]:
    """Queue two experiments, run them with two workers, wait for both (workers exit when idle)."""
    proj, env = project.root, project.env
    params_before = (proj / "params.yaml").read_text()
    names: dict[str, float] = {}
    for typed, value in SWEEP.items():
        out = run(
            ["dvc", "exp", "run", "--queue", "-S", f"finetune.learning_rate={typed}"], proj, env
        ).stdout
        names[re.search(r"Queued experiment '([^']+)'", out).group(1)] = value
    started = time.monotonic()
    run(["dvc", "queue", "start", "-j", "2"], proj, env)
    status = ""
    try:
        while time.monotonic() - started < SWEEP_TIMEOUT:
            time.sleep(5)
            status = _queue_status(proj, env)
            if not re.search(r"\b(Queued|Running)\b", status) and "0 active" in status:
                break
        else:
            pytest.fail(f"sweep not done after {SWEEP_TIMEOUT:.0f} s:\n{status}")
    finally:
        if re.search(r"\b(Queued|Running)\b", status) or "0 active" not in status:
            run(["dvc", "queue", "stop", "--kill"], proj, env, check=False)
    return {
        "names": names,
        "status": status,
        "seconds": time.monotonic() - started,
        "params_before": params_before,
        "show": json.loads(run(["dvc", "exp", "show", "--json"], proj, env).stdout),
    }


def test_queued_experiments_all_succeed(project: Project, sweep: dict[str, Any]) -> None:
    for name in sweep["names"]:
        assert re.search(rf"{name}\s.*Success", sweep["status"]), sweep["status"]
    # The sweep ran in temporary copies: the workspace is untouched.
    assert (project.root / "params.yaml").read_text() == sweep["params_before"]
    print(f"sweep of {len(sweep['names'])} experiments, -j 2: {sweep['seconds']:.0f} s")


def _experiments(show: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {}
    for baseline in show:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                found[rev["name"]] = rev["data"]
    return found


def test_exp_show_has_params_and_metrics(sweep: dict[str, Any]) -> None:
    experiments = _experiments(sweep["show"])
    for name, lr in sweep["names"].items():
        data = experiments[name]
        params = data["params"]["params.yaml"]["data"]
        assert params["finetune"]["learning_rate"] == pytest.approx(lr)
        metrics = data["metrics"]
        assert 0.0 <= metrics["metrics/evaluate.json"]["data"]["accuracy"] <= 1.0
        assert "best_val_accuracy" in metrics["metrics/finetune.json"]["data"]


def test_every_experiment_lands_in_the_one_mlflow_store(
    project: Project, sweep: dict[str, Any]
) -> None:
    client = project_client(project.root)
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exp_ids, max_results=5000)
    statuses = {r.info.status for r in runs}
    assert statuses == {"FINISHED"}, statuses
    for name, lr in sweep["names"].items():
        tagged = [r for r in runs if r.data.tags.get(TAG_EXP) == name]
        stages = {r.data.tags.get("reprotrain.stage", r.data.tags.get("reprotrain.role")): r
                  for r in tagged}  # fmt: skip
        # finetune and evaluate reran (nested under one pipeline run); cached stages did not.
        assert {"pipeline", "finetune", "evaluate"} <= set(stages), (name, list(stages))
        assert not {"prepare", "train_head"} & set(stages), (name, list(stages))
        assert stages["pipeline"].info.run_name == name  # the row is named after the experiment
        logged = stages["finetune"].data.params.get("finetune.learning_rate")
        assert logged is not None and float(logged) == pytest.approx(lr)
    model_versions = client.search_model_versions("name = 'reprotrain-classifier'")
    versions = len(model_versions)
    champion = client.get_model_version_by_alias("reprotrain-classifier", "champion").version
    exp_run_ids = {r.info.run_id for r in runs if TAG_EXP in r.data.tags}
    exp_versions = {int(mv.version) for mv in model_versions if mv.run_id in exp_run_ids}
    # v1 from the first retrain, v2 possibly from test_retrain's second run, one per experiment.
    assert versions >= 1 + len(sweep["names"])
    # Experiments register versions but never take the champion alias (not on any branch).
    assert len(exp_versions) == len(sweep["names"]) and int(champion) not in exp_versions


def test_apply_the_chosen_experiment(project: Project, sweep: dict[str, Any]) -> None:
    """`dvc exp apply` brings params, dvc.lock and outputs into the workspace: nothing to rerun."""
    proj, env = project.root, project.env
    name, lr = next(iter(sweep["names"].items()))
    run(["dvc", "exp", "apply", name], proj, env)
    applied = yaml.safe_load((proj / "params.yaml").read_text())
    assert float(applied["finetune"]["learning_rate"]) == pytest.approx(lr)
    status = run(["dvc", "status"], proj, env).stdout
    # fetch is always_changed, so it is the one stage `dvc status` always lists.
    assert not any(f"{stage}:" in status for stage in TRAINING_STAGES), status
