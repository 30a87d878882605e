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
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from reprotrain.tracking import TAG_EXP
from tests.ci.test_retrain import Project, promoted_project, retrain
from tests.conftest import run

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
    db = project.root / "mlruns" / "mlflow.db"
    con = sqlite3.connect(db)
    try:
        assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
        statuses = dict(con.execute("select status, count(*) from runs group by status"))
        assert set(statuses) == {"FINISHED"}, statuses
        for name, lr in sweep["names"].items():
            rows = con.execute(
                "select r.name, r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid"
                " where t.key = ? and t.value = ?",
                (TAG_EXP, name),
            ).fetchall()
            stages = {stage: run_id for stage, run_id in rows}
            # finetune and evaluate reran (nested under one pipeline run); cached stages did not.
            assert {"pipeline", "finetune", "evaluate"} <= set(stages), (name, rows)
            assert not {"prepare", "train_head"} & set(stages), (name, rows)
            logged = con.execute(
                "select value from params where run_uuid = ? and key = 'finetune.learning_rate'",
                (stages["finetune"],),
            ).fetchone()
            assert logged is not None and float(logged[0]) == pytest.approx(lr)
        versions = con.execute("select count(*) from model_versions").fetchone()[0]
        champion = con.execute(
            "select version from registered_model_aliases where alias = 'champion'"
        ).fetchone()[0]
        exp_versions = {
            int(v)
            for (v,) in con.execute(
                "select mv.version from model_versions mv join runs r on mv.run_id = r.run_uuid"
                " join tags t on t.run_uuid = r.run_uuid where t.key = ?",
                (TAG_EXP,),
            )
        }
    finally:
        con.close()
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
