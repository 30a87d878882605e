"""Training a table model with the image stages' loop: deterministic on CPU, the custom
loop with clip_norm and balanced class weights, resumable (real TensorFlow, a churn slice)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reprotrain import runtime, stage_io, training
from reprotrain.config import RuntimeConfig, load_params
from reprotrain.tables import features, inference
from reprotrain.tables import model as tm
from reprotrain.tables.training import make_dataset

SEED = 7

pytestmark = pytest.mark.slow  # real training / MLflow logging: tens of seconds


@pytest.fixture(scope="module")
def churn(assets):
    if assets is None:
        pytest.skip("offline assets (REPROTRAIN_ASSETS) not available")
    frame = pd.read_csv(assets / "datasets/churn/churn.csv", nrows=160)
    numeric = tuple(c for c in frame.columns if c != "label" and frame[c].dtype.kind in "if")
    spec = features.InputSpec(
        numeric=numeric, categorical=("state", "international_plan", "voice_mail_plan")
    )
    return spec, features.model_inputs(frame, spec), frame["label"].to_numpy().astype(np.int64)


def _cfg(**kw):
    base = dict(epochs=2, batch_size=32, hidden=(16,), embedding_dim=8)
    return dataclasses.replace(load_params(Path("params.yaml")).table, **{**base, **kw})


def _fit(churn, tmp: Path, cfg, api="functional", class_weight=None):
    spec, inputs, y = churn
    info = runtime.configure(RuntimeConfig(), SEED)
    model = tm.build(spec, 2, inputs, cfg, api)
    train_ds = make_dataset(
        inference.feed(model, inputs, spec),
        y,
        batch_size=cfg.batch_size,
        shuffle_buffer=64,
        seed=SEED,
    )
    val_ds = make_dataset(inference.feed(model, inputs, spec), y, batch_size=cfg.batch_size)
    result = training.train(
        model, train_ds, val_ds, cfg, info, training.RunOptions(tmp), class_weight=class_weight
    )
    return model, result


def test_fit_is_deterministic_on_cpu(churn, tmp_path) -> None:
    a, ra = _fit(churn, tmp_path / "a", _cfg())
    b, rb = _fit(churn, tmp_path / "b", _cfg())
    assert ra.history == rb.history and ra.epochs_run == 2
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_custom_loop_with_clip_norm_and_balanced_weights(churn, tmp_path) -> None:
    _, _, y = churn
    counts = {"0": int((y == 0).sum()), "1": int((y == 1).sum())}
    weights = stage_io.class_weights("balanced", ["0", "1"], counts)
    assert weights[1] > 1 > weights[0]
    model, result = _fit(
        churn, tmp_path / "c", _cfg(loop="custom", clip_norm=1.0), "subclassed", weights
    )
    assert model.name == "table_subclassed" and result.epochs_run == 2
    assert np.isfinite(result.history["loss"]).all()


def test_a_rerun_resumes_after_the_last_finished_epoch(churn, tmp_path) -> None:
    """The backup of a run killed after epoch 2 (here: stopped at 2 of 3 with the same
    resume key) is picked up: the rerun trains epoch 3 only."""
    spec, inputs, y = churn
    cfg = _cfg(epochs=2)
    info = runtime.configure(RuntimeConfig(), SEED)
    model = tm.build(spec, 2, inputs, cfg, "functional")
    ds = make_dataset(inference.feed(model, inputs, spec), y, batch_size=32)
    run = training.RunOptions(tmp_path / "r", resume_key="k")
    training.train(model, ds, ds, cfg, info, run)
    again = tm.build(spec, 2, inputs, cfg, "functional")
    result = training.train(again, ds, ds, _cfg(epochs=3), info, run)
    assert result.initial_epoch == 2 and result.history["epoch"] == [1, 2, 3]
