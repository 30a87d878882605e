"""The photo-taking served model: real `mlflow models serve` answering a real JPEG over HTTP
with what the library and `python -m reprotrain predict` compute; packaged code only; the
export tags on a registered version."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ASSETS, free_port, http_server, run, subprocess_env

SIZE, MAX_SIDE, QUALITY = 32, 64, 95
LABELS = ["ants", "bees"]


def _photo(tmp: Path) -> Path:
    """A real photo (the hymenoptera assets) or, without them, a generated 200×150 JPEG."""
    if ASSETS is not None:
        return sorted((ASSETS / "datasets" / "hymenoptera_data" / "train" / "ants").glob("*.jpg"))[
            0
        ]
    rng = np.random.default_rng(0)
    path = tmp / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny MobileNetV2 classifier logged as the photo model in a fresh SQLite store."""
    import keras
    import mlflow

    from reprotrain.config import ModelConfig
    from reprotrain.models.transfer import build_model
    from reprotrain.serving.pyfunc import log_photo_model

    tmp = tmp_path_factory.mktemp("pyfunc")
    keras.utils.set_random_seed(1)
    model = build_model(ModelConfig(alpha=0.35, image_size=SIZE, weights="none"), 2, 0.2)
    keras_path = tmp / "model.keras"
    model.save(keras_path)
    (tmp / "labels.json").write_text(json.dumps(LABELS))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("serving", artifact_location=(tmp / "artifacts").as_uri())
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("mlflow").addHandler(handler)
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            mlflow.start_run(experiment_id=exp) as active,
        ):
            warnings.simplefilter("always")
            model_uri = log_photo_model(
                active.info.run_id,
                keras_path,
                LABELS,
                SIZE,
                MAX_SIDE,
                QUALITY,
                registered_model_name="photos",
            )
    finally:
        logging.getLogger("mlflow").removeHandler(handler)
    mlflow.set_tracking_uri("")
    seen += [str(w.message) for w in caught]
    return {
        "uri": uri,
        "model_uri": model_uri,
        "keras": str(keras_path),
        "dir": str(tmp),
        "messages": "\n".join(seen),
    }


def test_logging_the_model_shows_none_of_the_settled_warnings(logged: dict[str, str]) -> None:
    from reprotrain.serving.pyfunc import SETTLED_WARNINGS

    for text in SETTLED_WARNINGS:
        assert text not in logged["messages"]
    # MLflow checks predict's type hints when the class is defined (a fresh import), under
    # a "once" filter of its own that no filter of ours overrides.
    proc = subprocess.run(
        [sys.executable, "-c", "import reprotrain.serving.pyfunc"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Add type hints" not in proc.stderr


def _expected(keras_path: str, data: bytes) -> np.ndarray:
    import keras

    from reprotrain.serving.pyfunc import photo_pixels

    model = keras.saving.load_model(keras_path, compile=False)
    pixels = photo_pixels(data, SIZE, MAX_SIDE, QUALITY)
    return np.asarray(model(pixels[np.newaxis].astype(np.float32), training=False))[0]


@pytest.mark.slow
def test_served_model_answers_a_jpeg_over_http_like_predict(
    logged: dict[str, str], tmp_path: Path
) -> None:
    photo = _photo(tmp_path)
    data = photo.read_bytes()
    port = free_port()
    env = subprocess_env(MLFLOW_TRACKING_URI=logged["uri"])
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        "models:/photos/1",
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    body = {
        "dataframe_split": {
            "columns": ["image"],
            "data": [[base64.b64encode(data).decode()], [base64.b64encode(b"<html>").decode()]],
        }
    }
    with http_server(cmd, tmp_path, env, f"http://127.0.0.1:{port}/ping", 240, "mlflow serve"):
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            answer = json.loads(resp.read())
    good, bad = answer["predictions"]
    assert bad["label"] is None and bad["error"].startswith("not an image")
    probs = np.array([good["probabilities"][name] for name in LABELS])
    assert good["error"] is None and good["label"] == LABELS[int(np.argmax(probs))]
    assert good["confidence"] == pytest.approx(probs.max())
    # Exactly the library's normalisation + the Keras model (train/serve parity).
    np.testing.assert_allclose(probs, _expected(logged["keras"], data), rtol=0, atol=1e-6)

    # The predict command on the same file, with the same .keras file.
    (Path(logged["keras"]).parent / "labels.json").write_text(json.dumps(LABELS))
    out = run(
        [sys.executable, "-m", "reprotrain", "predict", logged["keras"], str(photo), "--top-k=2"],
        tmp_path,
        subprocess_env(),
    )
    [cli] = json.loads(out.stdout)
    cli_probs = np.array([{r["label"]: r["probability"] for r in cli["top_k"]}[n] for n in LABELS])
    assert cli["label"] == good["label"]
    # predict decodes the file directly; the server re-encodes it as prepare did (JPEG q95,
    # ≤ max_side): the two agree to JPEG re-encoding noise until predict calls the same
    # normalisation function.
    np.testing.assert_allclose(probs, cli_probs, atol=0.02)


@pytest.mark.slow
def test_served_model_needs_only_its_packaged_code(logged: dict[str, str]) -> None:
    """Loaded where the project's src/ is not importable, it runs on its code_paths copy."""
    script = f"""
import sys, base64, io
sys.path = [p for p in sys.path if not p.rstrip('/').endswith('/src')]
for finder in list(sys.meta_path):
    if 'editable' in type(finder).__name__.lower() or 'reprotrain' in repr(finder):
        sys.meta_path.remove(finder)
import mlflow, pandas as pd
from PIL import Image
mlflow.set_tracking_uri({logged["uri"]!r})
model = mlflow.pyfunc.load_model({logged["model_uri"]!r})
buf = io.BytesIO(); Image.new("RGB", (80, 60), (200, 30, 30)).save(buf, "JPEG")
out = model.predict(pd.DataFrame({{"image": [buf.getvalue()]}}))
import reprotrain
print(reprotrain.__file__)
print(out[0]["label"])
"""
    proc = run([sys.executable, "-c", script], Path(logged["dir"]), subprocess_env())
    file, label = proc.stdout.strip().splitlines()[-2:]
    assert "/code/reprotrain/__init__.py" in file and "/src/" not in file
    assert label in LABELS


@pytest.mark.slow
def test_export_report_becomes_version_tags(tmp_path: Path) -> None:
    import mlflow

    from reprotrain.serving.pyfunc import attach_exports

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model("m")
    mv = client.create_model_version("m", source=(tmp_path / "x").as_uri())
    row = dict(accuracy=0.9, agreement=1.0, size_bytes=1000, latency_ms=2.5, path="p")
    report = {
        "keras": {"accuracy": 0.9, "size_bytes": 2000, "latency_ms": 9.0},
        "formats": {
            "saved_model": {**row, "shipped": True, "reason": "shipped: ok"},
            "tflite_int8": {**row, "agreement": 0.5, "shipped": False, "reason": "not shipped"},
        },
    }
    attach_exports("m", mv.version, report, "abc123", client=client)
    tags = client.get_model_version("m", mv.version).tags
    assert tags["export.shipped"] == "saved_model"
    assert tags["export.saved_model.uri"] == "runs:/abc123/export/saved_model"
    assert "export.tflite_int8.uri" not in tags
    assert float(tags["export.tflite_int8.agreement"]) == 0.5
    assert tags["export.tflite_int8.shipped"] == "0.0"
    assert tags["export.tflite_int8.reason"] == "not shipped"
    assert float(tags["export.keras.latency_ms"]) == 9.0
