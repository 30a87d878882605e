"""Decide, then apply, on a real SQLite registry: the champion's snapshot from its version
tags, its file downloaded and really scored on the current test set, the decision applied as
a compare-and-set, and every outcome recorded on the version, the run and its pipeline row."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from reprotrain import dag, tracking
from reprotrain.config import PipelineConfig, load_params
from reprotrain.evaluation import EvalSplit, decision
from reprotrain.evaluation.gate import GateRule
from reprotrain.evaluation.scoring import ModelScorer
from reprotrain.models import transfer
from reprotrain.paths import split_files
from reprotrain.tracking import registration
from reprotrain.tracking import registry as reg
from tests.conftest import no_mlflow_exports, params_project
from tests.evaluation.test_predictions import write_prepared
from tests.models.tiny import tiny_arrays, tiny_model_cfg

NAME = "tiny-classifier"
LABELS = ("red", "green")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """A project with a store, two tiny models that differ (b has halved weights), and a
    12-image test split both are scored on."""
    with no_mlflow_exports():
        root = params_project(tmp_path_factory.mktemp("registration") / "proj")
        keras.utils.set_random_seed(0)
        model = transfer.build_model(tiny_model_cfg(), len(LABELS), 0.0)
        model.save(root / "a.keras")
        model.set_weights([w * 0.5 for w in model.get_weights()])
        model.save(root / "b.keras")
        x, y = tiny_arrays(12)
        files = split_files(write_prepared(root / "prepared", x, y, list(LABELS)), "test")
        split = EvalSplit(files, PipelineConfig(), batch_size=4, seed=0, expected=12)
        yield root, load_params(root / "params.yaml"), split


def _client(root: Path):
    import mlflow

    uri = tracking.default_uri(root)
    return mlflow.MlflowClient(uri, registry_uri=uri)


def _accuracy(preds) -> float:
    return float(np.mean(preds.probs.argmax(axis=1) == preds.y_true))


def _challenger(preds, digest: str) -> decision.Challenger:
    return decision.Challenger(preds.y_true, preds.probs, LABELS, 32, digest)


def _round(run, scorer: ModelScorer, model: Path, digest: str, gate: str = "accuracy"):
    """What the evaluate stage does: snapshot, score the champion if needed, decide,
    register, apply. Returns the promotion record and whether the champion was scored."""
    challenger = _challenger(scorer.predictions(model), digest)
    policy = decision.Policy(gate, GateRule(min_accuracy=0.0), NAME)
    champion = registration.champion_snapshot(run.uri, NAME)
    scored = False
    if champion is not None and decision.needs_champion_scores(champion, challenger, policy):
        probs = scorer.predictions(registration.champion_file(NAME, champion)).probs
        after = champion.scored(probs, challenger.y_true, digest)
        registration.record_rescore(run.uri, NAME, champion, after)
        champion, scored = after, True
    verdict = decision.decide_promotion(challenger, champion, policy)
    log = lambda: registration.log_keras_model(model, 32, len(LABELS))  # noqa: E731
    version = registration.register_version(run, NAME, challenger, log)
    return registration.apply_decision(run, NAME, version, verdict, challenger.accuracy), scored


def test_decide_then_apply_with_a_really_rescored_champion(world) -> None:
    root, params, split = world
    scorer = ModelScorer(split, LABELS, top_k=1, calibration_bins=5)
    acc = {m: _accuracy(scorer.predictions(root / m)) for m in ("a.keras", "b.keras")}
    spec = dag.Stage("evaluate", params=("evaluate",))
    assert acc["b.keras"] > acc["a.keras"], acc  # the fixture's premise: b beats a
    with tracking.stage_run(spec, params, root) as run:
        first, _ = _round(run, scorer, root / "a.keras", "d1")
        snap = registration.champion_snapshot(run.uri, NAME)
        # b on the same test set: a's recorded accuracy is used, nothing is scored; b wins.
        same_set, scored_same = _round(run, scorer, root / "b.keras", "d1")
        # a on a new test set: the champion (v2 = b) is downloaded and scored for real (a
        # fresh scorer: nothing it could reuse).
        fresh = ModelScorer(split, LABELS, top_k=1, calibration_bins=5)
        new_set, scored_new = _round(run, fresh, root / "a.keras", "d2")
    assert first["promoted"] and first["alias"] == "champion" and first["version"] == 1
    assert first["champion_version"] is None
    assert first["accuracy"] == pytest.approx(acc["a.keras"])
    assert snap == decision.ChampionSnapshot(1, LABELS, 32, acc["a.keras"], "d1")
    assert not scored_same and same_set["champion_accuracy"] == pytest.approx(acc["a.keras"])
    assert same_set["promoted"] and same_set["version"] == 2
    assert scored_new and new_set["champion_version"] == 2
    assert new_set["champion_accuracy"] == pytest.approx(acc["b.keras"])
    assert not new_set["promoted"] and new_set["alias"] == "challenger"
    client = _client(root)
    v2 = client.get_model_version(NAME, "2")
    assert v2.tags["reprotrain.test_digest"] == "d2"  # the rescore is recorded ...
    assert v2.tags["reprotrain.rescored_from"] == f"d1:{acc['b.keras']}"  # ... with the old one
    for result in (first, same_set, new_set):
        tags = client.get_model_version(NAME, str(result["version"])).tags
        assert tags["reprotrain.promotion_reason"] == result["reason"]
        expected = "none" if result["champion_version"] is None else str(result["champion_version"])
        assert tags["reprotrain.decided_against"] == expected
    champion = client.get_model_version_by_alias(NAME, "champion")
    promoted = [r["version"] for r in (first, same_set, new_set) if r["promoted"]]
    assert int(champion.version) == promoted[-1]
    pipeline_row = client.get_run(run.parent_run_id).data.tags
    assert pipeline_row["reprotrain.registry.version"] == str(new_set["version"])


def test_a_champion_moved_after_the_decision_is_never_replaced(world) -> None:
    root, params, split = world
    scorer = ModelScorer(split, LABELS, top_k=1, calibration_bins=5)
    spec = dag.Stage("evaluate", params=("evaluate",))
    with tracking.stage_run(spec, params, root) as run:
        challenger = _challenger(scorer.predictions(root / "b.keras"), "d3")
        policy = decision.Policy("accuracy", GateRule(min_accuracy=0.0), NAME)
        champion = registration.champion_snapshot(run.uri, NAME)
        probs = scorer.predictions(registration.champion_file(NAME, champion)).probs
        champion = champion.scored(probs, challenger.y_true, "d3")
        verdict = decision.decide_promotion(challenger, champion, policy)
        assert verdict.promote  # b against the champion b: a tie promotes the newer model
        version = registration.register_version(
            run, NAME, challenger, lambda: registration.log_keras_model(root / "b.keras", 32, 2)
        )
        # Someone moves champion between the decision and its application.
        other = 1 if champion.version != 1 else 2
        reg.promote(run.uri, NAME, other, "a hand promotion meanwhile", by="test")
        result = registration.apply_decision(run, NAME, version, verdict, challenger.accuracy)
    assert not result["promoted"] and result["alias"] == "challenger"
    assert f"the champion changed to v{other}" in result["reason"]
    client = _client(root)
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == other


def test_a_champion_for_another_task_is_registered_beside_without_an_alias(world) -> None:
    root, params, split = world
    scorer = ModelScorer(split, ("cats", "dogs"), top_k=1, calibration_bins=5)
    spec = dag.Stage("evaluate", params=("evaluate",))
    with tracking.stage_run(spec, params, root) as run:
        preds = scorer.predictions(root / "a.keras")
        challenger = decision.Challenger(preds.y_true, preds.probs, ("cats", "dogs"), 32, "d1")
        champion = registration.champion_snapshot(run.uri, NAME)
        policy = decision.Policy("paired", GateRule(min_accuracy=0.0), NAME)
        assert not decision.needs_champion_scores(champion, challenger, policy)
        verdict = decision.decide_promotion(challenger, champion, policy)
        version = registration.register_version(
            run, NAME, challenger, lambda: registration.log_keras_model(root / "a.keras", 32, 2)
        )
        result = registration.apply_decision(run, NAME, version, verdict, challenger.accuracy)
    assert result["alias"] is None and not result["comparable"] and not result["promoted"]
    assert f"v{version} is registered without an alias" in result["reason"]
    assert f"python -m reprotrain promote {NAME} {version}" in result["reason"]
