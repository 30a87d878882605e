"""Training: callbacks and outputs, class weights, determinism, custom loop, feature cache,
and BatchNorm staying in inference mode during fine-tuning. Tiny real models (0.35, 32×32)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from reprotrain import runtime, stage_io, training
from reprotrain.config import FinetuneConfig, RuntimeConfig, TrainHeadConfig
from reprotrain.errors import ConfigError, DataError
from reprotrain.models import transfer
from tests.models.tiny import tiny_arrays, tiny_dataset, tiny_model_cfg

SEED = 7
HEAD = TrainHeadConfig(epochs=2, batch_size=8, learning_rate=0.01, feature_cache="off")


@pytest.fixture(scope="module")
def data():
    x, y = tiny_arrays(24)
    xv, yv = tiny_arrays(8, seed=1)
    return x, y, xv, yv


def _setup(seed: int = SEED, dropout: float = 0.2):
    info = runtime.configure(RuntimeConfig(), seed)
    return info, transfer.build_model(tiny_model_cfg(), num_classes=2, dropout=dropout)


def _arch(model) -> str:
    """The model's layer graph as JSON, without Keras' auto-numbered input names."""
    return re.sub(r"input_layer_\d+", "input_layer", json.dumps(model.get_config()))


def _train_ds(x, y, seed=SEED):
    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=seed).batch(8)


# --------------------------------------------------------------------------- pure helpers


def test_use_feature_cache() -> None:
    assert training.use_feature_cache(TrainHeadConfig(augment=False)) is True
    # Multi-worker: auto means off, on is an error.
    assert training.use_feature_cache(TrainHeadConfig(augment=False), num_workers=2) is False
    with pytest.raises(ConfigError, match="multi_worker"):
        training.use_feature_cache(TrainHeadConfig(feature_cache="on"), num_workers=2)
    assert training.use_feature_cache(TrainHeadConfig(augment=True)) is False
    assert training.use_feature_cache(TrainHeadConfig(feature_cache="off")) is False
    with pytest.raises(ConfigError, match="augment"):
        training.use_feature_cache(TrainHeadConfig(augment=True, feature_cache="on"))


def test_class_weights_from_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    rows = ["path,label,label_index,split,sha256,height,width"]
    rows += [f"a{i}.jpg,ants,0,train,x,1,1" for i in range(30)]
    rows += [f"b{i}.jpg,bees,1,train,x,1,1" for i in range(10)]
    rows += [f"v{i}.jpg,bees,1,val,x,1,1" for i in range(50)]
    manifest.write_text("\n".join(rows) + "\n")
    counts = stage_io.train_counts(manifest, ["ants", "bees"])
    assert counts == {"ants": 30, "bees": 10}
    assert stage_io.class_weights("none", ["ants", "bees"], counts) is None
    balanced = stage_io.class_weights("balanced", ["ants", "bees"], counts)
    assert balanced == pytest.approx({0: 40 / 60, 1: 40 / 20})
    assert stage_io.class_weights({"bees": 3.0}, ["ants", "bees"], counts) == {0: 1.0, 1: 3.0}
    with pytest.raises(ConfigError, match="unknown class 'wasps'"):
        stage_io.class_weights({"wasps": 2.0}, ["ants", "bees"], counts)
    with pytest.raises(DataError, match="no training images"):
        stage_io.class_weights("balanced", ["ants", "bees"], {"ants": 3, "bees": 0})
    with pytest.raises(DataError, match=r"not in labels\.json"):
        stage_io.train_counts(manifest, ["ants"])


# --------------------------------------------------------------------------- fit


def _fit_once(data, tmp: Path):
    x, y, xv, yv = data
    info, model = _setup()
    calls: list[tuple[int, dict]] = []
    result = training.train(
        model,
        _train_ds(x, y),
        tiny_dataset(xv, yv),
        HEAD,
        info,
        training.RunOptions(
            tmp / "ckpt",
            tensorboard_dir=tmp / "tb",
            resume_key="k",
            epoch_hook=lambda e, m: calls.append((e, m)),
        ),
    )
    return model, result, calls


@pytest.mark.slow
def test_fit_outputs_and_determinism(data, tmp_path: Path) -> None:
    m1, r1, calls = _fit_once(data, tmp_path / "a")
    m2, r2, _ = _fit_once(data, tmp_path / "b")
    # Same seed, same inputs → bit-identical weights and metrics (op determinism on CPU).
    for w1, w2 in zip(m1.get_weights(), m2.get_weights(), strict=True):
        np.testing.assert_array_equal(w1, w2)
    assert r1.history == r2.history
    # The head learned something; the frozen base did not move (a fresh build with the same
    # seed has the starting weights: the base loads its file, the head's init is seeded).
    assert r1.history["loss"][-1] < r1.history["loss"][0]
    _, fresh = _setup()
    base_after, base_before = transfer.get_base(m1), transfer.get_base(fresh)
    assert base_after.weights, "the base has weights to compare"
    for after, before in zip(base_after.weights, base_before.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(after), np.asarray(before), err_msg=after.path)
    head_after = m1.get_layer(transfer.OUTPUT_NAME).get_weights()[0]
    assert not np.array_equal(head_after, fresh.get_layer(transfer.OUTPUT_NAME).get_weights()[0])
    # Outputs: history (1-based epochs), hook per epoch, TensorBoard events, no leftovers.
    assert r1.history["epoch"] == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(r1.history)
    assert [e for e, _ in calls] == [0, 1]
    assert calls[1][1]["val_loss"] == r1.history["val_loss"][1]
    for split in ("train", "validation"):
        assert list((tmp_path / "a" / "tb" / split).glob("events.out.tfevents.*"))
    # The backup stays until the caller has saved its outputs: the last and the best epoch,
    # and the TensorBoard logs a resumed run appends to (published to tb/ above).
    kept = {training.epoch_file(1), training.epoch_file(r1.best_epoch - 1)}
    ckpt = {p.name for p in (tmp_path / "a" / "ckpt").iterdir()}
    assert ckpt == {*kept, training.FINGERPRINT_FILE, training.STATE_FILE, "tensorboard"}
    summary = r1.summary()
    # The kept epoch is the one with the lowest validation loss (first one on a tie).
    assert summary["best_epoch"] == int(np.argmin(r1.history["val_loss"])) + 1
    assert summary["val_accuracy"] == r1.history["val_accuracy"][summary["best_epoch"] - 1]
    path = tmp_path / "h.json"
    stage_io.write_history(r1, path)
    assert json.loads(path.read_text())["epoch"] == [1, 2]


@pytest.mark.slow
def test_class_weight_and_custom_loop(data, tmp_path: Path) -> None:
    """One batch per epoch: epoch-1 loss is the loss at the initial weights, so weighting
    both classes by 2 must double it, in fit and in the GradientTape loop alike; the custom
    loop drives the same callbacks (history, hook, TensorBoard, cleanup)."""
    x, y, xv, yv = data
    info, model = _setup(dropout=0.0)
    init = model.get_weights()
    one_batch = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(y))
    val = tiny_dataset(xv, yv)
    cfg = dataclasses.replace(HEAD, epochs=1)
    results = {}
    calls: list[int] = []
    doubled = {0: 2.0, 1: 2.0}
    runs = [("plain", "fit", None), ("fit", "fit", doubled), ("custom", "custom", doubled)]
    for name, loop, cw in runs:
        model.set_weights(init)
        results[name] = training.train(
            model,
            one_batch,
            val,
            dataclasses.replace(cfg, loop=loop, clip_norm=0.5),
            info,
            training.RunOptions(
                tmp_path / name,
                tensorboard_dir=tmp_path / f"tb-{name}",
                epoch_hook=(lambda e, m: calls.append(e)) if loop == "custom" else None,
            ),
            class_weight=cw,
        )
    loss = {name: r.history["loss"][0] for name, r in results.items()}
    assert loss["fit"] == pytest.approx(2 * loss["plain"], rel=1e-5)
    assert loss["custom"] == pytest.approx(loss["fit"], rel=1e-5)
    custom = results["custom"]
    assert set(custom.history) == set(results["fit"].history)
    assert custom.history["epoch"] == [1] and calls == [0]
    assert list((tmp_path / "tb-custom" / "validation").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "custom" / training.STATE_FILE).read_text())["done"] == 1
    assert not np.array_equal(init[-2], model.get_layer("predictions").get_weights()[0])


@pytest.mark.slow
def test_feature_cache_path_same_architecture(data, tmp_path: Path) -> None:
    x, y, xv, yv = data
    info, plain = _setup()
    training.train(
        plain,
        _train_ds(x, y),
        tiny_dataset(xv, yv),
        HEAD,
        info,
        training.RunOptions(tmp_path / "p"),
    )
    info, cached = _setup()
    base_before = [w.copy() for w in transfer.get_base(cached).get_weights()]
    head_before = cached.get_layer("predictions").get_weights()[0].copy()
    cfg = dataclasses.replace(HEAD, feature_cache="on")
    result = training.train_head_cached(
        cached,
        tiny_dataset(x, y),
        tiny_dataset(xv, yv),
        cfg,
        info,
        training.RunOptions(tmp_path / "c"),
        seed=SEED,
    )
    assert result.extra["feature_cache"] is True
    assert _arch(cached) == _arch(plain)
    for a, b in zip(base_before, transfer.get_base(cached).get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(head_before, cached.get_layer("predictions").get_weights()[0])
    # The trained head sits on the full model: its val metrics are the head-only ones.
    evaluated = cached.evaluate(tiny_dataset(xv, yv), verbose=0, return_dict=True)
    best = result.at(result.best_epoch)
    assert evaluated["loss"] == pytest.approx(best["val_loss"], rel=1e-4)
    cached.save(tmp_path / "cached.keras")
    loaded = keras.saving.load_model(tmp_path / "cached.keras", safe_mode=True)
    assert _arch(loaded) == _arch(plain)


@pytest.mark.slow
def test_finetune_keeps_batchnorm_statistics(data, tmp_path: Path) -> None:
    """After save → load, unfreezing and training: unfrozen convs move, BN stats do not."""
    x, y, xv, yv = data
    info, model = _setup()
    model.save(tmp_path / "head.keras")
    model = keras.saving.load_model(tmp_path / "head.keras", safe_mode=True, compile=False)
    names = transfer.unfreeze_top(model, 12)
    base = transfer.get_base(model)
    bns = [lyr for lyr in base.layers if isinstance(lyr, keras.layers.BatchNormalization)]
    stats = {bn.name: [bn.moving_mean.numpy(), bn.moving_variance.numpy()] for bn in bns}
    kernels = {n: base.get_layer(n).get_weights()[0].copy() for n in names}
    frozen = base.get_layer("Conv1").get_weights()[0].copy()
    cfg = FinetuneConfig(epochs=1, batch_size=8, learning_rate=0.01, unfreeze_top=12)
    training.train(
        model, _train_ds(x, y), tiny_dataset(xv, yv), cfg, info, training.RunOptions(tmp_path / "c")
    )
    for bn in bns:
        np.testing.assert_array_equal(bn.moving_mean.numpy(), stats[bn.name][0])
        np.testing.assert_array_equal(bn.moving_variance.numpy(), stats[bn.name][1])
    for n in names:
        assert not np.array_equal(kernels[n], base.get_layer(n).get_weights()[0]), n
    np.testing.assert_array_equal(frozen, base.get_layer("Conv1").get_weights()[0])


def test_stale_backup_from_other_inputs_is_discarded(tmp_path: Path, caplog) -> None:
    ckpt = tmp_path / "ckpt"
    (ckpt / "backup").mkdir(parents=True)  # Keras BackupAndRestore's, from older versions
    (ckpt / training.STATE_FILE).write_text("{}")
    (ckpt / training.FINGERPRINT_FILE).write_text("old\n")
    store = training.CheckpointStore(ckpt)
    store.prepare("new")
    assert [p.name for p in ckpt.iterdir()] == [training.FINGERPRINT_FILE]
    assert (ckpt / training.FINGERPRINT_FILE).read_text().strip() == "new"
    assert "different inputs" in caplog.text
    (ckpt / "backup").mkdir()
    store.prepare("new")
    assert not (ckpt / "backup").exists()


@pytest.mark.slow
def test_keep_start_weights_when_no_epoch_beats_them(data, tmp_path: Path) -> None:
    """Fine-tuning on labels that contradict validation only makes val_loss worse: the
    starting weights are kept and reported (best_epoch 0)."""
    x, y, xv, yv = data
    info, model = _setup(dropout=0.0)
    start = [w.copy() for w in model.get_weights()]
    cfg = dataclasses.replace(HEAD, epochs=5, learning_rate=0.05, early_stopping_patience=2)
    train_ds, val_ds = _train_ds(x, 1 - y), tiny_dataset(xv, yv)
    result = training.train(
        model,
        train_ds,
        val_ds,
        cfg,
        info,
        training.RunOptions(tmp_path / "c"),
        keep_start_if_better=True,
    )
    assert result.best_epoch == 0
    # Patience counts from the starting weights: two epochs that do not beat them stop it.
    assert result.epochs_run == 2 and result.stopped_early
    for a, b in zip(start, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    summary = result.summary()
    assert summary["kept_start_weights"] is True
    assert summary["val_loss"] == result.start["val_loss"] < min(result.history["val_loss"])
