"""The model: shapes, dtypes, preprocessing, weights resolution, unfreezing, save/load."""

from __future__ import annotations

from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from reprotrain.config import ModelConfig
from reprotrain.errors import ModelError
from reprotrain.models import transfer
from tests.models.tiny import SIZE, tiny_arrays, tiny_model_cfg


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return transfer.build_model(tiny_model_cfg(), num_classes=3, dropout=0.2)


@pytest.mark.slow
def test_shapes_dtypes_and_names(model) -> None:
    assert model.input_shape == (None, SIZE, SIZE, 3)
    assert model.output_shape == (None, 3)
    assert model.inputs[0].dtype == "float32"
    assert model.outputs[0].dtype == "float32"
    names = [layer.name for layer in model.layers]
    assert names == ["image", "preprocess", "base", "pool", "dropout", "predictions"]
    base = transfer.get_base(model)
    assert base.trainable is False
    assert not any(layer.trainable for layer in base.layers)
    x, _ = tiny_arrays(4)
    probs = model.predict(x, verbose=0)
    assert probs.shape == (4, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_preprocess_layer_is_mobilenet_preprocess_input(model) -> None:
    x, _ = tiny_arrays(2)
    ours = np.asarray(model.get_layer("preprocess")(x))
    theirs = keras.applications.mobilenet_v2.preprocess_input(x.copy())
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


@pytest.mark.slow
def test_mixed_precision_keeps_float32_output() -> None:
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        m = transfer.build_model(tiny_model_cfg("none"), num_classes=2, dropout=0.0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert m.get_layer("pool").compute_dtype == "float16"
    assert m.get_layer("predictions").compute_dtype == "float32"
    assert m.outputs[0].dtype == "float32"


@pytest.mark.slow
def test_unfreeze_top_exact_trainable_set() -> None:
    m = transfer.build_model(tiny_model_cfg("none"), num_classes=2, dropout=0.2)
    base = transfer.get_base(m)
    names = transfer.unfreeze_top(m, 12)
    top = base.layers[-12:]
    expected = [
        lyr.name
        for lyr in top
        if lyr.weights and not isinstance(lyr, keras.layers.BatchNormalization)
    ]
    assert names == expected
    # The top 12 layers start at block_15_add; Add/ReLU have no weights, BN stays frozen.
    assert names == ["block_16_expand", "block_16_depthwise", "block_16_project", "Conv_1"]
    trainable = {lyr.name for lyr in base.layers if lyr.trainable and lyr.trainable_weights}
    assert trainable == set(names)
    bns = [lyr for lyr in base.layers if isinstance(lyr, keras.layers.BatchNormalization)]
    assert bns and not any(bn.trainable for bn in bns)
    summary = transfer.trainable_summary(m)
    assert summary["trainable_base_layers"] == names
    assert summary["trainable_base_layer_count"] == 4
    assert summary["trainable_head_layers"] == ["predictions"]
    by_hand = sum(int(np.prod(w.shape)) for w in m.trainable_weights)
    expected_params = sum(
        int(np.prod(w.shape)) for lyr in top if lyr.name in names for w in lyr.weights
    ) + sum(int(np.prod(w.shape)) for w in m.get_layer("predictions").weights)
    assert summary["trainable_params"] == by_hand == expected_params
    # Unfreezing nothing leaves only the head.
    assert transfer.unfreeze_top(m, 0) == []
    assert transfer.trainable_summary(m)["trainable_base_layer_count"] == 0


@pytest.mark.slow
def test_save_load_safe_mode_identical_predictions(model, tmp_path: Path) -> None:
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x, _ = tiny_arrays(6)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert [lyr.name for lyr in loaded.layers] == [lyr.name for lyr in model.layers]
    assert transfer.get_base(loaded).trainable is False


@pytest.mark.slow
def test_real_imagenet_weights_load_offline(keras_home: Path, monkeypatch) -> None:
    """weights=imagenet finds the file under $KERAS_HOME/models (no network needed)."""
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    cfg = ModelConfig(alpha=0.35, image_size=224, weights="imagenet")
    assert transfer.find_cached_imagenet_weights(0.35, 224) is not None
    base = transfer.build_base(cfg)
    kernel = base.get_layer("Conv1").kernel.numpy()
    path = keras_home / "models" / transfer.imagenet_weights_filename(0.35, 224)
    with h5py.File(path, "r") as f:
        found = []
        f.visititems(lambda n, obj: found.append(n) if n.startswith("Conv1/") else None)
        stored = np.asarray(f[next(n for n in found if "kernel" in n)])
    np.testing.assert_array_equal(kernel, stored)


@pytest.mark.slow
def test_missing_imagenet_weights_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    """Not cached and no download possible → ModelError saying how to provide them."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    # An unreachable proxy makes the download fail the same way with or without internet.
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    cfg = ModelConfig(alpha=0.5, image_size=96, weights="imagenet")
    with pytest.raises(ModelError) as err:
        transfer.build_base(cfg)
    msg = str(err.value)
    assert "KERAS_HOME" in msg and "model.weights" in msg and "'none'" in msg
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_96_no_top.h5" in msg


@pytest.mark.slow
def test_bad_weights_settings_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="sizes 96, 128, 160, 192, 224"):
        transfer.build_base(ModelConfig(alpha=0.35, image_size=200, weights="imagenet"))
    with pytest.raises(ModelError, match="no such file"):
        transfer.build_base(ModelConfig(alpha=0.35, image_size=32, weights=str(tmp_path / "x")))
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an h5 file")
    with pytest.raises(ModelError, match="cannot load"):
        transfer.build_base(ModelConfig(alpha=0.35, image_size=32, weights=str(bad)))
    with pytest.raises(ModelError, match="at least 2 classes"):
        transfer.build_model(tiny_model_cfg("none"), num_classes=1, dropout=0.0)


@pytest.mark.slow
def test_same_inference_ignores_training_state_not_weights_or_architecture(
    model, tmp_path: Path
) -> None:
    """What evaluate relies on to reuse the fine-tuned model's predictions for the head."""
    from reprotrain.models.loading import load_model, same_inference, save_model

    head = tmp_path / "head.keras"
    save_model(model, head)
    # What finetune saves when no epoch beats the start: other trainable flags, an
    # optimizer with state, other bytes; the same function.
    tuned = load_model(head)
    transfer.unfreeze_top(tuned, 5)
    tuned.compile(optimizer=keras.optimizers.Adam(1e-5), loss="sparse_categorical_crossentropy")
    tuned.optimizer.build(tuned.trainable_variables)
    finetuned = tmp_path / "finetuned.keras"
    save_model(tuned, finetuned)
    assert head.read_bytes() != finetuned.read_bytes()
    assert same_inference(head, finetuned) and same_inference(finetuned, head)

    # One weight moved by one step of float32: another model.
    kernel, bias = tuned.layers[-1].get_weights()
    bias[0] = np.nextafter(bias[0], np.float32(1))
    tuned.layers[-1].set_weights([kernel, bias])
    moved = tmp_path / "moved.keras"
    save_model(tuned, moved)
    assert not same_inference(head, moved)

    # The same weights in another architecture (conservative: here only the dropout rate).
    other = transfer.build_model(tiny_model_cfg(), num_classes=3, dropout=0.5)
    other.set_weights(model.get_weights())
    other_path = tmp_path / "other.keras"
    save_model(other, other_path)
    assert not same_inference(head, other_path)

    # Unreadable: different (the caller loads it, and the loader says what is wrong).
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    assert not same_inference(head, junk) and not same_inference(head, tmp_path / "none.keras")
