"""The train_head and finetune stages as the real `dvc repro` of the session's promoted tiny
project left them: outputs, the logged trainable set, MLflow lineage, and that a finetune.*
change invalidates only finetune."""

from __future__ import annotations

import json

import keras
import pytest
import yaml
from mlflow.tracking import MlflowClient

from reprotrain.models import transfer
from tests.conftest import Project, restore_workspace, run


@pytest.mark.slow
def test_stages_outputs_trainable_set_and_param_scoping(promoted_project: Project) -> None:
    proj, env = promoted_project.root, promoted_project.env
    assert "Running stage 'finetune'" in promoted_project.first.stderr

    for name in ("head", "finetuned"):
        assert (proj / "models" / f"{name}.keras").is_file()
        history = json.loads((proj / "models" / f"{name}.history.json").read_text())
        assert history["epoch"][0] == 1 and "val_accuracy" in history
        run_id = json.loads((proj / "models" / f"{name}.run.json").read_text())["run_id"]
        assert run_id
    assert list((proj / "models" / "tensorboard" / "finetune" / "validation").iterdir())
    assert not (proj / ".reprotrain" / "checkpoints" / "finetune").exists()

    # TINY_PARAMS unfreeze the top 10 base layers: of those only three have weights and are
    # not BatchNormalization.
    expected = ["block_16_depthwise", "block_16_project", "Conv_1"]
    metrics = json.loads((proj / "metrics" / "finetune.json").read_text())
    model = keras.saving.load_model(proj / "models" / "finetuned.keras", compile=False)
    summary = transfer.trainable_summary(model)
    assert summary["trainable_base_layers"] == expected
    assert metrics["trainable_base_layer_count"] == 3
    assert metrics["trainable_params"] == summary["trainable_params"]
    # What fine-tuning added, on the test split: the numbers evaluate scores on its own, the
    # gate's paired test, one line (issue 27); the model card shows the same.
    vs = metrics["vs_head"]
    evaluated = json.loads((proj / "metrics" / "evaluate.json").read_text())
    assert vs["n"] == evaluated["n_test"]
    assert vs["finetuned_accuracy"] == pytest.approx(evaluated["accuracy"])
    assert vs["head_accuracy"] == pytest.approx(evaluated["head"]["accuracy"])
    assert vs["kept_head"] == metrics["kept_start_weights"]
    assert {"challenger_only", "champion_only", "p_value"} <= set(vs["mcnemar"])
    assert vs["summary"].startswith("fine-tuning ") and "\n" not in vs["summary"]
    card_text = (proj / "reports" / "model_card.md").read_text()
    assert "### What fine-tuning added" in card_text
    head_metrics = json.loads((proj / "metrics" / "train_head.json").read_text())
    assert head_metrics["trainable_base_layer_count"] == 0
    assert head_metrics["feature_cache"] is True

    run_id = json.loads((proj / "models" / "finetuned.run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlruns' / 'mlflow.db'}")
    tags = client.get_run(run_id).data.tags
    steps = client.get_metric_history(run_id, "val_accuracy")
    assert tags["reprotrain.trainable_layers"] == ",".join(expected)
    assert tags["reprotrain.trainable_layer_count"] == "3"
    assert tags["reprotrain.trainable_params"] == str(summary["trainable_params"])
    history = json.loads((proj / "models" / "finetuned.history.json").read_text())
    assert len(steps) == len(history["epoch"])

    # A finetune.* change invalidates finetune only (not prepare, not train_head).
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["finetune"]["learning_rate"] = 2e-5
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = json.loads(run(["dvc", "status", "--json"], proj, env).stdout)
    finally:
        restore_workspace(promoted_project)
    changed = set(status)
    assert "dvc.yaml:finetune" in changed or "finetune" in changed, status
    assert not changed & {"prepare", "train_head", "dvc.yaml:prepare", "dvc.yaml:train_head"}
