"""The backup's weights writer (training.weights_writer) writes what ``save_weights`` writes."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from reprotrain import runtime
from reprotrain.config import RuntimeConfig
from reprotrain.training.weights_writer import WeightsWriter, record_plan
from tests.models.tiny import tiny_arrays, tiny_cnn, tiny_dataset


def _tree(path: Path) -> dict[str, object]:
    """Every group and dataset of an HDF5 file: its kind, attributes and values."""
    out: dict[str, object] = {}
    with h5py.File(path) as f:

        def visit(name: str, obj: object) -> None:
            attrs = {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}
            value = obj[()].tolist() if isinstance(obj, h5py.Dataset) else None
            out[name] = (type(obj).__name__, attrs, value)

        f.visititems(visit)
    return out


@pytest.mark.slow
def test_the_writer_writes_what_save_weights_writes(tmp_path: Path) -> None:
    """After training (optimizer built) and after more training (new values, same plan),
    the file holds the same groups, attributes and values as Keras' own, and loads."""
    runtime.configure(RuntimeConfig(), seed=5)
    model = tiny_cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = tiny_arrays(16)
    writer = WeightsWriter()
    for step in range(2):
        model.fit(tiny_dataset(x, y), epochs=1, verbose=0)
        model.save_weights(tmp_path / f"keras-{step}.weights.h5")
        writer.save(model, tmp_path / f"writer-{step}.weights.h5")
        assert not writer.fallback
        ours = _tree(tmp_path / f"writer-{step}.weights.h5")
        assert ours == _tree(tmp_path / f"keras-{step}.weights.h5")
        assert any(name.startswith("optimizer/vars") for name in ours)
    trained = [w.copy() for w in model.get_weights()]
    fresh = tiny_cnn()
    fresh.compile("adam", "sparse_categorical_crossentropy")
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(tmp_path / "writer-1.weights.h5")
    for a, b in zip(trained, fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(fresh.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy())


def test_an_unexpected_saver_falls_back_to_save_weights(tmp_path: Path) -> None:
    """An object Keras cannot walk is not recorded (None): the writer then uses Keras."""
    assert record_plan(object()) is None
