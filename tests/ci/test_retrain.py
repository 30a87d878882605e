"""scripts/retrain.sh end to end: real git, real `dvc repro` of the tiny pipeline, a real
local DVC remote and a bare git "origin" in tmp, the way the scheduled workflow calls it.

The session fixture ``promoted_project`` (tests/conftest.py) holds the first run (no champion
yet → promoted → committed on a branch → pushed, PR opened); here a second run with a stricter
gate (only evaluate reruns → not promoted → nothing committed) checks the other branch, and
restores the workspace afterwards. The only stand-in is ``gh`` (GitHub is not reachable).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    FAKE_PR_URL,
    TINY_PARAMS,
    Project,
    make_project,
    restore_workspace,
    retrain,
    run,
    subprocess_env,
)


@pytest.fixture
def project(promoted_project: Project) -> Project:
    return promoted_project


def _git(proj: Path, env: dict[str, str], *args: str) -> str:
    return run(["git", *args], proj, env).stdout.strip()


def _outputs(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


# ----------------------------------------------------------------- promote branch


@pytest.mark.slow
def test_first_run_is_promoted_and_committed_on_a_branch(project: Project) -> None:
    proj, env = project.root, project.env
    last = project.first.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"outcome=promoted branch=(retrain/\d{8}-\d{6}-4242)", last)
    assert match, project.first.stdout + project.first.stderr
    branch = match.group(1)
    assert _git(proj, env, "branch", "--show-current") == branch
    assert "Running stage 'train_head'" in project.first.stderr

    committed = set(_git(proj, env, "show", "--name-only", "--format=", "HEAD").splitlines())
    for path in (
        "dvc.lock",
        "metrics/promotion.json",
        "metrics/evaluate.json",
        "metrics/evaluate.run.json",
        "models/head.run.json",
        "models/finetuned.run.json",
        "data/prepare.run.json",
        "plots/confusion.csv",
        "data/.gitignore",
    ):
        assert path in committed, (path, committed)
    assert not any(p.endswith(".keras") or p.startswith("data/prepared") for p in committed)
    # Everything the run changed is in that commit: dvc.lock describes exactly what is there.
    assert _git(proj, env, "status", "--porcelain", "--untracked-files=no") == ""
    assert (
        _git(proj, env, "log", "-1", "--format=%s")
        == "Retrain: model version 1 is the new champion"
    )

    promotion = json.loads((proj / "metrics" / "promotion.json").read_text())
    assert promotion["promoted"] is True and promotion["alias"] == "champion"

    out = _outputs(project.outputs)
    assert out["outcome"] == "promoted" and out["promoted"] == "true" and out["branch"] == branch
    summary = project.summary.read_text()
    assert "## Retraining: promoted" in summary
    assert "| metrics/evaluate.json" in summary and "accuracy" in summary
    assert "Model card (reports/model_card.md)" in summary  # the job summary shows the card
    assert "reports/model_card.md" in committed and "data/splits.csv" in committed
    assert "actions/runs/4242" in summary
    assert Path(out["report"]).read_text() in summary


@pytest.mark.slow
def test_open_pr_pushes_the_branch_and_opens_the_pull_request(project: Project) -> None:
    proj, env = project.root, project.env
    assert project.open_pr.stdout.strip() == f"pr={FAKE_PR_URL}"
    branch = _outputs(project.outputs)["branch"]
    pushed = run(["git", "ls-remote", str(project.origin), branch], proj, env).stdout.split()
    assert pushed and pushed[0] == _git(proj, env, "rev-parse", "HEAD")
    calls = (proj.parent / "bin" / "gh.log").read_text().splitlines()
    assert calls[0] == "auth setup-git"  # CI: git push authenticates with GH_TOKEN via gh
    assert calls[1].startswith(f"pr create --base main --head {branch} --title Retrain: model")
    assert calls[1].endswith("--body-file .reprotrain/retrain/report.md")
    assert _outputs(project.outputs)["pr-url"] == FAKE_PR_URL


@pytest.mark.slow
def test_push_sent_every_output_to_the_remote(project: Project) -> None:
    assert any(p.is_file() for p in (project.remote / "files" / "md5").rglob("*"))
    status = run(["dvc", "status", "--cloud"], project.root, project.env).stdout
    assert "in sync" in status, status


# ----------------------------------------------------------------- do-not-promote branch


@pytest.mark.slow
def test_stricter_gate_is_not_promoted_and_nothing_is_committed(project: Project) -> None:
    """Raising evaluate.min_improvement reruns only evaluate; the same model cannot beat itself
    (its champion is re-scored on the same test set: gain 0), so the gate says no."""
    try:
        _stricter_gate(project)
    finally:
        restore_workspace(project)


def _stricter_gate(project: Project) -> None:
    proj, env = project.root, project.env
    head_before = _git(proj, env, "rev-parse", "HEAD")
    branches_before = _git(proj, env, "branch", "--list")
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["evaluate"]["min_improvement"] = 0.5
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    proc = retrain(proj, env)
    assert proc.stdout.strip().splitlines()[-1] == "outcome=not-promoted", proc.stderr
    assert "Running stage 'evaluate'" in proc.stderr
    for stage in ("prepare", "train_head", "finetune"):
        assert f"Running stage '{stage}'" not in proc.stderr
    assert "not promoted" in proc.stderr and "min_improvement" in proc.stderr
    promotion = json.loads((proj / "metrics" / "promotion.json").read_text())
    assert promotion["promoted"] is False and promotion["alias"] == "challenger"
    assert _git(proj, env, "rev-parse", "HEAD") == head_before
    assert _git(proj, env, "branch", "--list") == branches_before
    report = (proj / ".reprotrain" / "retrain" / "report.md").read_text()
    assert report.startswith("## Retraining: not-promoted")
    # The workspace keeps the run for inspection; the next run starts from it or from git.
    assert "dvc.lock" in _git(proj, env, "status", "--porcelain")
    proc = retrain(proj, env, "open-pr", check=False)
    assert proc.returncode == 2 and "no promoted run" in proc.stderr


# ----------------------------------------------------------------- set-up errors (fast)


@pytest.fixture
def bare_project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A git + DVC project copy with no remote and no pipeline run (nothing slow)."""
    proj = make_project(tmp_path / "proj", TINY_PARAMS)
    return proj, subprocess_env(DVC_NO_ANALYTICS="1")


@pytest.mark.slow
def test_without_a_remote_it_says_how_to_add_one(bare_project) -> None:
    proj, env = bare_project
    proc = retrain(proj, env, check=False)
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("retrain: error: no default DVC remote: 'dvc remote add -d")
    )
    assert proc.stdout == ""


def test_ci_without_tracking_uri_fails_before_training(bare_project) -> None:
    proj, env = bare_project
    env = {**env, "RETRAIN_REQUIRE_TRACKING_URI": "1", "MLFLOW_TRACKING_URI": ""}
    proc = retrain(proj, env, check=False)
    assert proc.returncode == 2
    assert "MLFLOW_TRACKING_URI is not set" in proc.stderr
    assert not (proj / "dvc.lock").exists()


def test_unknown_argument_and_help(bare_project) -> None:
    proj, env = bare_project
    proc = retrain(proj, env, "--bogus", check=False)
    assert proc.returncode == 2 and "usage: scripts/retrain.sh [open-pr]" in proc.stderr
    help_text = retrain(proj, env, "--help").stdout
    assert "Exit codes:" in help_text and "outcome=not-promoted" in help_text
