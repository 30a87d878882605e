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
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from reprotrain.tracking import TAG_EXP
from tests.conftest import Project, restore_workspace, retrain, run

# Every test here uses the promoted tiny project (a real retrain run).
pytestmark = pytest.mark.slow

TRAINING_STAGES = ("prepare", "train_head", "finetune", "evaluate")
#: -S value as typed → its value. DVC writes 3e-5 back as `3e-05`, which YAML 1.1 (PyYAML)
#: reads as a string: the sweep also checks that params.yaml still loads as a number.
SWEEP = {"1e-3": 1e-3, "3e-5": 3e-5}
SWEEP_TIMEOUT = 900.0


@pytest.fixture
def project(promoted_project: Project) -> Project:
    return promoted_project


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


def _start_workers(proj: Path, env: dict[str, str]) -> None:
    """``dvc queue start -j 2`` with its output in a file, not a pipe.

    dvc-task spawns each worker from a forked helper that keeps the parent's stdout and stderr
    open until that worker exits, so a captured (piped) ``queue start`` returns only when the
    whole sweep is done, and a slow sweep hit the subprocess timeout instead of the sweep's.
    """
    log = proj.parent / "queue-start.log"
    with log.open("w") as out:
        proc = subprocess.run(
            ["dvc", "queue", "start", "-j", "2"],
            cwd=proj,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    assert proc.returncode == 0, log.read_text()


def _all_finished(status: str, names: Iterable[str]) -> bool:
    return all(re.search(rf"\b{name}\b.*\b(Success|Failed)\b", status) for name in names)


def _stalled(status: str) -> bool:
    """Experiments wait in the queue, none runs, and no worker is there to take them."""
    return "Queued" in status and "Running" not in status and "0 active, 0 idle" in status


def _worker_logs(proj: Path) -> str:
    """The end of each queue worker's own log, for a failure message."""
    logs = sorted((proj / ".dvc" / "tmp" / "exps" / "celery").glob("*.out"))
    return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in logs)


@pytest.fixture(scope="module")
def sweep(promoted_project: Project) -> dict[str, Any]:
    """Queue two experiments, run them with two workers, wait for both (workers exit when idle)."""
    proj, env = promoted_project.root, promoted_project.env
    params_before = (proj / "params.yaml").read_text()
    names: dict[str, float] = {}
    for typed, value in SWEEP.items():
        out = run(
            ["dvc", "exp", "run", "--queue", "-S", f"finetune.learning_rate={typed}"], proj, env
        ).stdout
        names[re.search(r"Queued experiment '([^']+)'", out).group(1)] = value
    started = time.monotonic()
    status = ""
    restarts = 0
    finished: float | None = None
    try:
        _start_workers(proj, env)
        while time.monotonic() - started < SWEEP_TIMEOUT:
            time.sleep(5)
            status = _queue_status(proj, env)
            if not re.search(r"\b(Queued|Running)\b", status) and "0 active" in status:
                break
            if not _all_finished(status, names):
                finished = None
            elif finished is None:
                finished = time.monotonic()
            elif time.monotonic() - finished > 60:
                # Every experiment is done (workers leave ~10 s after the queue empties) but
                # a worker stays: stop it rather than wait for it.
                run(["dvc", "queue", "stop"], proj, env, check=False)
                finished = time.monotonic()
            if _stalled(status) and restarts < 2:
                # Workers can leave with tasks still queued (treeverse/dvc#10562); DVC's
                # answer, which docs/retraining.md gives users, is to start them again.
                restarts += 1
                _start_workers(proj, env)
        else:
            pytest.fail(
                f"sweep not done after {SWEEP_TIMEOUT:.0f} s ({restarts} restarts):\n{status}\n"
                + _worker_logs(proj)
            )
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
    import mlflow

    uri = f"sqlite:///{project.root / 'mlruns' / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("reprotrain")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    # No run left RUNNING (or FAILED on "database is locked") by the two parallel workers.
    assert {r.info.status for r in runs} == {"FINISHED"}, [
        (r.info.run_name, r.info.status) for r in runs
    ]
    for name, lr in sweep["names"].items():
        mine = [r for r in runs if r.data.tags.get(TAG_EXP) == name]
        stages = {
            "pipeline"
            if r.data.tags.get("reprotrain.role") == "pipeline"
            else r.data.tags["reprotrain.stage"]: r
            for r in mine
        }
        # finetune and evaluate reran (nested under one pipeline run); cached stages did not.
        assert {"pipeline", "finetune", "evaluate"} <= set(stages), (name, list(stages))
        assert not {"prepare", "train_head"} & set(stages), (name, list(stages))
        logged = stages["finetune"].data.params.get("finetune.learning_rate")
        assert logged is not None and float(logged) == pytest.approx(lr)
    name = "reprotrain-classifier"
    versions = client.search_model_versions(f"name = '{name}'")
    champion = int(client.get_model_version_by_alias(name, "champion").version)
    exp_run_ids = {r.info.run_id for r in runs if r.data.tags.get(TAG_EXP)}
    exp_versions = {int(v.version) for v in versions if v.run_id in exp_run_ids}
    # v1 from the first retrain, maybe one from test_retrain's second run, one per experiment.
    assert len(versions) >= 1 + len(sweep["names"])
    # Experiments register versions but never take the champion alias (not on any branch).
    assert len(exp_versions) == len(sweep["names"]) and champion not in exp_versions


def test_apply_the_chosen_experiment(project: Project, sweep: dict[str, Any]) -> None:
    """`dvc exp apply` brings params, dvc.lock and outputs into the workspace: nothing to rerun."""
    proj, env = project.root, project.env
    name, lr = next(iter(sweep["names"].items()))
    try:
        _apply(proj, env, name, lr)
    finally:
        restore_workspace(project)


def _apply(proj: Path, env: dict[str, str], name: str, lr: float) -> None:
    run(["dvc", "exp", "apply", name], proj, env)
    applied = yaml.safe_load((proj / "params.yaml").read_text())
    assert float(applied["finetune"]["learning_rate"]) == pytest.approx(lr)
    status = run(["dvc", "status"], proj, env).stdout
    # fetch is always_changed, so it is the one stage `dvc status` always lists.
    assert not any(f"{stage}:" in status for stage in TRAINING_STAGES), status
