"""The forecaster trained by the image kind's ``training.train`` with a regression loss:
both loops (the custom one with clip_norm), early stopping, determinism on CPU, and a
resume after an interruption that ends with the weights of an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reprotrain import runtime, training
from reprotrain.config import RuntimeConfig, SeriesConfig
from reprotrain.errors import ConfigError
from reprotrain.series import model as series_model
from reprotrain.series import serving
from reprotrain.series import training as series_training

WINDOW, HORIZON = 8, 3


def _windows(n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(n + WINDOW + HORIZON)
    values = 10 + 0.05 * t + np.sin(2 * np.pi * t / 12) + rng.normal(scale=0.1, size=t.size)
    cov = np.cos(2 * np.pi * t / 12)
    data = np.stack([values, cov], axis=1).astype(np.float32)
    x = np.stack([data[i : i + WINDOW] for i in range(n)])
    y = np.stack([values[i + WINDOW : i + WINDOW + HORIZON] for i in range(n)]).astype(np.float32)
    return x, y


def _fit(tmp: Path, cfg: SeriesConfig, hook=None, key: str = "k"):
    info = runtime.configure(RuntimeConfig(), 42)
    x, y = _windows()
    stats = series_model.scaling(x[:64], y[:64], cfg.anchor)
    model = series_model.build(cfg.model, WINDOW, HORIZON, 2, stats, units=cfg.units)
    ds = dict(batch_size=cfg.batch_size, seed=42)
    train_ds = series_training.in_memory_dataset(x[:64], y[:64], shuffle=True, **ds)
    val_ds = series_training.in_memory_dataset(x[64:], y[64:], shuffle=False, **ds)
    result = training.train(
        model,
        train_ds,
        val_ds,
        cfg,
        info,
        training.RunOptions(tmp / "ckpt", resume_key=key, epoch_hook=hook),
        regression=cfg.loss,
    )
    return model, result


#: The custom loop with clip_norm: the run the SIGKILLed one must end up equal to.
CUSTOM = dict(units=4, epochs=2, batch_size=16, loop="custom", loss="mae", clip_norm=0.5)


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory: pytest.TempPathFactory):
    """One uninterrupted :data:`CUSTOM` run (model, result), shared by the tests below."""
    return _fit(tmp_path_factory.mktemp("custom") / "whole", SeriesConfig(**CUSTOM))


def _trains_a_regression(result) -> None:
    history = result.history
    assert {"loss", "mae", "val_loss", "val_mae"} <= set(history)
    assert "accuracy" not in history and "best_val_accuracy" not in result.summary()
    assert history["val_loss"][-1] < history["val_loss"][0]


def test_fit_regression_trains_and_is_deterministic(tmp_path: Path) -> None:
    cfg = SeriesConfig(units=4, epochs=3, batch_size=16, loop="fit", clip_norm=1.0)
    a, result = _fit(tmp_path / "a", cfg)
    _trains_a_regression(result)
    b, _ = _fit(tmp_path / "b", cfg)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_custom_loop_with_clip_norm_trains(custom_run) -> None:
    """(Its determinism: the resume test's equality with this very run.)"""
    _trains_a_regression(custom_run[1])


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from reprotrain.config import SeriesConfig
from tests.series.test_training import CUSTOM, _fit

def kill_after_first(epoch, metrics):
    if epoch == 0:
        os.kill(os.getpid(), signal.SIGKILL)  # after the epoch's commit, nothing cleaned up

_fit(Path(sys.argv[1]), SeriesConfig(**CUSTOM), hook=kill_after_first)
"""


@pytest.mark.slow
def test_sigkilled_custom_run_resumes_to_the_same_weights(tmp_path: Path, custom_run) -> None:
    """A process SIGKILLed after its first epoch; the rerun resumes from the backup and ends
    with the weights of a run that was never stopped."""
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    whole, _ = custom_run
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(tmp_path / "cut")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    resumed, result = _fit(tmp_path / "cut", SeriesConfig(**CUSTOM))
    assert result.initial_epoch == 1 and result.epochs_run == CUSTOM["epochs"]
    for wa, wb in zip(whole.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_class_weights_are_refused_and_config_written(tmp_path: Path) -> None:
    info = runtime.configure(RuntimeConfig(), 0)
    x, y = _windows(32)
    m = series_model.build("gru", WINDOW, HORIZON, 2, series_model.scaling(x, y), units=2)
    ds = series_training.in_memory_dataset(x, y, batch_size=8, shuffle=False, seed=0)
    with pytest.raises(ConfigError, match="classification only"):
        training.train(
            m,
            ds,
            ds,
            SeriesConfig(epochs=1),
            info,
            training.RunOptions(tmp_path / "c"),
            class_weight={0: 2.0},
            regression="mse",
        )

    class Meta:
        window, horizon, frequency, time, target = WINDOW, HORIZON, "W-SAT", "date", "y"
        covariates = ("c",)
        channels = ("y", "c")

    class Val:
        def __init__(self) -> None:
            self.x, self.y = x, y

        def __len__(self) -> int:
            return len(self.y)

    cfg = series_training.forecast_config(m, Meta(), Val(), [0.8, 0.95])
    path = cfg.write(serving.config_path(tmp_path / "model.keras"))
    assert path.name == "model.forecast.json"
    back = serving.ForecastConfig.read(path)
    assert back == cfg and len(back.intervals["95"]["width"]) == HORIZON
