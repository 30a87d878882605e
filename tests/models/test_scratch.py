"""From-scratch models (Sequential, Functional, subclassed): shapes, safe-mode round trip,
and both training loops (``fit`` and the custom GradientTape loop with clipping)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from reprotrain import runtime, stage_io, training
from reprotrain.config import BaselineConfig, RuntimeConfig
from reprotrain.errors import ConfigError, ModelError
from reprotrain.models import loading, scratch

SIZE = 32
ARCHS = ("mlp", "cnn", "residual")


def arrays(n: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.int32)
    x = rng.integers(0, 60, size=(n, SIZE, SIZE, 3)).astype(np.float32)
    x[y == 1, :, :, 0] += 180
    return x, y


def build(arch: str, num_classes: int = 2):
    return scratch.build(arch, SIZE, num_classes, filters=(8, 16), hidden=16, dropout=0.1)


@pytest.mark.slow
def test_each_keras_api() -> None:
    assert isinstance(build("mlp"), keras.Sequential)
    cnn = build("cnn")
    assert type(cnn).__name__ == "Functional" and not isinstance(cnn, keras.Sequential)
    assert [lyr.name for lyr in cnn.layers][1:] == [
        "rescale",
        "conv1",
        "pool1",
        "conv2",
        "pool2",
        "gap",
        "dropout",
        "predictions",
    ]
    res = build("residual")
    net = res.get_layer("residual_net")
    assert isinstance(net, scratch.ResidualNet)
    assert [type(b).__name__ for b in net.blocks] == ["ResidualBlock", "ResidualBlock"]
    for arch in ARCHS:
        m = build(arch, num_classes=3)
        assert m.input_shape == (None, SIZE, SIZE, 3) and m.output_shape == (None, 3)
        assert loading.model_image_size(m) == SIZE
        probs = m.predict(arrays(4)[0], verbose=0)
        assert probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_residual_block_config_and_projection() -> None:
    block = scratch.ResidualBlock(8, strides=2, name="b")
    out = block(keras.ops.ones((1, 9, 9, 4)))
    assert tuple(out.shape) == (1, 5, 5, 8) == block.compute_output_shape((1, 9, 9, 4))
    assert block.project is not None
    config = block.get_config()
    assert config["filters"] == 8 and config["strides"] == 2
    same = scratch.ResidualBlock(4)
    same(keras.ops.ones((1, 8, 8, 4)))
    assert same.project is None
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(block))
    assert isinstance(clone, scratch.ResidualBlock) and clone.strides == 2


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_save_and_load_safe_mode(arch: str, tmp_path: Path) -> None:
    keras.utils.set_random_seed(1)
    model = build(arch)
    path = tmp_path / f"{arch}.keras"
    model.save(path)
    loaded = loading.load_model(path, num_classes=2, image_size=SIZE)
    x, _ = arrays(4)
    np.testing.assert_allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    if arch == "residual":
        assert isinstance(loaded.get_layer("residual_net"), scratch.ResidualNet)


def test_saving_the_same_model_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    """A rerun stage that keeps the same weights must not change its output's hash (DVC
    would rerun everything downstream): no wall clock in the saved archive, and it loads."""
    import time

    keras.utils.set_random_seed(1)
    model = build("cnn")
    loading.save_model(model, tmp_path / "a.keras")
    time.sleep(2.1)  # the zip format's date resolution is 2 s
    loading.save_model(model, tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    loaded = loading.load_model(tmp_path / "b.keras", num_classes=2, image_size=SIZE)
    x, _ = arrays(2)
    np.testing.assert_allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


def test_bare_subclassed_model_round_trips(tmp_path: Path) -> None:
    """The subclassed model on its own (no Functional wrapper) also saves and loads."""
    net = scratch.ResidualNet(2, filters=(8,), dropout=0.0, name="bare")
    x, _ = arrays(2)
    before = net(x)
    net.save(tmp_path / "bare.keras")
    loaded = keras.saving.load_model(tmp_path / "bare.keras", safe_mode=True)
    assert isinstance(loaded, scratch.ResidualNet) and loaded.filters == [8]
    np.testing.assert_allclose(before, loaded(x), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_trains_with_both_loops(arch: str, loop: str, tmp_path: Path) -> None:
    info = runtime.configure(RuntimeConfig(), 3)
    cfg = BaselineConfig(
        architecture=arch,
        loop=loop,
        clip_norm=1.0,
        epochs=3,
        batch_size=8,
        learning_rate=0.01,
        image_size=SIZE,
        filters=(8, 16),
        hidden=16,
    )
    model = scratch.build(arch, SIZE, 2, filters=cfg.filters, hidden=cfg.hidden, dropout=0.0)
    x, y = arrays(24)
    xv, yv = arrays(8, seed=1)
    train_ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(24, seed=3).batch(8)
    val_ds = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(8)
    before = [w.copy() for w in model.get_weights()]
    seen: list[int] = []
    result = training.train(
        model,
        train_ds,
        val_ds,
        cfg,
        info,
        training.RunOptions(
            tmp_path / "ckpt", epoch_hook=lambda epoch, metrics: seen.append(epoch)
        ),
    )
    assert result.epochs_run == len(seen) >= 1
    assert any((a != b).any() for a, b in zip(before, model.get_weights(), strict=True))
    assert np.isfinite(result.history["val_loss"]).all()
    path = tmp_path / "m.keras"
    metrics = stage_io.save_outputs(
        model,
        result,
        model_path=path,
        history_path=tmp_path / "h.json",
        metrics_path=tmp_path / "metrics.json",
        extra=scratch.parameter_count(model),
    )
    assert metrics["trainable_params"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs_run"] == result.epochs_run
    loading.load_model(path, num_classes=2, image_size=SIZE)


def test_custom_loop_clips_by_global_norm() -> None:
    """clip_norm reaches the custom loop (tf.clip_by_global_norm), not the optimizer."""
    info = runtime.configure(RuntimeConfig(), 3)
    cfg = dataclasses.replace(BaselineConfig(), loop="custom", clip_norm=0.5)
    model = build("cnn")
    training.compile_model(model, cfg, info)
    assert model.optimizer.global_clipnorm is None


def test_user_architecture_and_errors() -> None:
    m = scratch.build("tests.models.test_scratch:user_model", SIZE, 2)
    assert m.name == "user"
    with pytest.raises(ConfigError, match=r"baseline\.architecture = 'nope\.mod:f': cannot import"):
        scratch.build("nope.mod:f", SIZE, 2)
    with pytest.raises(ModelError, match=r"outputs \(None, 3\); expected \[batch, 2\]"):
        scratch.build("tests.models.test_scratch:three_classes", SIZE, 2)
    with pytest.raises(ModelError, match="returned str"):
        scratch.build("tests.models.test_scratch:not_a_model", SIZE, 2)
    with pytest.raises(ModelError, match="at least 2 classes"):
        scratch.build("cnn", SIZE, 1)


def user_model(image_size: int, num_classes: int):
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes, "softmax")(x), name="user")


def three_classes(image_size: int, num_classes: int):
    return user_model(image_size, 3)


def not_a_model(image_size: int, num_classes: int):
    return "model"
