"""The served forecaster: an MLflow pyfunc that takes the recent history as a table.

Why a pyfunc around the Keras model: the Keras flavour takes a float32
``[N, window, channels]`` tensor, so every client would have to know the channel order, the
window and the frequency, and would get bare numbers back. This model takes the last
``window`` rows as recorded (time, target, covariates, by the source's column names) and
returns ``horizon`` rows: the timestamp of each step (from the training data's frequency),
the forecast and its split-conformal intervals (the widths calibrated on the val period).

One request is one history, so a history the model cannot use (too short, a NaN, a missing
column, steps that are not consecutive at the frequency) fails that request: an
``MlflowException`` of ``INVALID_PARAMETER_VALUE``, which MLflow's scoring server answers
with HTTP 400 and the reason; in process, :class:`HistoryError` (a ``DataError``) for
``predict``.

What travels with the model: the ``.keras`` file and :class:`ForecastConfig` as
``forecast.json`` (also written beside the local ``.keras`` by the train stage, so
``reprotrain predict`` reads the same file). This module imports only MLflow, numpy, pandas and
``reprotrain.errors`` (its ``code_paths`` are small; ``series.packaging`` logs it).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from reprotrain.errors import DataError

logger = logging.getLogger(__name__)

#: The forecast config beside a local ``model.keras`` (``model.keras`` → ``model.forecast.json``).
CONFIG_SUFFIX = ".forecast.json"
#: Its name among the logged model's artifacts.
CONFIG_ARTIFACT = "forecast.json"


class HistoryError(DataError):
    """A history the forecaster cannot use; the message says why and what to send."""


@dataclass(frozen=True)
class ForecastConfig:
    """What the served model must know besides its weights."""

    window: int
    horizon: int
    frequency: str  # pandas offset alias, from prepare's stats.json
    time: str  # column names, as in the source
    target: str
    covariates: tuple[str, ...] = ()
    #: level key ("80") → {"level": 0.8, "width": [per step], "guaranteed": bool, ...}
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: str = ""  # the Keras model's name (series_lstm, ...)

    @property
    def channels(self) -> tuple[str, ...]:
        return (self.target, *self.covariates)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "covariates": list(self.covariates), "kind": "series"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ForecastConfig:
        return cls(
            window=int(data["window"]),
            horizon=int(data["horizon"]),
            frequency=str(data["frequency"]),
            time=str(data["time"]),
            target=str(data["target"]),
            covariates=tuple(str(c) for c in data.get("covariates", ())),
            intervals=dict(data.get("intervals", {})),
            model=str(data.get("model", "")),
        )

    @classmethod
    def read(cls, path: Path | str) -> ForecastConfig:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise DataError(
                f"{path} not found: the forecaster's config (frequency, columns, interval "
                "widths) is written beside the model by the train stage; rerun it (dvc repro)"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: unreadable forecast config ({exc!r}); rerun train") from None

    def write(self, path: Path | str) -> Path:
        from reprotrain import fsio  # not in the served code: only the train stage writes

        return fsio.atomic_write_json(path, self.to_dict())


def config_path(model_path: Path | str) -> Path:
    """``models/series/model.keras`` → ``models/series/model.forecast.json``."""
    p = Path(model_path)
    return p.with_name(p.name.removesuffix(".keras") + CONFIG_SUFFIX)


def history_window(frame: Any, cfg: ForecastConfig) -> tuple[np.ndarray, pd.Timestamp]:
    """The model input ``[1, window, channels]`` (float32) from the last ``window`` rows of
    a history table, and the last row's time; a :class:`HistoryError` says what is wrong."""
    if not isinstance(frame, pd.DataFrame):
        try:
            frame = pd.DataFrame(frame)
        except (ValueError, TypeError) as exc:
            raise HistoryError(f"the history must be a table of rows ({exc})") from None
    needed = [cfg.time, *cfg.channels]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise HistoryError(
            f"the history lacks column(s) {', '.join(map(repr, missing))}; send the columns "
            f"{', '.join(map(repr, needed))}"
        )
    if len(frame) < cfg.window:
        raise HistoryError(
            f"the history has {len(frame)} rows; the model needs the last {cfg.window} "
            f"(one per {cfg.frequency} step, the newest last)"
        )
    with warnings.catch_warnings():  # text that is no date: our error below, not pandas'
        warnings.simplefilter("ignore", UserWarning)
        times = pd.to_datetime(frame[cfg.time], errors="coerce")
    if times.isna().any():
        row = int(np.flatnonzero(times.isna().to_numpy())[0])
        raise HistoryError(f"history row {row}: {cfg.time!r} is not a timestamp")
    order = np.argsort(times.to_numpy(), kind="stable")
    frame, times = frame.iloc[order[-cfg.window :]], times.iloc[order[-cfg.window :]]
    _check_steps(times, cfg)
    values = frame[list(cfg.channels)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        raise HistoryError(
            f"the history's {cfg.channels[c]!r} is missing or not a number at "
            f"{times.iloc[r]} (among the last {cfg.window} rows): fill the gap first"
        )
    return values.astype(np.float32)[None], pd.Timestamp(times.iloc[-1])


def _check_steps(times: pd.Series, cfg: ForecastConfig) -> None:
    expected = pd.date_range(end=times.iloc[-1], periods=cfg.window, freq=cfg.frequency)
    got = pd.DatetimeIndex(times.to_numpy())
    if len(expected) != len(got) or not (expected == got).all():
        raise HistoryError(
            f"the last {cfg.window} rows are not consecutive {cfg.frequency} steps ending at "
            f"{times.iloc[-1]} ({_step_problem(got, expected)}); send one row per step, no "
            "gaps or duplicates"
        )


def _step_problem(got: pd.DatetimeIndex, expected: pd.DatetimeIndex) -> str:
    """What keeps ``got`` from being ``expected``, by timestamp: repeated ones, then those
    off the frequency's grid (through the newest), then missing steps: what a client has
    to fix. Only called on the error path."""

    def shown(stamps: pd.Index) -> str:
        listed = ", ".join(str(t) for t in stamps[:3])
        return listed + (f" and {len(stamps) - 3} more" if len(stamps) > 3 else "")

    repeated = got[got.duplicated()].unique()
    if len(repeated):
        return f"repeated: {shown(repeated)}"
    last, freq = got[-1], expected.freqstr
    if expected[-1] != last:  # the newest itself is between two steps
        return f"not on the {freq} grid: {shown(got[-1:])}"
    off_grid = got[[not _on_grid(t, last, freq) for t in got]]
    if len(off_grid):
        return f"not on the {freq} grid: {shown(off_grid)}"
    return f"missing: {shown(expected.difference(got))}"


def _on_grid(stamp: pd.Timestamp, last: pd.Timestamp, freq: str) -> bool:
    """Whether whole ``freq`` steps lead from ``stamp`` to ``last``."""
    steps = pd.date_range(start=stamp, end=last, freq=freq)
    return len(steps) > 0 and steps[0] == stamp and steps[-1] == last


def future_times(last: pd.Timestamp, cfg: ForecastConfig) -> pd.DatetimeIndex:
    """The ``horizon`` timestamps after ``last`` at the recorded frequency."""
    return pd.date_range(start=last, periods=cfg.horizon + 1, freq=cfg.frequency)[1:]


def forecast_rows(
    forecast: np.ndarray, last: pd.Timestamp, cfg: ForecastConfig
) -> list[dict[str, Any]]:
    """One dict per step: ``step``, ``time`` (ISO), ``forecast`` and ``lower_<L>`` /
    ``upper_<L>`` for each interval level."""
    rows = []
    for h, (t, f) in enumerate(zip(future_times(last, cfg), forecast, strict=True)):
        row: dict[str, Any] = {"step": h + 1, "time": t.isoformat(), "forecast": float(f)}
        for key, spec in cfg.intervals.items():
            w = float(spec["width"][h])
            row[f"lower_{key}"] = float(f) - w
            row[f"upper_{key}"] = float(f) + w
        rows.append(row)
    return rows


class Forecaster(mlflow.pyfunc.PythonModel):
    """History rows in, ``horizon`` forecast rows out (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        import keras

        self.model = keras.saving.load_model(context.artifacts["model"], compile=False)
        self.config = ForecastConfig.read(context.artifacts["config"])

    def predict(self, context, model_input: pd.DataFrame, params=None):
        # The one hint MLflow 3 derives no signature from (pandas types), as PhotoClassifier.
        try:
            x, last = history_window(model_input, self.config)
        except HistoryError as exc:
            from mlflow.exceptions import MlflowException

            raise MlflowException.invalid_parameter_value(str(exc)) from None
        forecast = np.asarray(self.model(x, training=False), np.float64)[0]
        return forecast_rows(forecast, last, self.config)
