"""``pipeline.augment.placement``: augmentation in the train step draws the same pixels, and
trains the same weights, as augmentation in the input pipeline; the saved model is the
plain one."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from reprotrain import runtime, training
from reprotrain.config import PipelineConfig, RuntimeConfig, TrainHeadConfig
from reprotrain.data import augmentation, pipeline
from reprotrain.errors import ConfigError
from reprotrain.paths import split_files
from tests.conftest import prepared_tree
from tests.models.tiny import SIZE, tiny_cnn

CFG = PipelineConfig(shuffle_buffer=64)
HEAD = TrainHeadConfig(epochs=2, batch_size=8, learning_rate=0.01, feature_cache="off")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    prepared = prepared_tree(
        tmp_path_factory.mktemp("placement"), {"cats": 16, "dogs": 16}, shard_size=8
    )
    return split_files(prepared, "train"), split_files(prepared, "val")


def _train_ds(files: list[Path], augment_in: str) -> tf.data.Dataset:
    return pipeline.make_dataset(
        files, CFG, True, image_size=SIZE, batch_size=8, seed=3, augment_in=augment_in
    )


def test_auto_is_the_model_on_a_gpu_and_the_input_pipeline_on_a_cpu() -> None:
    assert runtime.resolve_augment_placement("auto", gpus=1) == "model"
    assert runtime.resolve_augment_placement("auto", gpus=0) == "input"
    assert runtime.resolve_augment_placement("model", gpus=0) == "model"
    assert runtime.resolve_augment_placement("input", gpus=4) == "input"
    with pytest.raises(ConfigError, match="placement"):
        runtime.resolve_augment_placement("gpu", gpus=1)


def test_the_train_step_draws_the_pipelines_pixels(shards) -> None:
    """The model placement delivers uint8 batches and the seeds; augmenting them as the
    step does gives exactly the input pipeline's batches."""
    train, _ = shards
    host = list(_train_ds(train, "input"))
    device = list(_train_ds(train, "model"))
    assert len(host) == len(device) > 1
    for (x, y), ((images, seeds), y2) in zip(host, device, strict=True):
        assert images.dtype == tf.uint8 and seeds.shape == (images.shape[0], 2)
        assert (seeds == seeds[0]).numpy().all()  # the batch's seed on every row
        np.testing.assert_array_equal(y, y2)
        np.testing.assert_array_equal(x, augmentation.augment_batch(images, CFG.augment, seeds[0]))


def _fit(train: list[Path], val: list[Path], tmp: Path, placement: str) -> keras.Model:
    # The datasets after runtime.configure, as in a stage: their seeded ops depend on the
    # global seed it sets.
    info = runtime.configure(RuntimeConfig(), 7)
    val_ds = pipeline.make_dataset(val, CFG, False, image_size=SIZE, batch_size=8, seed=3)
    model = tiny_cnn()
    augment = CFG.augment if placement == "model" else None
    training.train(
        model,
        _train_ds(train, placement),
        val_ds,
        HEAD,
        info,
        training.RunOptions(tmp / "ckpt"),
        augment=augment,
    )
    return model


@pytest.mark.slow
def test_training_in_the_step_equals_training_on_the_input_pipelines_batches(
    shards, tmp_path: Path
) -> None:
    train, val = shards
    on_input = _fit(train, val, tmp_path / "a", "input")
    in_step = _fit(train, val, tmp_path / "b", "model")
    for w1, w2 in zip(on_input.get_weights(), in_step.get_weights(), strict=True):
        np.testing.assert_array_equal(w1, w2)
    # What the stage saves is the plain model: no wrapper, loadable without reprotrain.
    assert not isinstance(in_step, training.AugmentingModel)
    path = tmp_path / "m.keras"
    in_step.save(path)
    loaded = keras.models.load_model(path)
    assert [type(layer).__name__ for layer in loaded.layers] == [
        type(layer).__name__ for layer in on_input.layers
    ]
