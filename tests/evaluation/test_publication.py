"""What every kind's evaluate publishes after the decision, on a real SQLite store:
promotion.json written and logged, the export report's tags on the version (linked to the
export run named in its sidecar), the reports folder logged and the card as the version's
description; nothing is attached when export has not run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reprotrain import dag, tracking
from reprotrain.config import load_params
from reprotrain.evaluation import publication
from reprotrain.tracking.lineage import write_sidecar
from tests.conftest import enter_project, no_mlflow_exports, params_project

NAME = "published"
REPORT = {
    "keras": {"accuracy": 0.9, "size_bytes": 2000, "latency_ms": 9.0},
    "formats": {
        "saved_model": {
            "accuracy": 0.9,
            "agreement": 1.0,
            "size_bytes": 1000,
            "latency_ms": 2.5,
            "path": "p",
            "shipped": True,
            "reason": "shipped: ok",
        }
    },
}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with no_mlflow_exports():
        root = enter_project(params_project(tmp_path / "proj"), monkeypatch)
        yield root


@pytest.mark.slow
def test_promotion_exports_and_card_reach_the_run_and_the_version(project: Path) -> None:
    import mlflow

    (project / "metrics").mkdir()
    (project / "metrics" / "export.json").write_text(json.dumps(REPORT))
    sidecar = project / "models" / "export.run.json"
    write_sidecar(sidecar, {"run_id": "abc123"})
    card = project / "reports" / "model_card.md"
    card.parent.mkdir()
    card.write_text("# the card\n")
    params = load_params(project / "params.yaml")
    with tracking.stage_run(dag.Stage("evaluate", params=("evaluate",)), params, project) as run:
        client = mlflow.MlflowClient(run.uri, registry_uri=run.uri)
        client.create_registered_model(NAME)
        v1 = client.create_model_version(NAME, source=(project / "m1").as_uri()).version
        v2 = client.create_model_version(NAME, source=(project / "m2").as_uri()).version
        promotion = {"registered_model": NAME, "version": int(v1), "promoted": True}
        export = publication.record_promotion(run, promotion, Path("models/export.run.json"))
        publication.publish_card(run, promotion, Path("reports/model_card.md"))
        (project / "metrics" / "export.json").unlink()  # export not run: nothing to attach
        later = {"registered_model": NAME, "version": int(v2), "promoted": False}
        assert publication.record_promotion(run, later, sidecar) is None
        run_id = run.run_id
    assert export == REPORT
    assert json.loads((project / "metrics" / "promotion.json").read_text()) == later
    tags = client.get_model_version(NAME, v1).tags
    assert tags["export.shipped"] == "saved_model"
    assert tags["export.saved_model.uri"] == "runs:/abc123/export/saved_model"
    assert tags["reprotrain.model_card"] == f"runs:/{run_id}/reports/model_card.md"
    assert client.get_model_version(NAME, v1).description == "# the card\n"
    assert not any(k.startswith("export.") for k in client.get_model_version(NAME, v2).tags)
    logged = {a.path for a in client.list_artifacts(run_id)}
    assert {"promotion.json", "reports"} <= logged, logged
