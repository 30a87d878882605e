"""The baseline stage as the real `dvc repro` of the session's promoted tiny project left it
(outputs, MLflow run, sidecar), param scoping (a baseline.* change reruns baseline only, a
model.backbone change train_head only) checked with real `dvc status`, and the comparison
helpers evaluate uses."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from reprotrain.errors import DataError
from reprotrain.evaluation import compare
from reprotrain.models import loading, scratch
from tests.conftest import Project, run


def changed_stages(proj: Path, env: dict[str, str], **edits: dict) -> set[str]:
    """Stages `dvc status baseline train_head` (the two branches and what they depend on)
    reports after editing params.yaml (restored afterwards)."""
    original = (proj / "params.yaml").read_text()
    params = yaml.safe_load(original)
    for section, values in edits.items():
        params[section].update(values)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        cmd = ["dvc", "status", "--json", "baseline", "train_head"]
        status = json.loads(run(cmd, proj, env).stdout)
    finally:
        (proj / "params.yaml").write_text(original)
    return {name.removeprefix("dvc.yaml:") for name in status} - {"fetch"}


@pytest.mark.slow
def test_baseline_stage_and_param_scoping(promoted_project: Project) -> None:
    """The tiny project's baseline: TINY_PARAMS (tests/conftest.py), a cnn at 32 px, 2 epochs."""
    proj, env = promoted_project.root, promoted_project.env
    assert "Running stage 'baseline'" in promoted_project.first.stderr

    model = loading.load_model(proj / "models" / "baseline.keras", num_classes=2, image_size=32)
    assert model.name == "cnn"
    metrics = json.loads((proj / "metrics" / "baseline.json").read_text())
    assert metrics["epochs_run"] == 2 and 0 <= metrics["val_accuracy"] <= 1
    assert metrics["trainable_params"] == scratch.parameter_count(model)["trainable_params"]
    history = json.loads((proj / "models" / "baseline.history.json").read_text())
    assert history["epoch"] == [1, 2]
    run_id = json.loads((proj / "models" / "baseline.run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{proj / 'mlruns' / 'mlflow.db'}")
    logged = client.get_run(run_id)
    assert logged.data.tags["reprotrain.stage"] == "baseline"
    assert logged.data.tags["reprotrain.architecture"] == "cnn"
    assert logged.data.params["baseline.architecture"] == "cnn"
    assert len(client.get_metric_history(run_id, "val_accuracy")) == 2
    assert logged.info.status == "FINISHED"

    # Nothing changed: both branches are up to date.
    assert changed_stages(proj, env) == set()
    # The two branches off prepare are independent.
    assert changed_stages(proj, env, baseline={"architecture": "mlp"}) == {"baseline"}
    assert changed_stages(proj, env, model={"backbone": "mobilenet_v3_small"}) == {"train_head"}
    assert changed_stages(proj, env, baseline={"image_size": 48}) == {"baseline"}
    assert changed_stages(proj, env, train_head={"dropout": 0.5}) == {"train_head"}


# ----------------------------------------------------------------------- comparison helpers


def test_transfer_gain() -> None:
    assert compare.transfer_gain(0.93, 0.71) == pytest.approx(0.22)
    assert compare.transfer_gain(0.5, 0.75) == pytest.approx(-0.25)
    for bad in (1.2, -0.1, float("nan"), None):
        with pytest.raises(DataError, match="must be an accuracy in"):
            compare.transfer_gain(bad, 0.5)  # type: ignore[arg-type]


def test_per_class_recall_rows_and_plot(tmp_path: Path) -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2])
    recall = compare.per_class_recall(y_true, np.array([0, 1, 1, 1, 0, 0]), 4)
    np.testing.assert_allclose(recall, [0.5, 1.0, 0.0, 0.0])
    labels = ["ants", "bees", "wasps", "moths"]
    recalls = {"finetuned": [1, 1, 0.5, 0], "head": [0.9, 1, 0.5, 0], "baseline": recall}
    rows = compare.recall_rows(labels, recalls)
    assert rows[0] == {"class": "ants", "finetuned": 1.0, "head": 0.9, "baseline": 0.5}
    csv_path = compare.write_recall_csv(tmp_path / "plots" / compare.RECALL_CSV, labels, recalls)
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "class,finetuned,head,baseline" and len(lines) == 5
    png = compare.plot_recall_comparison(labels, recalls, tmp_path / compare.RECALL_PNG)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(DataError, match="3 values for 4 classes"):
        compare.recall_rows(labels, {"baseline": [1, 1, 1]})
