"""The scheduled-retraining and promote-on-merge workflows are checked by real offline
linters, not by eye.

``check-jsonschema`` validates it against GitHub's workflow schema (a typo in a key would
otherwise only show up when the schedule fires), ``zizmor`` audits it for the usual Actions
security mistakes (unpinned actions, credentials left in the checkout, template injection,
over-broad permissions), and a few assertions pin the contract the README promises.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, run, subprocess_env

WORKFLOW = REPO / ".github" / "workflows" / "retrain.yml"
PROMOTE = REPO / ".github" / "workflows" / "promote.yml"
WORKFLOWS = (WORKFLOW, PROMOTE)
SCRIPT = REPO / "scripts" / "retrain.sh"
BIN = Path(sys.executable).parent


def _workflow(path: Path = WORKFLOW) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the bare key `on` as the boolean True.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def _steps(path: Path = WORKFLOW) -> list[dict[str, Any]]:
    return [s for job in _workflow(path)["jobs"].values() for s in job["steps"]]


@pytest.mark.slow
def test_workflow_matches_github_schema() -> None:
    schema = [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows"]
    proc = run([*schema, *map(str, WORKFLOWS)], REPO)
    assert "ok" in proc.stdout


@pytest.mark.parametrize("persona", ["regular", "pedantic"])
def test_zizmor_finds_nothing(persona: str) -> None:
    """No findings, not even pedantic ones, and no `# zizmor: ignore` comment to get there."""
    env = subprocess_env(ZIZMOR_OFFLINE="true", NO_COLOR="1")
    zizmor = [str(BIN / "zizmor"), "--offline", "--no-config", f"--persona={persona}"]
    proc = run([*zizmor, *map(str, WORKFLOWS)], REPO, env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path in WORKFLOWS:
        assert "zizmor: ignore" not in path.read_text()


def test_promote_runs_on_the_default_branch_only_and_reads_no_write_token() -> None:
    """Only a merge moves `champion`: the promote workflow runs on pushes to main that change
    metrics/promotion.json, its job only on the default branch, one at a time, with a
    read-only token, and all it does is `scripts/retrain.sh promote`."""
    doc = _workflow(PROMOTE)
    assert doc["on"] == {"push": {"branches": ["main"], "paths": ["metrics/promotion.json"]}}
    assert doc["permissions"] == {}
    assert doc["concurrency"]["cancel-in-progress"] is False
    (job,) = doc["jobs"].values()
    assert job["if"] == "github.ref_name == github.event.repository.default_branch"
    assert job["permissions"] == {"contents": "read"}
    (step,) = [s for s in _steps(PROMOTE) if "scripts/retrain.sh" in s.get("run", "")]
    assert step["run"].rstrip().endswith("scripts/retrain.sh promote")
    assert step["env"]["RETRAIN_REQUIRE_TRACKING_URI"] == "1"
    assert "MLFLOW_TRACKING_URI" in step["env"] and "GH_TOKEN" not in step["env"]
    assert all("${{" not in s["run"] for s in _steps(PROMOTE) if "run" in s)
    # The retraining workflow never promotes: its script runs dvc repro in review mode.
    assert "REPROTRAIN_PROMOTE=challenger dvc repro" in SCRIPT.read_text()


def test_triggers_permissions_concurrency_timeout() -> None:
    doc = _workflow()
    assert doc["on"]["schedule"][0]["cron"]
    assert "workflow_dispatch" in doc["on"]
    assert doc["permissions"] == {}, "workflow-level token must have no permissions"
    assert doc["concurrency"]["group"] and doc["concurrency"]["cancel-in-progress"] is False
    for job in doc["jobs"].values():
        assert 0 < job["timeout-minutes"] <= 360
        assert set(job["permissions"]) <= {"contents", "pull-requests"}


def test_actions_pinned_and_checkout_without_credentials() -> None:
    uses = [s for path in WORKFLOWS for s in _steps(path) if "uses" in s]
    assert uses
    for step in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
    checkout = [s for s in uses if s["uses"].startswith("actions/checkout@")]
    assert checkout and all(s["with"]["persist-credentials"] is False for s in checkout)


def test_secrets_only_through_env_and_work_in_the_script() -> None:
    """No `${{ }}` in any `run:` (template injection); the script does the work."""
    runs = [s["run"] for s in _steps() if "run" in s]
    assert all("${{" not in r for r in runs), runs
    assert any(r.strip().startswith("make setup") for r in runs)
    script_steps = [s for s in _steps() if "scripts/retrain.sh" in s.get("run", "")]
    retrain, open_pr = script_steps
    assert "MLFLOW_TRACKING_URI" in retrain["env"]
    assert "GH_TOKEN" not in retrain["env"], "training code must not see the write token"
    assert open_pr["run"].rstrip().endswith("scripts/retrain.sh open-pr")
    # A branch was committed (the gate proposed the version): open its PR.
    assert open_pr["if"] == f"steps.{retrain['id']}.outputs.branch != ''"
    assert "GH_TOKEN" in open_pr["env"]
    text = WORKFLOW.read_text()
    for match in re.finditer(r"\$\{\{\s*secrets\.(\w+)", text):
        line = text[: match.start()].rsplit("\n", 1)[-1]
        assert re.fullmatch(r"\s+\w+: ", line), f"secret {match.group(1)} outside an env mapping"


def test_script_is_executable_bash() -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env bash\n")
    run(["bash", "-n", str(SCRIPT)], REPO)
    # shellcheck is not part of the locked environment; use it where a machine has it.
    if shutil.which("shellcheck"):
        run(["shellcheck", str(SCRIPT)], REPO)
