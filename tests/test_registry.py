"""The promotion gate (pure) and the real registry flow on a SQLite store: register versions
of a tiny MobileNetV2, move `champion`/`challenger`, re-score the champion when the test set
changed, resolve models:/ URIs, and serve models:/NAME@champion over REST on loopback."""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from reprotrain import tracking
from reprotrain.config import load_params
from reprotrain.evaluation import gate as promotion
from reprotrain.models import transfer
from tests.conftest import REPO, free_port, http_server, subprocess_env
from tests.models.tiny import tiny_arrays, tiny_model_cfg

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


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    """A project root with a store, a saved tiny model, and four registered versions."""
    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    root = tmp_path_factory.mktemp("registry") / "proj"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / name, root / name)
    model = transfer.build_model(tiny_model_cfg(), len(LABELS), 0.0)
    model_path = root / "model.keras"
    model.save(model_path)
    params = load_params(root / "params.yaml")
    rescored: list[Path] = []

    def rescore(path: Path) -> float:
        rescored.append(path)
        assert keras.saving.load_model(path, compile=False).output_shape == (None, 2)
        return 0.6

    common = dict(
        name=NAME, rescore=rescore, min_accuracy=0.5, min_improvement=0.0, image_size=32,
        labels=LABELS,
    )  # fmt: skip
    results = []
    with tracking.stage_run("evaluate", params, ("evaluate",), root) as run:
        results.append(tracking.register_and_promote(
            run, model_path, accuracy=0.8, test_digest="d1", **common))  # fmt: skip
        results.append(tracking.register_and_promote(
            run, model_path, accuracy=0.7, test_digest="d1", **common))  # fmt: skip
        n_rescored_before = len(rescored)
        results.append(tracking.register_and_promote(
            run, model_path, accuracy=0.75, test_digest="d2", **common))  # fmt: skip
        results.append(tracking.register_and_promote(
            run, model_path, accuracy=0.4, test_digest="d2", **common))  # fmt: skip
    yield root, model, results, rescored, n_rescored_before
    for k, v in saved.items():
        if v is not None:
            os.environ[k] = v


def test_versions_aliases_and_rescoring(registry) -> None:
    root, _, results, rescored, n_before = registry
    first, worse, new_test_set, below_floor = results
    assert first["promoted"] and first["alias"] == "champion" and first["version"] == 1
    assert first["champion_version"] is None
    # Same test set, lower accuracy: challenger, and the champion was not re-scored.
    assert not worse["promoted"] and worse["alias"] == "challenger"
    assert worse["champion_accuracy"] == 0.8 and n_before == 0
    # New test set: the champion (v1) is re-scored on it first (0.6), then beaten.
    assert len(rescored) == 1 and rescored[0].suffix == ".keras"
    assert new_test_set["champion_version"] == 1 and new_test_set["champion_accuracy"] == 0.6
    assert new_test_set["promoted"] and new_test_set["version"] == 3
    assert not below_floor["promoted"] and "floor" in below_floor["reason"]
    assert set(first) >= {"promoted", "alias", "version", "reason", "champion_version",
                          "champion_accuracy", "accuracy"}  # fmt: skip

    uri = tracking.default_uri(root)
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 3
    assert int(client.get_model_version_by_alias(NAME, "challenger").version) == 4
    v1 = client.get_model_version(NAME, "1")
    assert v1.tags["reprotrain.test_digest"] == "d2"  # its score on the current test set
    assert float(v1.tags["reprotrain.test_accuracy"]) == 0.6
    v3 = client.get_model_version(NAME, "3")
    assert v3.tags["reprotrain.test_digest"] == "d2"
    assert json.loads(v3.tags["reprotrain.labels"]) == LABELS
    mlflow.set_registry_uri(uri)
    mlmodel = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/3")) / "MLmodel"
    assert "signature" in mlmodel.read_text() and "keras" in mlmodel.read_text()

    path = tracking.resolve_model(f"models:/{NAME}@champion", root)
    assert path.suffix == ".keras" and path.is_file()
    assert tracking.resolve_model(f"models:/{NAME}/3", root) == path
    assert tracking.resolve_labels(f"models:/{NAME}@champion", root) == LABELS
    with pytest.raises(tracking.TrackingError):
        tracking.resolve_model(f"models:/{NAME}@nope", root)


def test_serve_champion_over_rest(registry) -> None:
    """`mlflow models serve -m models:/NAME@champion` answers with the model's predictions."""
    root, model, _, _, _ = registry
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
        with urllib.request.urlopen(req, timeout=60) as resp:
            served = np.asarray(json.loads(resp.read())["predictions"], dtype=np.float32)
        expected = model.predict(x, verbose=0)
        assert served.shape == (4, 2)
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
