"""Fine-tuning recipes (issue 27): the cosine schedule with warmup, label smoothing, the
finetune-vs-head report, and the claims docs/finetuning.md makes about Keras' own
augmentation layers."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from reprotrain import runtime, training
from reprotrain.config import FinetuneConfig, RuntimeConfig, TrainHeadConfig, params_from_dict
from reprotrain.errors import ConfigError
from reprotrain.evaluation import gate
from reprotrain.evaluation.gain import finetune_gain
from reprotrain.models import scratch
from reprotrain.training import optim
from tests.models.tiny import SIZE, tiny_arrays, tiny_dataset, train_tiny

COSINE = TrainHeadConfig(
    epochs=4,
    batch_size=8,
    feature_cache="off",
    early_stopping_patience=9,
    learning_rate=0.02,
    schedule="cosine",
    warmup_epochs=1,
)


def test_cosine_warms_up_from_zero_then_decays_to_zero() -> None:
    cfg = dataclasses.replace(COSINE, epochs=10, warmup_epochs=2, learning_rate=1e-4)
    schedule = optim.learning_rate(cfg, steps_per_epoch=5)
    rate = [optim.scheduled_rate(schedule, s) for s in range(0, 51)]
    assert rate[0] == 0.0
    assert rate[5] == pytest.approx(0.5e-4)  # halfway through the warmup
    assert rate[10] == pytest.approx(1e-4)  # the peak, at the end of the warmup
    assert all(a >= b for a, b in itertools.pairwise(rate[10:]))  # then down
    assert rate[50] == pytest.approx(0.0, abs=1e-12)
    # The default is the constant rate the stages always used (ReduceLROnPlateau halves it).
    assert optim.learning_rate(FinetuneConfig(learning_rate=1e-4), 5) == 1e-4
    with pytest.raises(ConfigError, match="length is unknown"):
        optim.learning_rate(cfg, steps_per_epoch=None)


def test_warmup_must_leave_epochs_to_decay() -> None:
    with pytest.raises(ConfigError, match=r"finetune\.warmup_epochs = .*less than epochs \(3\)"):
        params_from_dict({"finetune": {"schedule": "cosine", "warmup_epochs": 3, "epochs": 3}})


class Stop(RuntimeError):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_a_resumed_cosine_run_ends_where_an_uninterrupted_one_ends(
    tmp_path: Path, loop: str
) -> None:
    """The scheduled rate is a function of the optimizer's step, which the backups keep: a
    run stopped after epoch 2 and resumed in a new model ends bit-identical, on the curve."""
    cfg = dataclasses.replace(COSINE, loop=loop)
    whole, whole_result = train_tiny(tmp_path / "a", cfg, resume_key="k")

    def stop_after_second(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        train_tiny(tmp_path / "b", cfg, hook=stop_after_second, resume_key="k")
    resumed, resumed_result = train_tiny(tmp_path / "b", cfg, resume_key="k")
    assert resumed_result.initial_epoch == 2
    assert resumed_result.history == whole_result.history
    for a, b in zip(whole.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    steps = int(resumed.optimizer.iterations.numpy())
    assert steps == 4 * 2  # 16 images, batches of 8, 4 epochs
    schedule = optim.learning_rate(cfg, steps_per_epoch=2)
    assert float(resumed.optimizer.learning_rate) == pytest.approx(
        optim.scheduled_rate(schedule, steps)
    )


@pytest.mark.slow
def test_label_smoothing_is_the_smoothed_cross_entropy_in_fit_and_the_custom_loop(
    tmp_path: Path,
) -> None:
    """One batch per epoch, so epoch 1's loss is the loss at the initial weights: both loops
    report the cross-entropy against (1 - e)·onehot + e/K, which differs from the plain one."""
    x, y = tiny_arrays(8)
    eps, k = 0.2, 2
    losses = {}
    for loop in ("fit", "custom"):
        for smoothing in (0.0, eps):
            info = runtime.configure(RuntimeConfig(), seed=5)
            model = scratch.build("cnn", SIZE, 2, filters=(8, 16), dropout=0.0)
            probs = model(x, training=True).numpy().astype(np.float64)
            cfg = TrainHeadConfig(
                epochs=1, batch_size=8, feature_cache="off", loop=loop, label_smoothing=smoothing
            )
            ds = tiny_dataset(x, y, batch_size=8)
            result = training.train(
                model, ds, ds, cfg, info, training.RunOptions(tmp_path / f"{loop}{smoothing}")
            )
            losses[loop, smoothing] = result.history["loss"][0]
    target = np.full((8, k), eps / k) + (1 - eps) * np.eye(k)[y]
    # Without dropout the training-mode output is deterministic: the one fit starts from.
    expected = float(np.mean(-(target * np.log(np.clip(probs, 1e-7, 1))).sum(axis=1)))
    for loop in ("fit", "custom"):
        assert losses[loop, eps] == pytest.approx(expected, rel=1e-4)
        assert losses[loop, eps] != pytest.approx(losses[loop, 0.0], rel=1e-3)
    assert optim.make_loss(TrainHeadConfig(), None) == "sparse_categorical_crossentropy"


def test_finetune_gain_uses_the_gates_paired_test() -> None:
    y = np.array([0, 1] * 20)
    head = y.copy()
    head[:10] = 1 - y[:10]  # the head gets 10 wrong
    tuned = y.copy()
    tuned[0] = 1 - y[0]  # fine-tuning fixes 9 of them
    out = finetune_gain(y, head, tuned, alpha=0.05)
    assert out["n"] == 40
    assert out["head_accuracy"] == 0.75 and out["finetuned_accuracy"] == 0.975
    assert out["delta"] == pytest.approx(0.225)
    assert out["mcnemar"] == gate.mcnemar_exact(tuned == y, head == y)
    assert out["verdict"] == "better"
    assert out["summary"].startswith("fine-tuning beat the head: 75.0% -> 97.5% (+22.5 points")
    lo, hi = out["finetuned_ci"]
    assert lo < 0.975 < hi

    same = finetune_gain(y, head, head, alpha=0.05, kept_head=True)
    assert same["verdict"] == "no_gain" and same["delta"] == 0
    assert same["summary"].startswith("fine-tuning added nothing")
    assert "finetune.learning_rate" in same["summary"] and "\n" not in same["summary"]
    one_better = tuned.copy()
    one_better[:] = head
    one_better[1] = y[1]  # one image fixed: +2.5 points, not significant
    flat = finetune_gain(y, head, one_better, alpha=0.05)
    assert flat["verdict"] == "no_gain"
    assert flat["summary"].startswith("fine-tuning added nothing significant")


# --- Keras' own augmentation layers: why the pipeline does not offer them (docs/finetuning.md)


def test_keras_randaugment_ignores_the_seed_it_is_given() -> None:
    """RandAugment draws from its own SeedGenerator state, whatever seed the call passes:
    the pipeline's per-batch seeds (what makes a resumed run and both placements see the
    same pixels) cannot drive it."""
    images = tf.random.stateless_uniform((4, 16, 16, 3), (1, 2), maxval=255.0)
    layer = keras.layers.RandAugment(value_range=(0, 255), seed=7)
    layer.build(images.shape)
    draws = [
        layer.get_random_transformation(images, training=True, seed=123)["layer_idxes"].numpy()
        for _ in range(8)
    ]
    assert len({tuple(d) for d in draws}) > 1  # same seed argument, different operations


def test_keras_random_erasing_cannot_take_a_per_batch_seed_tensor() -> None:
    """RandomErasing accepts an int or its own generator; a seed tensor (what tf.data draws
    per batch) fails inside a graph."""
    layer = keras.layers.RandomErasing(factor=1.0, value_range=(0, 255))
    images = tf.zeros((2, 16, 16, 3))

    @tf.function
    def erase(seed: tf.Tensor) -> tf.Tensor:
        t = layer.get_random_transformation(images, training=True, seed=seed)
        return layer.transform_images(images, t, training=True)

    with pytest.raises((TypeError, ValueError, tf.errors.OperatorNotAllowedInGraphError)):
        erase(tf.constant([1, 2], tf.int32))


def test_keras_mixup_mixes_labels_into_soft_targets() -> None:
    """MixUp (and CutMix) change the labels, not only the pixels: the loss needs soft
    targets, and the in-model placement, which sees images only, cannot apply them."""
    images = tf.random.stateless_uniform((8, 16, 16, 3), (3, 4), maxval=255.0)
    labels = tf.one_hot(tf.range(8) % 2, 2)
    out = keras.layers.MixUp(alpha=0.4, seed=1)({"images": images, "labels": labels})
    mixed = out["labels"].numpy()
    assert not np.all(np.isin(mixed, (0.0, 1.0)))  # soft labels
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, rtol=1e-5)
