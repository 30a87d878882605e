"""scripts/retrain.sh end to end: real git, real `dvc repro` of the tiny pipeline, a real
local DVC remote and a bare git "origin" in tmp, the way the scheduled workflow calls it.

The session fixture ``promoted_project`` (tests/conftest.py) holds the first run (no champion
yet → the gate passes → proposed as `challenger`, never `champion` → committed on a branch →
pushed with its figures, PR opened) and the merge job (`retrain.sh promote`: champion v1);
here the merge's compare-and-set refuses a champion that moved since the decision, and a
second run with a stricter gate (only evaluate reruns → not promoted → nothing committed)
checks the other branch, restoring the workspace afterwards. The only stand-in is ``gh``
(GitHub is not reachable).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    FAKE_PR_URL,
    TINY_PARAMS,
    Project,
    make_project,
    project_client,
    restore_workspace,
    retrain,
    run,
    subprocess_env,
)

NAME = "reprotrain-classifier"  # params.yaml tracking.registered_model
#: An image link of the report: ![alt](target)
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


@pytest.fixture
def project(promoted_project: Project) -> Project:
    return promoted_project


def _git(proj: Path, env: dict[str, str], *args: str) -> str:
    return run(["git", *args], proj, env).stdout.strip()


def _outputs(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


# ----------------------------------------------------------------- promote branch


@pytest.mark.slow
def test_first_run_is_proposed_and_committed_on_a_branch(project: Project) -> None:
    proj, env = project.root, project.env
    last = project.first.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"outcome=proposed branch=(retrain/\d{8}-\d{6}-4242)", last)
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
        == "Retrain: model version 1 proposed as the new champion"
    )

    # The CI run only proposes: the gate passed, v1 is the challenger, champion untouched.
    promotion = json.loads((proj / "metrics" / "promotion.json").read_text())
    assert promotion["promoted"] is False and promotion["proposed"] is True
    assert promotion["alias"] == "challenger" and promotion["mode"] == "challenger"
    assert promotion["champion_version"] is None  # what the merge compares and sets against
    assert "REPROTRAIN_PROMOTE=challenger" in project.first.stderr

    out = _outputs(project.outputs)
    assert out["outcome"] == "proposed" and out["promoted"] == "false" and out["branch"] == branch
    summary = project.summary.read_text()
    assert "## Retraining: proposed" in summary
    assert "merging this pull request makes it the champion" in summary
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
    ref = f"refs/heads/{branch}"  # exact: retrain-assets/<branch> ends with the same name
    pushed = run(["git", "ls-remote", str(project.origin), ref], proj, env).stdout.split()
    assert pushed and pushed[0] == _git(proj, env, "rev-parse", "HEAD")
    calls = (proj.parent / "bin" / "gh.log").read_text().splitlines()
    assert calls[0] == "auth setup-git"  # CI: git push authenticates with GH_TOKEN via gh
    assert calls[1].startswith(f"pr create --base main --head {branch} --title Retrain: model")
    assert calls[1].endswith("--body-file .reprotrain/retrain/report.md")
    assert _outputs(project.outputs)["pr-url"] == FAKE_PR_URL


@pytest.mark.slow
def test_pr_body_and_summary_images_are_pushed_urls(project: Project) -> None:
    """Every image of the PR body (and the job summary) is an absolute URL of a file in a
    commit that open-pr pushed (retrain-assets/<branch>), byte-identical to the model card's
    figure; none is a relative path into the git-ignored, DVC-cached reports/model_card."""
    proj, env = project.root, project.env
    branch = _outputs(project.outputs)["branch"]
    body = (proj / ".reprotrain" / "retrain" / "report.md").read_text()
    links = IMAGE.findall(body)
    in_card = IMAGE.findall((proj / "reports" / "model_card.md").read_text())
    assert len(links) == len(in_card) >= 2, links  # reliability, confusion, Grad-CAMs
    assert set(IMAGE.findall(project.summary.read_text())) >= set(links)
    assets = f"refs/heads/retrain-assets/{branch}"
    pushed = run(["git", "ls-remote", str(project.origin), assets], proj, env)
    sha = pushed.stdout.split()[0]
    prefix = f"https://github.com/example/reprotrain/raw/{sha}/model_card/"
    for link in links:
        assert link.startswith(prefix), link
        name = link[len(prefix) :]
        git = ["git", "--git-dir", str(project.origin)]
        raw = subprocess.run(
            [*git, "cat-file", "blob", f"{sha}:model_card/{name}"],
            capture_output=True,
            check=True,
            env=env,
        ).stdout
        local = proj / "reports" / "model_card" / name
        assert raw == local.read_bytes() and raw.startswith(b"\x89PNG"), name


@pytest.mark.slow
def test_push_sent_every_output_to_the_remote(project: Project) -> None:
    assert any(p.is_file() for p in (project.remote / "files" / "md5").rglob("*"))
    status = run(["dvc", "status", "--cloud"], project.root, project.env).stdout
    assert "in sync" in status, status


# ----------------------------------------------------------------- the merge promotes


def _champion(proj: Path) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(project_client(proj).get_model_version_by_alias(NAME, "champion").version)
    except MlflowException:
        return None


@pytest.mark.slow
def test_merge_promotes_the_challenger_with_an_audit(project: Project) -> None:
    """The fixture's `retrain.sh promote` (the merge job) moved champion none → v1: the
    retrain run itself never did (the only champion move is the merge's, by the git user)."""
    proj, env = project.root, project.env
    assert project.merged is not None
    assert project.merged.stdout.strip().splitlines()[-1] == "outcome=promoted version=1", (
        project.merged.stderr
    )
    assert _champion(proj) == 1
    client = project_client(proj)
    tags = client.get_model_version(NAME, "1").tags
    branch = _outputs(project.outputs)["branch"]
    head = _git(proj, env, "rev-parse", "--short", "HEAD")
    assert tags["reprotrain.previous_champion"] == "none"
    assert tags["reprotrain.promotion_reason"].startswith(
        f"explicit promotion: merged into {branch} as {head}: Retrain: model version 1 proposed"
    )
    assert tags["reprotrain.decided_against"] == "none"
    history = client.get_registered_model(NAME).tags["reprotrain.promotions"].splitlines()
    assert "champion none → v1 by" in history[-1] and "merged into" in history[-1]
    assert not any("by gate" in line for line in history), history
    # A re-run of the merge job is harmless.
    again = retrain(proj, env, "promote")
    assert again.stdout.strip() == "outcome=up-to-date"
    assert "already the champion" in again.stderr and _champion(proj) == 1


@pytest.mark.slow
def test_merge_refuses_when_the_champion_moved_since_the_decision(project: Project) -> None:
    """The race: after the gate compared v1 with "no champion", someone promoted another
    version by hand. The merge job must not replace it: one line, exit 2, nothing moved."""
    proj, env = project.root, project.env
    client = project_client(proj)
    other = client.create_model_version(NAME, source=(proj / "hotfix").as_uri()).version
    cmd = [sys.executable, "-m", "reprotrain", "promote", NAME]
    run([*cmd, str(other), "--reason", "hotfix"], proj, env)
    try:
        proc = retrain(proj, env, "promote", check=False)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stdout == "" and "Traceback" not in proc.stderr
        assert (
            proc.stderr.strip()
            .splitlines()[-1]
            .startswith(
                f"error: {NAME}: champion is v{other}, but the promotion of v1 was decided against "
                "no champion: champion not moved"
            )
        ), proc.stderr
        assert _champion(proj) == int(other)
    finally:
        run([*cmd, "--rollback", "--reason", "end of the race test"], proj, env)
    assert _champion(proj) == 1


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
    assert proc.returncode == 2 and "no proposed run" in proc.stderr


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
    # The merge job too: a throw-away local store is never promoted into.
    proc = retrain(proj, env, "promote", check=False)
    assert proc.returncode == 2 and "MLFLOW_TRACKING_URI is not set" in proc.stderr


def test_promote_without_a_decision_says_so(bare_project) -> None:
    proj, env = bare_project
    proc = retrain(proj, env, "promote", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("retrain: error: metrics/promotion.json was not written")
    )


def test_unknown_argument_and_help(bare_project) -> None:
    proj, env = bare_project
    proc = retrain(proj, env, "--bogus", check=False)
    assert proc.returncode == 2
    assert "usage: scripts/retrain.sh [open-pr | promote]" in proc.stderr
    help_text = retrain(proj, env, "--help").stdout
    assert "Exit codes:" in help_text and "outcome=not-promoted" in help_text
