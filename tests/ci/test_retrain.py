"""scripts/retrain.sh end to end: real git, real `dvc repro` of the tiny pipeline, a real
local DVC remote and a bare git "origin" in tmp, the way the scheduled workflow calls it.

One tiny project is trained once per session (≈ 1.5 min on 2 cores) and shared, in order, by:
the first run (no champion yet → promoted → committed on a branch → pushed, PR opened), a second
run with a stricter gate (only evaluate reruns → not promoted → nothing committed), and, in
test_sweep_and_remote.py, a fresh clone that pulls from the remote and a parameter sweep.

The only stand-in is ``gh``: GitHub is not reachable from tests, so a 3-line script records
the arguments it is called with (the real ``git push`` goes to the bare origin).
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import (
    TINY_PARAMS,
    deep_update,
    make_class_tree,
    make_project,
    run,
    subprocess_env,
)

FAKE_PR_URL = "https://github.com/example/reprotrain/pull/1"
#: What the scheduled job runs with: GitHub Actions' variables, a token for the PR step only.
GH = f"""#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/gh.log"
if [ "$1 $2" = "pr create" ]; then echo {FAKE_PR_URL}; fi
"""


@dataclass
class Project:
    """The shared tiny project and what its first retraining produced."""

    root: Path  # the project (git repo on the retrain branch after the first run)
    remote: Path  # the DVC remote (a local directory)
    origin: Path  # bare git repo standing in for GitHub
    env: dict[str, str]
    first: subprocess.CompletedProcess[str]
    open_pr: subprocess.CompletedProcess[str]
    summary: Path  # $GITHUB_STEP_SUMMARY of the first run
    outputs: Path  # $GITHUB_OUTPUT of the first run


_CACHE: dict[str, Any] = {}


def retrain(
    proj: Path, env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the project's copy of the script from another directory (it must find its root)."""
    return run([str(proj / "scripts" / "retrain.sh"), *args], proj.parent, env, check=check)


def promoted_project(factory: pytest.TempPathFactory) -> Project:
    """Build the tiny project, point it at a fresh remote, and run retrain.sh once (cached)."""
    if "project" in _CACHE:
        return _CACHE["project"]
    base = factory.mktemp("retrain")
    images = make_class_tree(base / "images", {"cats": 16, "dogs": 16})
    proj = make_project(
        base / "proj",
        deep_update(TINY_PARAMS, {"data": {"source": str(images), "sha256": None}}),
    )
    bin_dir = base / "bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text(GH)
    (bin_dir / "gh").chmod(0o755)
    env = subprocess_env(DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{env['PATH']}:{bin_dir}"  # venv first; gh is not installed here
    for var in ("GITHUB_ACTIONS", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GH_TOKEN"):
        env.pop(var, None)

    remote, origin = base / "dvc-remote", base / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], base, env)
    run(["dvc", "remote", "add", "-d", "storage", str(remote)], proj, env)
    # What `dvc init` writes; make_project copies .dvc/config only.
    (proj / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    run(["git", "add", "-A"], proj, env)
    run(["git", "commit", "-qm", "DVC remote"], proj, env)
    run(["git", "remote", "add", "origin", str(origin)], proj, env)
    run(["git", "push", "-q", "origin", "main"], proj, env)

    summary, outputs = base / "step_summary.md", base / "github_output"
    ci = {
        **env,
        "GITHUB_ACTIONS": "true",
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_OUTPUT": str(outputs),
        "GITHUB_RUN_ID": "4242",
        "GITHUB_REPOSITORY": "example/reprotrain",
    }
    first = retrain(proj, ci)
    open_pr = retrain(proj, {**ci, "GH_TOKEN": "not-a-real-token"}, "open-pr")
    _CACHE["project"] = Project(proj, remote, origin, env, first, open_pr, summary, outputs)
    return _CACHE["project"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return promoted_project(tmp_path_factory)


def _git(proj: Path, env: dict[str, str], *args: str) -> str:
    return run(["git", *args], proj, env).stdout.strip()


def _outputs(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


# ----------------------------------------------------------------- promote branch


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
    assert "actions/runs/4242" in summary
    assert Path(out["report"]).read_text() in summary


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


def test_push_sent_every_output_to_the_remote(project: Project) -> None:
    assert any(p.is_file() for p in (project.remote / "files" / "md5").rglob("*"))
    status = run(["dvc", "status", "--cloud"], project.root, project.env).stdout
    assert "in sync" in status, status


# ----------------------------------------------------------------- do-not-promote branch


def test_stricter_gate_is_not_promoted_and_nothing_is_committed(project: Project) -> None:
    """Raising evaluate.min_improvement reruns only evaluate; the same model cannot beat itself
    (its champion is re-scored on the same test set: gain 0), so the gate says no."""
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
