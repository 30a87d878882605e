"""The photo-taking served model: real `mlflow models serve` answering a real JPEG over HTTP
with what the library and `python -m reprotrain predict` compute; bad rows answered row by
row and the request limits over real HTTP (MLflow's server and ``scoring_app``'s body
limit); packaged code only; the export tags on a registered version."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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
    from reprotrain.serving.packaging import log_photo_model
    from reprotrain.serving.pyfunc import PhotoInput

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
                PhotoInput(SIZE, MAX_SIDE, QUALITY),
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
    from reprotrain.serving.packaging import SETTLED_WARNINGS

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


#: The limits the test servers run with (MLflow's MLFLOW_PYFUNC_INFERENCE_CONFIG overrides
#: the logged model_config): small enough to pass with a few hundred KB.
LIMITS = {"max_image_bytes": 100_000, "max_rows": 6, "max_request_bytes": 300_000}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _post(url: str, body: Any) -> tuple[int, Any]:
    """POST ``body`` as JSON to ``url``/invocations: (HTTP status, decoded JSON answer)."""
    req = urllib.request.Request(
        f"{url}/invocations",
        data=body if isinstance(body, bytes) else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, text


def _serve(cmd: list[str], logged: dict[str, str], cwd: Path, **env: str) -> Any:
    """A real server for ``models:/photos/1`` on a free port, with :data:`LIMITS`."""
    port = free_port()
    env = subprocess_env(
        MLFLOW_TRACKING_URI=logged["uri"],
        MLFLOW_PYFUNC_INFERENCE_CONFIG=json.dumps(LIMITS),
        **env,
    )
    args = [*cmd, "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    return url, http_server(args, cwd, env, f"{url}/ping", 240, " ".join(cmd[:4]))


@pytest.fixture(scope="module")
def served(logged: dict[str, str]) -> Iterator[str]:
    """``mlflow models serve`` of the logged model (one server for the module's HTTP tests)."""
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/photos/1"]
    url, server = _serve([*cmd, "--env-manager", "local"], logged, Path(logged["dir"]))
    with server:
        yield url


@pytest.mark.slow
def test_served_model_answers_a_jpeg_over_http_like_predict(
    logged: dict[str, str], served: str, tmp_path: Path
) -> None:
    photo = _photo(tmp_path)
    data = photo.read_bytes()
    body = {"dataframe_split": {"columns": ["image"], "data": [[_b64(data)], [_b64(b"<html>")]]}}
    status, answer = _post(served, body)
    assert status == 200, answer
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
def test_bad_rows_get_their_own_error_over_http(served: str, tmp_path: Path) -> None:
    """One garbage cell used to turn the whole request into HTTP 400 (MLflow base64-decoded
    the ``binary`` column before the model): now every good row is predicted."""
    data = _photo(tmp_path).read_bytes()
    cells = [_b64(data), "!!! not base64 !!!", None, 12, base64.encodebytes(data).decode()]
    status, answer = _post(
        served, {"dataframe_split": {"columns": ["image"], "data": [[c] for c in cells]}}
    )
    assert status == 200, answer
    rows = answer["predictions"]
    assert len(rows) == 5
    assert [r["error"] is None for r in rows] == [True, False, False, False, True]
    assert rows[0]["label"] in LABELS and rows[0]["probabilities"] == rows[4]["probabilities"]
    assert rows[1]["error"].startswith("not base64") and rows[1]["label"] is None
    assert rows[2]["error"] == "no 'image' in this row: send the file as base64 text"
    assert rows[3]["error"] == "expected base64 text (or bytes), got int"

    # A record without "image" (here: the file sent under another key): that row's error.
    records = [{"image": _b64(data)}, {"file": _b64(data)}]
    status, answer = _post(served, {"dataframe_records": records})
    assert status == 200, answer
    good, missing = answer["predictions"]
    assert good["label"] in LABELS
    assert missing["label"] is None and "no 'image' in this row" in missing["error"]


@pytest.mark.slow
def test_request_limits_over_http(served: str, tmp_path: Path) -> None:
    """A file over max_image_bytes is that row's error; more rows than max_rows or more
    bytes than max_request_bytes is an HTTP 400 naming the limit; the server stays up."""
    data = _photo(tmp_path).read_bytes()
    big = _b64(bytes(150_000))
    status, answer = _post(
        served, {"dataframe_split": {"columns": ["image"], "data": [[big], [_b64(data)]]}}
    )
    assert status == 200, answer
    over, good = answer["predictions"]
    assert (
        over["label"] is None
        and "over the limit of 100000 bytes (max_image_bytes)" in over["error"]
    )
    assert good["label"] in LABELS

    status, answer = _post(served, {"dataframe_split": {"columns": ["image"], "data": [["x"]] * 7}})
    assert (
        status == 400
        and "7 images in one request, over the limit of 6 (max_rows)" in answer["message"]
    )
    many = [[_b64(bytes(90_000))]] * 4
    status, answer = _post(served, {"dataframe_split": {"columns": ["image"], "data": many}})
    assert status == 400 and "(max_request_bytes): split the request" in answer["message"]

    status, answer = _post(
        served, {"dataframe_split": {"columns": ["image"], "data": [[_b64(data)]]}}
    )
    assert status == 200 and answer["predictions"][0]["label"] in LABELS


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.slow
def test_scoring_app_refuses_a_long_body_before_reading_it(
    logged: dict[str, str], tmp_path: Path
) -> None:
    """``mlflow models serve`` reads any body whole; MLflow's own app from ``scoring_app``
    answers 413 past the limits' body size, also for a body that claims 2 GB."""
    from reprotrain.serving.limits import Limits
    from reprotrain.serving.pyfunc import SERVE_MODEL_ENV

    limit = Limits(**LIMITS).body_bytes
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "reprotrain.serving.pyfunc:scoring_app"]
    url, server = _serve(cmd, logged, tmp_path, **{SERVE_MODEL_ENV: "models:/photos/1"})
    data = _photo(tmp_path).read_bytes()
    with server as proc:
        status, answer = _post(
            url, {"dataframe_split": {"columns": ["image"], "data": [[_b64(data)], ["%"]]}}
        )
        assert status == 200, answer
        assert answer["predictions"][0]["label"] in LABELS
        assert answer["predictions"][1]["error"].startswith("not base64")

        padded = json.dumps({"dataframe_split": {"columns": ["image"], "data": [["A" * limit]]}})
        status, answer = _post(url, padded.encode())
        assert status == 413, answer

        before = _rss_kib(proc.pid)
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.putrequest("POST", "/invocations")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(2 * 1024**3))
        conn.endheaders()
        with contextlib.suppress(OSError):  # the server may close before the end
            conn.send(b"{" + b" " * (4 * 1024 * 1024))
        response = conn.getresponse()
        assert response.status == 413
        conn.close()
        assert _rss_kib(proc.pid) - before < 64 * 1024  # not the 2 GB it claimed

        status, answer = _post(
            url, {"dataframe_split": {"columns": ["image"], "data": [[_b64(data)]]}}
        )
        assert status == 200 and answer["predictions"][0]["label"] in LABELS


@pytest.mark.slow
def test_in_process_inputs_without_an_image_and_bad_limits(logged: dict[str, str]) -> None:
    """A Mapping or a record without ``image`` is that row's error (was a KeyError); a limit
    that is not a positive integer is refused when the model loads."""
    import mlflow

    from reprotrain.serving.pyfunc import PhotoClassifier

    mlflow.set_tracking_uri(logged["uri"])
    # Loading puts the model's packaged reprotrain modules first on sys.path and drops the
    # installed ones from sys.modules: put both back, or later tests in this worker (and the
    # processes they spawn, which inherit sys.path) import the partial packaged copy.
    path, modules = list(sys.path), {k: v for k, v in sys.modules.items() if "reprotrain" in k}
    try:
        model = mlflow.pyfunc.load_model(logged["model_uri"])
    finally:
        mlflow.set_tracking_uri("")
        sys.path[:] = path
        sys.modules.update(modules)
    (row,) = model.unwrap_python_model().predict(None, {"file": b"x"})
    assert row["label"] is None and row["error"].startswith("no 'image' in this row")
    rows = model.unwrap_python_model().predict(None, [{"image": b"<html>"}, {"name": "a.jpg"}])
    assert rows[0]["error"].startswith("not an image") and "no 'image'" in rows[1]["error"]

    context = SimpleNamespace(
        artifacts={"model": logged["keras"], "labels": str(Path(logged["dir"]) / "labels.json")},
        model_config={"image_size": SIZE, "jpeg_quality": QUALITY, "max_rows": 0},
    )
    with pytest.raises(ValueError, match=r"max_rows=0: expected an integer >= 1"):
        PhotoClassifier().load_context(context)


def test_served_modules_hold_every_module_the_served_model_imports() -> None:
    """``SERVED_MODULES`` (the ``code_paths``) is complete: every reprotrain module the served
    model imports, transitively and inside functions (the import walk of dvc.yaml's deps)."""
    from reprotrain.serving.packaging import SERVED_MODULES
    from scripts.write_dvc_yaml import REPO, stage_code

    package = REPO / "src" / "reprotrain"
    needed = {"__init__.py", "serving/__init__.py"}  # the packages they live in
    for served in ("serving/pyfunc.py", "serving/limits.py"):
        needed |= {
            Path(f).relative_to("src/reprotrain").as_posix() for f in stage_code(package / served)
        }
    needed |= {str(Path(m).parent / "__init__.py") for m in needed if "/" in m}
    assert needed <= set(SERVED_MODULES), needed - set(SERVED_MODULES)


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

    from reprotrain.serving.export_tags import attach_exports

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
