"""The accuracy rule (pure) and the real registry flow on a SQLite store, as the evaluate
stage runs it (snapshot → score the champion → decide → register → apply): move
`champion`/`challenger`, score the downloaded champion when the test set changed, refuse on
store or artifact errors and on a moved champion, resolve models:/ URIs, and serve
models:/NAME@champion over REST on loopback."""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from reprotrain import dag, tracking
from reprotrain.config import PipelineConfig, load_params
from reprotrain.errors import ConfigError
from reprotrain.evaluation import decision
from reprotrain.evaluation import gate as promotion
from reprotrain.evaluation.gate import GateRule
from reprotrain.evaluation.predictions import EvalSplit
from reprotrain.evaluation.scoring import ModelScorer
from reprotrain.paths import split_files
from reprotrain.tracking import registration
from reprotrain.tracking import registry as reg
from tests.conftest import (
    free_port,
    http_server,
    no_mlflow_exports,
    params_project,
    project_client,
    subprocess_env,
)
from tests.evaluation.test_predictions import write_prepared
from tests.models.tiny import tiny_arrays

NAME = "tiny-classifier"
LABELS = ["red", "green"]


# --------------------------------------------------------------------------- the rule


def test_decide_floor_champion_and_improvement() -> None:
    below = promotion.decide(0.85, None, min_accuracy=0.9, min_improvement=0.0)
    assert (below.promoted, below.alias) == (False, "challenger") and "floor" in below.reason
    first = promotion.decide(0.95, None, min_accuracy=0.9, min_improvement=0.0)
    assert (first.promoted, first.alias) == (True, "champion")
    tie = promotion.decide(0.9, 0.9, min_accuracy=0.0, min_improvement=0.0)
    assert tie.promoted  # the newer model wins a tie when no improvement is required
    # 0.9 - 0.8 is 0.09999999999999998 in binary floating point: still "by 0.1".
    assert promotion.decide(0.9, 0.8, min_accuracy=0.0, min_improvement=0.1).promoted
    short = promotion.decide(0.91, 0.9, min_accuracy=0.0, min_improvement=0.05)
    assert (short.promoted, short.alias) == (False, "challenger")
    assert "min_improvement" in short.reason
    floor_first = promotion.decide(0.99, 0.5, min_accuracy=0.995, min_improvement=0.0)
    assert not floor_first.promoted and "floor" in floor_first.reason


# --------------------------------------------------------------------------- the registry


def _colour_model(path: Path, num_classes: int = 2, size: int = 32) -> Path:
    """A classifier that is right on every tiny image: the class is the dominant colour
    channel (tests/models/tiny.py), read by a fixed average-then-linear layer."""
    dense = keras.layers.Dense(num_classes, activation="softmax")
    inputs = keras.Input((size, size, 3), name="image")  # the served signature's input name
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
    dense.set_weights([np.eye(3, num_classes, dtype=np.float32) / 10, np.zeros(num_classes)])
    model.save(path)
    return path


@pytest.fixture(scope="module")
def test_split(tmp_path_factory: pytest.TempPathFactory):
    """20 tiny images, red then green alternating, written as test shards."""
    x, y = tiny_arrays(20)
    root = tmp_path_factory.mktemp("split")
    files = split_files(write_prepared(root / "prepared", x, y, LABELS), "test")
    return EvalSplit(files, PipelineConfig(), batch_size=8, seed=0, expected=20), y


def _probs(y: np.ndarray, accuracy: float) -> np.ndarray:
    """Confident probabilities right on the first ``accuracy`` share of ``y``."""
    n_right = round(accuracy * len(y))
    pred = np.where(np.arange(len(y)) < n_right, y, 1 - y)
    return np.eye(2)[pred] * 0.8 + 0.1


def _flow(run, model: Path, labels: list[str], digest: str, split, **options) -> dict:
    """The evaluate stage's promotion, with the candidate's scores given (``accuracy``, or
    ``probs``) and the champion's file downloaded and scored for real on ``split`` (unless
    ``champion_probs`` says what scoring it gives). ``before_apply`` runs between the
    decision and its application, where a concurrent promotion would land."""
    eval_split, y = split
    probs = options.get("probs")
    if probs is None:
        probs = _probs(y, options.get("accuracy", 0.9))
    size = options.get("image_size", 32)
    challenger = decision.Challenger(y, probs, tuple(labels), size, digest)
    rule = GateRule(min_accuracy=options.get("min_accuracy", 0.5), seed=0)
    policy = decision.Policy(
        options.get("gate", "accuracy"), rule, NAME, options.get("mode", "champion")
    )
    champion = registration.champion_snapshot(run.uri, NAME)
    if champion is not None and decision.needs_champion_scores(champion, challenger, policy):
        file = registration.champion_file(NAME, champion)
        scored = options.get("champion_probs")
        if scored is None:
            scorer = ModelScorer(eval_split, labels, top_k=1, calibration_bins=5)
            scored = scorer.predictions(file, hint="it cannot be scored on this test set").probs
        after = champion.scored(scored, y, digest)
        if policy.gate == "accuracy":
            registration.record_rescore(run.uri, NAME, champion, after)
        champion = after
    verdict = decision.decide_promotion(challenger, champion, policy)
    if "before_apply" in options:
        options["before_apply"]()
    n = len(labels)
    version = registration.register_version(
        run, NAME, challenger, lambda: registration.log_keras_model(model, size, n)
    )
    return registration.apply_decision(run, NAME, version, verdict, challenger.accuracy)


def _register(root: Path, model: Path, labels: list[str], digest: str, split, **options):
    """:func:`_flow` in its own evaluate run."""
    params = load_params(root / "params.yaml")
    with tracking.stage_run(dag.Stage("evaluate", params=("evaluate",)), params, root) as run:
        return _flow(run, model, labels, digest, split, **options)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, test_split):
    """A project root with a store, a saved colour model, and four registered versions."""
    with no_mlflow_exports():
        root = params_project(tmp_path_factory.mktemp("registry") / "proj")
        model_path = _colour_model(root / "model.keras")
        model = keras.saving.load_model(model_path)
        results = [
            _register(root, model_path, LABELS, digest, test_split, accuracy=acc)
            for digest, acc in (("d1", 0.8), ("d1", 0.7), ("d2", 0.95), ("d2", 0.4))
        ]
        yield root, model, results


@pytest.mark.slow
def test_versions_aliases_and_rescoring(registry) -> None:
    root, _, results = registry
    first, worse, new_test_set, below_floor = results
    assert first["promoted"] and first["alias"] == "champion" and first["version"] == 1
    assert first["champion_version"] is None
    # Same test set, lower accuracy: challenger; the champion's recorded 0.8 is compared.
    assert not worse["promoted"] and worse["alias"] == "challenger"
    assert worse["champion_accuracy"] == pytest.approx(0.8)
    # New test set: the champion (v1, the colour model) is scored on it for real (1.0),
    # and 0.95 does not beat it.
    assert new_test_set["champion_version"] == 1 and new_test_set["champion_accuracy"] == 1.0
    assert not new_test_set["promoted"] and new_test_set["version"] == 3
    assert not below_floor["promoted"] and "floor" in below_floor["reason"]
    assert set(first) >= {
        "promoted",
        "alias",
        "version",
        "reason",
        "champion_version",
        "champion_accuracy",
        "accuracy",
    }

    uri = tracking.default_uri(root)
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 1
    assert int(client.get_model_version_by_alias(NAME, "challenger").version) == 4
    v1 = client.get_model_version(NAME, "1")
    assert v1.tags["reprotrain.test_digest"] == "d2"  # its score on the current test set
    assert float(v1.tags["reprotrain.test_accuracy"]) == 1.0
    assert v1.tags["reprotrain.rescored_from"] == "d1:0.8"
    v3 = client.get_model_version(NAME, "3")
    assert v3.tags["reprotrain.test_digest"] == "d2"
    assert json.loads(v3.tags["reprotrain.labels"]) == LABELS
    mlflow.set_registry_uri(uri)
    mlmodel = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/3")) / "MLmodel"
    assert "signature" in mlmodel.read_text() and "keras" in mlmodel.read_text()

    path = reg.resolve_model(f"models:/{NAME}@champion", root)
    assert path.suffix == ".keras" and path.is_file()
    assert reg.resolve_model(f"models:/{NAME}/1", root) == path
    assert reg.resolve_labels(f"models:/{NAME}@champion", root) == LABELS
    with pytest.raises(tracking.TrackingError):
        reg.resolve_model(f"models:/{NAME}@nope", root)
    # runs:/RUN_ID/model (what `predict` accepts too): the run's logged model, downloaded.
    run_id = v3.tags["reprotrain.run_id"]
    from_run = reg.resolve_model(f"runs:/{run_id}/model", root)
    assert from_run.suffix == ".keras" and from_run.is_file() and from_run != path
    assert reg.resolve_labels(f"runs:/{run_id}/model", root) == LABELS
    with pytest.raises(tracking.TrackingError, match="not a models"):
        reg.resolve_model("s3://bucket/model.keras", root)


@pytest.mark.slow
def test_serve_champion_over_rest(registry) -> None:
    """`mlflow models serve -m models:/NAME@champion` answers with the model's predictions."""
    root, model, _ = registry
    port = free_port()
    env = subprocess_env(MLFLOW_TRACKING_URI=tracking.default_uri(root))
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion"]
    cmd += ["--env-manager", "local", "-p", str(port), "-h", "127.0.0.1", "--workers", "1"]
    with http_server(cmd, root, env, base + "/ping", timeout=180, what="model server"):
        x, _ = tiny_arrays(n=4)
        body = json.dumps({"inputs": x.tolist()}).encode()
        req = urllib.request.Request(
            base + "/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                served = np.asarray(json.loads(resp.read())["predictions"], dtype=np.float32)
        except urllib.error.HTTPError as exc:
            raise AssertionError(exc.read().decode()[:2000]) from None
        expected = model.predict(x, verbose=0)
        assert served.shape == (4, 2)
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- failure modes


def _small_model(path: Path, num_classes: int, size: int = 32) -> Path:
    """A few-kilobyte Keras classifier (the registry does not care what is inside)."""
    model = keras.Sequential(
        [
            keras.Input((size, size, 3)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(num_classes, activation="softmax"),
        ]
    )
    model.save(path)
    return path


@pytest.mark.slow
def test_changed_task_registers_without_promoting(store_project: Path, test_split) -> None:
    """The registry holds the ants/bees champion; the new task has 10 classes (the champion
    is never downloaded: the paired gate would need its scores if it were comparable)."""
    root = store_project
    ab = ["ants", "bees"]
    first = _register(root, _small_model(root / "ab.keras", 2), ab, "d1", test_split, gate="paired")
    assert first["promoted"] and first["version"] == 1
    ten = [f"c{i}" for i in range(10)]
    ten_probs = np.eye(10)[test_split[1]]
    result = _register(
        root, _small_model(root / "ten.keras", 10), ten, "d2", test_split, probs=ten_probs
    )
    assert result["promoted"] is False and result["alias"] is None
    assert result["comparable"] is False and result["version"] == 2
    reason = result["reason"]
    assert "champion v1 has classes [ants, bees]; this model has 10 other classes" in reason
    assert "tracking.registered_model" in reason and f"promote {NAME} 2" in reason
    assert "\n" not in reason
    client = project_client(root)
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 1
    v2 = client.get_model_version(NAME, "2")
    assert v2.aliases == [] and v2.tags["reprotrain.promotion_reason"] == reason
    run = client.get_run(v2.tags["reprotrain.run_id"])
    assert run.data.tags["reprotrain.promotion.reason"] == reason
    # Another input size is not comparable either.
    big = _small_model(root / "big.keras", 2, 48)
    other = _register(root, big, ab, "d3", test_split, gate="paired", image_size=48)
    assert not other["promoted"] and "takes 32×32 images; this model takes 48×48" in other["reason"]


@pytest.mark.slow
def test_only_a_missing_alias_means_no_champion(
    store_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow 3.17 on SQLite: a missing alias is INVALID_PARAMETER_VALUE "... not found"; a
    stopped server is another error, which must fail, never crown the new model."""
    from reprotrain.tracking.registry import get_champion

    uri = tracking.default_uri(store_project)
    client = project_client(store_project)
    client.create_registered_model(NAME)
    assert get_champion(client, NAME, uri, "x") is None
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(tracking.TrackingError, match=r"could not look up .*champion not moved"):
        get_champion(mlflow.MlflowClient(down, registry_uri=down), NAME, down, "champion not moved")


@pytest.mark.slow
def test_store_or_artifact_errors_never_promote(store_project: Path, test_split) -> None:
    """A damaged store, then a champion whose files are gone: evaluate fails with one line,
    registers nothing and leaves `champion` where it was."""
    root = store_project
    model = _small_model(root / "m.keras", 2)
    assert _register(root, model, LABELS, "d1", test_split)["version"] == 1
    client = project_client(root)

    def state() -> tuple[str, int]:
        champ = str(client.get_model_version_by_alias(NAME, "champion").version)
        return champ, len(client.search_model_versions(f"name = '{NAME}'"))

    before = state()
    db = root / "mlruns" / "mlflow.db"
    backup = root / "mlflow.db.bak"
    params = load_params(root / "params.yaml")
    with tracking.stage_run(dag.Stage("evaluate", params=("evaluate",)), params, root) as run:
        shutil.copy2(db, backup)
        db.write_bytes(b"this is not a database" * 400)
        try:
            with pytest.raises(tracking.TrackingError, match=r"could not look up|cannot be opened"):
                _flow(run, model, LABELS, "d1", test_split, accuracy=0.99, min_accuracy=0.0)
        finally:
            shutil.copy2(backup, db)
    assert state() == before

    # The champion's model files are deleted: it cannot be re-scored on a new test set.
    source = client.get_model_version(NAME, "1").source  # models:/m-<id>
    logged = mlflow.get_logged_model(source.rsplit("/", 1)[-1])
    shutil.rmtree(Path(urllib.request.url2pathname(logged.artifact_location[len("file://") :])))
    with pytest.raises(tracking.TrackingError, match=r"champion v1 .* could not be re-scored"):
        _register(root, model, LABELS, "d2", test_split)
    assert state() == before


@pytest.mark.slow
def test_paired_gate_through_the_registry(store_project: Path, test_split) -> None:
    """The paired gate decides with both models' predictions on the same images; its
    statistics land in the result (promotion.json) and the version's tags."""
    root = store_project
    y = test_split[1]
    good = _probs(y, 1.0)
    bad = _probs(y, 0.5)  # wrong on the second half of the images
    model = _colour_model(root / "m.keras")
    first = _register(root, model, LABELS, "d1", test_split, probs=good, gate="paired")
    assert first["promoted"] and first["gate"]["champion_accuracy"] is None
    # The champion (the colour model, right on all 20) scored for real: bad loses.
    worse = _register(root, model, LABELS, "d1", test_split, probs=bad, gate="paired")
    assert not worse["promoted"] and "McNemar p = " in worse["reason"]
    stats = worse["gate"]
    assert stats["champion_accuracy"] == 1.0 and stats["mcnemar"]["champion_only"] == 10
    assert stats["mcnemar"]["p_value"] < 0.05 and stats["bootstrap"]
    json.dumps(worse)  # promotion.json must be writable
    tags = project_client(root).get_model_version(NAME, str(worse["version"])).tags
    assert float(tags["reprotrain.gate.mcnemar.p_value"]) == pytest.approx(
        stats["mcnemar"]["p_value"]
    )
    assert int(project_client(root).get_model_version_by_alias(NAME, "champion").version) == 1


# --------------------------------------------------------------------------- review mode, races


@pytest.mark.slow
def test_review_mode_proposes_and_the_gate_refuses_a_moved_champion(
    store_project: Path, monkeypatch: pytest.MonkeyPatch, test_split
) -> None:
    """REPROTRAIN_PROMOTE=challenger: a passing version is only proposed (challenger, the
    champion it was decided against recorded). In champion mode, a champion that moved while
    evaluate ran (a hand promotion mid-gate) is not replaced: the version stays challenger."""
    root = store_project
    uri = tracking.default_uri(root)
    model = _small_model(root / "m.keras", 2)
    with pytest.raises(ConfigError, match="REPROTRAIN_PROMOTE='champoin'"):
        registration.promotion_mode("champoin")
    monkeypatch.setenv("REPROTRAIN_PROMOTE", "challenger")
    assert registration.promotion_mode() == "challenger"
    monkeypatch.delenv("REPROTRAIN_PROMOTE")
    assert registration.promotion_mode() == "champion"  # local dvc repro promotes as before

    first = _register(root, model, LABELS, "d1", test_split)
    assert first["promoted"] and first["mode"] == "champion" and not first["proposed"]
    proposed = _register(root, model, LABELS, "d1", test_split, mode="challenger")
    assert proposed["proposed"] is True and proposed["promoted"] is False
    assert proposed["alias"] == "challenger" and proposed["champion_version"] == 1
    assert "decided against v1" in proposed["reason"]
    client = project_client(root)
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 1
    assert client.get_model_version(NAME, "2").tags["reprotrain.decided_against"] == "1"

    # The race: v2 is promoted by hand while v3's gate is comparing with v1.
    def hand_promotion() -> None:
        reg.promote(uri, NAME, 2, "hotfix", by="bob")

    raced = _register(root, model, LABELS, "d1", test_split, before_apply=hand_promotion)
    assert raced["promoted"] is False and raced["alias"] == "challenger"
    assert "the champion changed to v2 while evaluate compared with v1" in raced["reason"]
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 2
    assert int(client.get_model_version_by_alias(NAME, "challenger").version) == 3
    assert "reprotrain.promoted_by" not in client.get_model_version(NAME, "3").tags
    # set_champion itself: a decision against v1 never replaces v2.
    with pytest.raises(reg.ChampionMoved, match="champion is v2, but the promotion of v3"):
        reg.set_champion(client, NAME, 3, 1, "test", "stale decision", uri)
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 2


# --------------------------------------------------------------------------- download cache


def _version_in(root: Path, store_dir: str, model: Path) -> str:
    """Register ``model`` as NAME in the store ``store_dir`` of ``root``; its version."""
    uri = tracking.default_uri(root, store_dir)
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    source = root / f"source-{store_dir}"
    source.mkdir()
    shutil.copy2(model, source / "model.keras")
    client.create_registered_model(NAME)
    return str(client.create_model_version(NAME, source=source.as_uri()).version)


@pytest.mark.slow
def test_download_cache_is_per_store_atomic_and_verified(
    store_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two stores both hold NAME v1 (different models): each resolves to its own file. A
    cached file cut short (a download killed mid-write) or an entry without its completion
    record is downloaded again, never loaded; a killed download's temporary is cleaned."""
    root = store_project

    def resolve(store_dir: str) -> Path:
        # As a fresh `predict` process would: opening a store makes it MLflow's default
        # (MLFLOW_TRACKING_URI) for the rest of the process, which would win over store_dir.
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        return reg.resolve_model(f"models:/{NAME}/1", root, store_dir)

    two = _small_model(root / "two.keras", 2)
    three = _small_model(root / "three.keras", 3)
    assert _version_in(root, "mlruns", two) == _version_in(root, "other-store", three) == "1"
    a = resolve("mlruns")
    b = resolve("other-store")
    assert a != b
    assert a.read_bytes() == two.read_bytes() and b.read_bytes() == three.read_bytes()
    assert resolve("mlruns") == a  # reused

    full = a.read_bytes()
    a.write_bytes(full[: len(full) // 2])  # what a killed non-atomic download leaves
    again = resolve("mlruns")
    assert again.read_bytes() == full
    assert keras.saving.load_model(again, compile=False).output_shape == (None, 2)

    entry = reg.cache_dir(root, tracking.default_uri(root, "mlruns"), NAME, "1")
    (entry / reg.CACHE_RECORD).unlink()  # a .keras without its record: not proven complete
    stale = entry.parent / ".1.killed.download"
    (stale / "model").mkdir(parents=True)
    (stale / "model" / "model.keras").write_bytes(full[:100])
    os.utime(stale, (0, 0))
    assert resolve("mlruns").read_bytes() == full
    assert not stale.exists()
    assert resolve("other-store").read_bytes() == (three.read_bytes())
