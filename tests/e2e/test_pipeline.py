"""The product, end to end: `dvc repro` on the real hymenoptera photos with the real ImageNet
MobileNetV2 weights (offline cache), on 2 CPU cores, default params.yaml.

Runs once per session (≈ 4–6 min on 2 cores); the assertions below share that run. The
acceptance bars come from the issues: fine-tuned val and test accuracy ≥ 0.93, fine-tuned
test accuracy ≥ head-only, DVC metrics/plots commands work on the result, every stage has an
MLflow run, and the registry holds a version with an alias.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_project, project_client, run, subprocess_env

pytestmark = pytest.mark.e2e

STAGES = ("fetch", "prepare", "train_head", "finetune", "evaluate")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory, hymenoptera: Path, keras_home: Path):
    """A project copy with default params; data from the URL's offline mirror."""
    proj = make_project(tmp_path_factory.mktemp("e2e") / "proj")
    env = subprocess_env(keras_home, REPROTRAIN_DATA_MIRROR=str(hymenoptera))
    proc = run(["dvc", "repro"], proj, env, timeout=1500)
    return proj, env, proc


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_repro_runs_every_stage(real_run) -> None:
    proj, _, proc = real_run
    out = proc.stdout + proc.stderr
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    assert (proj / "dvc.lock").is_file()
    assert (proj / "models" / "finetuned.keras").stat().st_size > 1_000_000


def test_prepare_counts_every_photo(real_run) -> None:
    proj, _, _ = real_run
    stats = _json(proj / "data" / "prepared" / "stats.json")
    text = json.dumps(stats)
    assert "398" in text or sum_counts(stats) + stats.get("quarantined", 0) == 398


def sum_counts(stats: dict) -> int:
    splits = stats.get("splits") or stats.get("counts") or {}
    total = 0
    for value in splits.values():
        total += (
            value["total"]
            if isinstance(value, dict) and "total" in value
            else (sum(value.values()) if isinstance(value, dict) else int(value))
        )
    return total


def test_accuracy_bars(real_run) -> None:
    proj, _, _ = real_run
    finetune = _json(proj / "metrics" / "finetune.json")
    evaluate = _json(proj / "metrics" / "evaluate.json")
    val_acc = finetune.get("best_val_accuracy", finetune.get("val_accuracy"))
    assert val_acc >= 0.93, finetune
    assert evaluate["accuracy"] >= 0.93, evaluate
    assert evaluate["accuracy"] >= evaluate["head"]["accuracy"], evaluate


def test_dvc_metrics_and_plots_commands(real_run) -> None:
    proj, env, _ = real_run
    shown = run(["dvc", "metrics", "show", "--json"], proj, env).stdout
    assert "accuracy" in shown
    run(["git", "add", "-A"], proj, env)
    run(["git", "commit", "-qm", "pipeline run"], proj, env)
    diff = run(["dvc", "metrics", "diff", "HEAD~1", "--all", "--md"], proj, env).stdout
    assert "metrics/evaluate.json" in diff
    out = run(["dvc", "plots", "show", "-o", "plots_html"], proj, env).stdout
    html = proj / "plots_html" / "index.html"
    assert html.is_file() and html.stat().st_size > 1000, out


def test_every_stage_tracked_and_model_registered(real_run) -> None:
    proj, _, _ = real_run
    db = proj / "mlruns" / "mlflow.db"
    assert db.is_file()
    client = project_client(proj)
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exp_ids, max_results=1000)
    names = {r.info.run_name for r in runs if r.info.status == "FINISHED"}
    assert {"prepare", "train_head", "finetune", "evaluate"} <= names, names
    assert not [r for r in runs if r.info.status == "RUNNING"]
    aliases = {a for mv in client.search_model_versions() for a in mv.aliases}
    promotion = _json(proj / "metrics" / "promotion.json")
    assert promotion["alias"] in aliases
    assert promotion["promoted"] is True  # first run, no champion, accuracy above the floor
