"""export: real TFLite, ONNX and OpenVINO conversions re-scored in LiteRT, ONNX Runtime and
OpenVINO Runtime on a tiny trained model and tiny generated TFRecords; converters that fail
or crash; the ship rule on numbers; the DVC stage on the tiny project (the folder swap under
a real SIGKILL: test_folders.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from reprotrain.config import ExportConfig, PipelineConfig, PrepareConfig
from reprotrain.serving.conversion_process import Conversions
from reprotrain.serving.verdict import agreement, ship_decision
from tests.conftest import TINY_PARAMS, Project, make_class_tree, run

SIZE = 32
PIPE = PipelineConfig(shuffle_buffer=64)
ALL_FORMATS = ("saved_model", "tflite_float32", "tflite_float16", "tflite_int8", "onnx", "openvino")
HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None  # `make setup EXTRAS=openvino`


def test_ship_rule_names_each_failed_check() -> None:
    ok, reason = ship_decision(0.95, 0.99, 0.955, min_agreement=0.98, max_accuracy_drop=0.01)
    assert ok and reason.startswith("shipped")
    ok, reason = ship_decision(0.95, 0.97, 0.95, min_agreement=0.98, max_accuracy_drop=0.01)
    assert not ok and "agreement with the Keras model 0.9700 < export.min_agreement 0.98" in reason
    ok, reason = ship_decision(0.90, 0.99, 0.95, min_agreement=0.98, max_accuracy_drop=0.01)
    assert not ok and "accuracy drop 0.0500" in reason and "agreement" not in reason
    ok, reason = ship_decision(0.90, 0.5, 0.95, min_agreement=0.98, max_accuracy_drop=0.01)
    assert not ok and "agreement" in reason and "accuracy drop" in reason
    # Exactly at the limits ships; a format more accurate than Keras ships.
    assert ship_decision(0.94, 0.98, 0.95, 0.98, 0.01)[0]
    assert ship_decision(1.0, 0.98, 0.9, 0.98, 0.01)[0]


def test_agreement_is_the_share_of_equal_top1_labels() -> None:
    a = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    b = np.array([[0.6, 0.4], [0.4, 0.6], [0.4, 0.6], [0.1, 0.9]])
    assert agreement(a, b) == 0.75


def test_the_second_process_converts_all_but_one_non_int8_kind() -> None:
    pick = Conversions.pick_background
    assert pick(["float32", "float16", "int8"], cpus=2) == ("float16", "int8")
    assert pick(["int8", "float32"], cpus=8) == ("int8",)
    assert pick(["float32", "float16"], cpus=2) == ("float16",)
    assert pick(["int8", "float16", "float32"], cpus=2) == ("int8", "float32")
    assert pick(["float32", "float32", "int8"], cpus=2) == ("int8",)
    # One conversion, or one core: nothing to overlap, no second process.
    assert pick(["int8"], cpus=2) == ()
    assert pick(["float32", "int8"], cpus=1) == ()


def test_onnx_and_openvino_always_convert_in_the_second_process() -> None:
    """tf2onnx and OpenVINO are native code: a crash there must not end the stage, so they
    convert in the second process whatever the core count, in the formats' order."""
    formats = ["openvino", "saved_model", "tflite_float32", "onnx"]
    assert Conversions(formats, Path("m.keras")).background == ("openvino", "onnx")
    assert Conversions(["saved_model"], Path("m.keras")).background == ()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TFRecords of 3 colour classes (train/val/test) written by the real prepare."""
    from reprotrain.data.fetch import fetch
    from reprotrain.data.prepare import prepare

    tmp = tmp_path_factory.mktemp("export")
    src = make_class_tree(tmp / "src", {"red": 20, "green": 20, "blue": 20}, size=48)
    fetch(str(src), tmp / "raw")
    prepare(tmp / "raw", tmp / "prepared", PrepareConfig(shard_size=16, max_side=64), 42)
    return tmp / "prepared"


@pytest.fixture(scope="module")
def tiny_model(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN trained until it separates the colours (a confident model: an untrained
    one predicts near-ties, where any rounding flips the top-1 label)."""
    import keras

    from reprotrain.paths import split_files
    from reprotrain.serving.samples import load_split

    keras.utils.set_random_seed(0)
    x, y = load_split(split_files(prepared, "train"), PIPE, image_size=SIZE, batch_size=32, seed=0)
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Rescaling(1 / 127.5, offset=-1),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=15, batch_size=16, verbose=0)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


@pytest.mark.slow
def test_every_format_is_written_rescored_and_judged(
    prepared: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from reprotrain.paths import split_files
    from reprotrain.serving.export import export_and_verify
    from reprotrain.serving.formats import FILENAMES
    from reprotrain.serving.samples import calibration_images, load_split

    x, y = load_split(split_files(prepared, "test"), PIPE, image_size=SIZE, batch_size=8, seed=0)
    calib = calibration_images(
        split_files(prepared, "train"), PIPE, image_size=SIZE, count=16, seed=42
    )
    again = calibration_images(
        split_files(prepared, "train"), PIPE, image_size=SIZE, count=16, seed=42
    )
    other = calibration_images(
        split_files(prepared, "train"), PIPE, image_size=SIZE, count=16, seed=7
    )
    assert calib.shape == (16, SIZE, SIZE, 3) and np.array_equal(calib, again)
    assert not np.array_equal(calib, other)

    cfg = ExportConfig(formats=ALL_FORMATS, latency_samples=5, batch_size=8)
    report = export_and_verify(tiny_model, tmp_path / "export", x, y, calib, cfg)

    assert report["n_test"] == len(y) > 0 and report["n_calibration"] == 16
    assert report["keras"]["accuracy"] >= 0.9  # the tiny model learnt the colours
    assert set(report["formats"]) == set(cfg.formats)
    if not HAVE_OPENVINO:  # an optional extra: a not-shipped row that says how to install it
        row = report["formats"].pop("openvino")
        assert not row["shipped"] and "make setup EXTRAS=openvino" in row["reason"]
    for name, row in report["formats"].items():
        path = Path(row["path"])
        assert path == tmp_path / "export" / FILENAMES[name] and path.exists()
        assert row["size_bytes"] > 0 and row["latency_ms"] > 0
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["agreement"] <= 1
        expected = ship_decision(
            row["accuracy"],
            row["agreement"],
            report["keras"]["accuracy"],
            cfg.min_agreement,
            cfg.max_accuracy_drop,
        )
        assert (row["shipped"], row["reason"]) == expected
    # Float formats compute what Keras computes. (float16 halves the weights, but on a
    # 300-parameter model its dequantize ops outweigh that: no size check here.)
    floats = ["saved_model", "tflite_float32", "tflite_float16", "onnx"]
    for name in floats + ["openvino"] * HAVE_OPENVINO:
        assert report["formats"][name]["agreement"] == 1.0
        assert report["formats"][name]["shipped"]
    # ONNX: one file ONNX Runtime loads, raw float pixels in, any batch size.
    import onnxruntime

    session = onnxruntime.InferenceSession(report["formats"]["onnx"]["path"])
    (onnx_input,) = session.get_inputs()
    assert onnx_input.type == "tensor(float)" and onnx_input.shape[1:] == [SIZE, SIZE, 3]
    assert not isinstance(onnx_input.shape[0], int)  # a dynamic batch dimension
    if HAVE_OPENVINO:  # an IR folder: the graph and its weights
        ir = Path(report["formats"]["openvino"]["path"])
        assert sorted(p.name for p in ir.iterdir()) == ["model.bin", "model.xml"]
    # Full-integer int8 with uint8 input: what a microcontroller or an Edge TPU needs.
    interp = Interpreter(model_path=report["formats"]["tflite_int8"]["path"])
    assert interp.get_input_details()[0]["dtype"] == np.uint8
    assert interp.get_output_details()[0]["dtype"] == np.uint8
    assert report["formats"]["tflite_int8"]["agreement"] >= 0.8
    json.dumps(report)  # metrics/export.json material


@pytest.mark.slow
def test_export_stage_runs_under_dvc_and_is_tracked(promoted_project: Project) -> None:
    """The export stage as the real `dvc repro` of the session's promoted tiny project left
    it: formats, metrics, sidecar, MLflow run."""
    import mlflow

    tiny_project, env = promoted_project.root, promoted_project.env
    assert "Running stage 'export'" in promoted_project.first.stderr
    report = json.loads((tiny_project / "metrics" / "export.json").read_text())
    # The tiny params export the SavedModel only (all four: test_every_format_is_written_...).
    assert set(report["formats"]) == set(TINY_PARAMS["export"]["formats"])
    assert (tiny_project / "models" / "export" / "saved_model" / "saved_model.pb").is_file()
    sidecar = json.loads((tiny_project / "models" / "export.run.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{tiny_project / 'mlruns' / 'mlflow.db'}")
    got = client.get_run(sidecar["run_id"])
    assert got.info.status == "FINISHED"
    assert got.data.metrics["export.saved_model.agreement"] == pytest.approx(
        report["formats"]["saved_model"]["agreement"]
    )
    assert got.data.tags["reprotrain.upstream.finetune"] != "missing"
    artifacts = {a.path for a in client.list_artifacts(sidecar["run_id"])}
    assert "export.json" in artifacts
    # A second repro with nothing changed is a no-op for export.
    status = run(["dvc", "status", "export"], tiny_project, env)
    assert "changed" not in status.stdout


@pytest.mark.slow
def test_saved_model_has_keras_signature_and_falls_back_for_resources(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import keras
    import tensorflow as tf

    from reprotrain.serving.converters import export_saved_model

    class TableScale(keras.layers.Layer):
        """Captures a lookup table: a resource the direct save does not track."""

        def __init__(self) -> None:
            super().__init__()
            init = tf.lookup.KeyValueTensorInitializer(
                tf.constant([0], tf.int64), tf.constant([2.0], tf.float32)
            )
            self.table = tf.lookup.StaticHashTable(init, default_value=1.0)

        def call(self, x: tf.Tensor) -> tf.Tensor:
            return x * self.table.lookup(tf.constant(0, tf.int64))

    def classifier(*extra: keras.layers.Layer) -> keras.Model:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((SIZE, SIZE, 3), name="image")
        x = inputs
        for layer in extra:
            x = layer(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))

    images = np.random.default_rng(0).uniform(0, 255, (4, SIZE, SIZE, 3)).astype(np.float32)
    for model, name in ((classifier(), "plain"), (classifier(TableScale()), "table")):
        with caplog.at_level(logging.INFO, logger="reprotrain.serving.converters"):
            caplog.clear()
            out = export_saved_model(model, tmp_path / name)
        fell_back = "using Keras' export" in caplog.text
        assert fell_back == (name == "table"), caplog.text
        loaded = tf.saved_model.load(str(out))
        assert set(loaded.signatures) == {"serve", "serving_default"}
        serve = loaded.signatures["serve"]
        assert list(serve.structured_input_signature[1]) == ["image"]
        assert list(serve.structured_outputs) == ["output_0"]
        np.testing.assert_allclose(
            serve(image=tf.constant(images))["output_0"].numpy(),
            np.asarray(model(images, training=False)),
            rtol=1e-5,
            atol=1e-6,
        )
    # Written again over itself: swapped in whole, nothing left beside it.
    export_saved_model(classifier(), tmp_path / "plain")
    assert (tmp_path / "plain" / "saved_model.pb").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "table"]


# --------------------------------------------------------------------------- failing converters


def _string_op_model():
    """A model with string ops in its graph (``Hashing``: AsString, StringToHashBucketFast),
    as a table model's preprocessing has: TensorFlow runs and saves it; ONNX, OpenVINO and
    the TFLite builtins cannot express it."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    hashed = keras.layers.Rescaling(0.0)(keras.layers.Hashing(num_bins=3)(inputs))
    pooled = keras.layers.Add()(
        [
            keras.layers.GlobalAveragePooling2D()(inputs),
            keras.layers.GlobalAveragePooling2D()(hashed),
        ]
    )
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(pooled))


@pytest.mark.slow
def test_a_failing_converter_is_a_not_shipped_row_not_a_failed_export(
    prepared: Path, tmp_path: Path
) -> None:
    from reprotrain.paths import split_files
    from reprotrain.serving.export import export_and_verify, flat_metrics
    from reprotrain.serving.samples import load_split

    model_path = tmp_path / "strings.keras"
    _string_op_model().save(model_path)
    x, y = load_split(split_files(prepared, "test"), PIPE, image_size=SIZE, batch_size=8, seed=0)
    formats = ("saved_model", "tflite_float32", "onnx", "openvino")
    cfg = ExportConfig(formats=formats, latency_samples=2, batch_size=8)
    report = export_and_verify(model_path, tmp_path / "export", x, y, x[:4], cfg)

    rows = report["formats"]
    assert rows["saved_model"]["shipped"] and rows["saved_model"]["agreement"] == 1.0
    assert rows["saved_model"]["latency_ms"] > 0
    expected = {
        "tflite_float32": "not shipped: TFLite float32 conversion failed: ",
        "onnx": "not shipped: onnx conversion failed: No Op registered for StringToHashBucketFast",
        "openvino": "not shipped: openvino conversion failed: No conversion rule found for "
        "operations: AsString, StringToHashBucketFast"
        if HAVE_OPENVINO
        else "not shipped: openvino export needs the openvino package: install the extra",
    }
    for name, reason in expected.items():
        row = rows[name]
        assert row["reason"].startswith(reason), row["reason"]
        assert "\n" not in row["reason"]  # one line
        assert not row["shipped"] and row["accuracy"] is None and row["latency_ms"] is None
        assert not Path(row["path"]).exists()  # nothing half-written left behind
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["saved_model"]
    metrics = flat_metrics(report)
    assert metrics["export.onnx.shipped"] == 0.0 and "export.onnx.accuracy" not in metrics
    json.loads(json.dumps(report, allow_nan=False))  # valid JSON: nulls, no NaN


def test_a_converter_that_crashes_its_process_is_reported(tmp_path: Path) -> None:
    """A native crash (SIGABRT) in the converter's process: one reported line, and this
    process (the stage) lives on."""
    from reprotrain.errors import ModelError
    from reprotrain.serving.conversion_process import run_isolated
    from reprotrain.serving.verdict import failed_format

    with pytest.raises(ModelError, match="the converter crashed its process") as info:
        run_isolated(os.abort)
    row = failed_format("onnx", tmp_path / "model.onnx", info.value)
    assert not row.shipped and row.reason.startswith(
        "not shipped: the converter crashed its process"
    )


def test_a_missing_converter_or_runtime_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The optional packages absent (None in sys.modules: Python's own way to make an
    import fail): one line naming the package and the install command."""
    import keras

    from reprotrain.errors import ModelError
    from reprotrain.serving.converters import export_keras_format
    from reprotrain.serving.runners import runtime_predictor

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model(np.zeros((1, 4), np.float32))
    for module in ("openvino", "onnxruntime"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(
        ModelError, match=r"openvino package: install the extra: `make setup EXTRAS=openvino`"
    ):
        export_keras_format(model, "openvino", tmp_path / "openvino")
    with pytest.raises(ModelError, match=r"onnxruntime runtime: .*rerun `make setup`"):
        runtime_predictor("onnx", tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []
