"""The series kind's windows: written by prepare as TFRecords, read back by train, evaluate
and serving through the readers here (:func:`load_windows`, :func:`dataset`,
:func:`load_series`, :func:`load_meta`).

One window is one ``tf.train.Example``: ``x`` (``window × channels`` floats, row-major: the
past steps, channel 0 the target, then the covariates in order), ``y`` (``horizon`` floats:
the target's next steps), ``times`` (the ``horizon`` target timestamps, int64 ns since the
epoch) and ``origin`` (the last input step's timestamp). Why the timestamps travel with the
values: evaluate and the forecast plot must say *when* each prediction is for, and the
no-look-ahead tests assert on them, without re-deriving the windowing.

The windows are made with ``keras.utils.timeseries_dataset_from_array`` (never by hand), so
what the model sees is exactly Keras' windowing of the cleaned series.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reprotrain.data import tfrecords
from reprotrain.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import tensorflow as tf

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
STATS = "stats.json"
SERIES_FILE = "series.parquet"
QUARANTINE = "quarantine.csv"
#: Feature names of one window's Example.
X, Y, TIMES, ORIGIN = "x", "y", "times", "origin"
#: Columns :func:`load_series` adds to the user's (so no source column may be named so).
PERIOD, INTERPOLATED = "period", "interpolated"


@dataclass(frozen=True)
class Windows:
    """The windows of one split, in time order (by ``origin``)."""

    x: np.ndarray  # (n, window, channels) float32; channel 0 = target, then covariates
    y: np.ndarray  # (n, horizon) float32: the target's next horizon steps
    times: np.ndarray  # (n, horizon) datetime64[ns]: the timestamps of y
    origin: np.ndarray  # (n,) datetime64[ns]: the last input step's timestamp

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class SeriesMeta:
    """What prepare recorded in ``stats.json``: the schema, the cuts and every count."""

    frequency: str  # pandas offset alias (W-SAT, D, h, MS, ...)
    time: str  # the time column's name in the source
    target: str
    covariates: tuple[str, ...]
    window: int
    horizon: int
    cuts: dict[str, pd.Timestamp]  # val_start, test_start: a period starts at its cut
    periods: dict[str, dict[str, Any]]  # split → {first, last, steps}
    counts: dict[str, Any]  # rows, quarantined{reason: n}, gaps, windows{split: n}, ...
    changed: dict[str, Any] = field(default_factory=dict)  # rows changed since the cuts
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the whole stats.json

    @property
    def channels(self) -> tuple[str, ...]:
        """The input channels of ``x``, in order (the target first)."""
        return (self.target, *self.covariates)

    @property
    def windows(self) -> dict[str, int]:
        return dict(self.counts.get("windows", {}))


def _fix(prepared: Path) -> str:
    return f"rebuild it with `dvc repro -f prepare` (or `dvc checkout {prepared}`)"


def load_meta(prepared: Path | str) -> SeriesMeta:
    """The :class:`SeriesMeta` of a prepared series folder (a DataError if it is not one)."""
    import pandas as pd

    prepared = Path(prepared)
    path = prepared / STATS
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
        return SeriesMeta(
            frequency=stats["frequency"],
            time=stats["columns"]["time"],
            target=stats["columns"]["target"],
            covariates=tuple(stats["columns"]["covariates"]),
            window=int(stats["window"]),
            horizon=int(stats["horizon"]),
            cuts={k: pd.Timestamp(v) for k, v in stats["cuts"].items()},
            periods=stats["periods"],
            counts=stats["counts"],
            changed=stats.get("changed", {}),
            raw=stats,
        )
    except FileNotFoundError:
        raise DataError(
            f"{path} not found: {prepared} is not a prepared series; {_fix(prepared)}"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: unreadable series stats ({exc!r}); {_fix(prepared)}") from None


def load_series(prepared: Path | str) -> pd.DataFrame:
    """The cleaned series, one row per step of the inferred frequency: the time column, the
    target, the covariates (the source's column names: :func:`load_meta` says which is
    which), ``period`` (train | val | test) and ``interpolated`` (a short gap filled).

    Values of steps in a gap longer than ``series.max_gap`` stay NaN (no window uses them).
    """
    import pandas as pd

    path = Path(prepared) / SERIES_FILE
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise DataError(f"{path} not found; {_fix(Path(prepared))}") from None


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: one of {', '.join(SPLITS)}")


def _parse_fn(window: int, horizon: int, channels: int) -> Any:
    import tensorflow as tf

    spec = {
        X: tf.io.FixedLenFeature([window * channels], tf.float32),
        Y: tf.io.FixedLenFeature([horizon], tf.float32),
        TIMES: tf.io.FixedLenFeature([horizon], tf.int64),
        ORIGIN: tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        ex = tf.io.parse_example(serialized, spec)
        ex[X] = tf.reshape(ex[X], [-1, window, channels])
        return ex

    return parse


def _xy(ex: dict[str, Any]) -> tuple[Any, Any]:
    return ex[X], ex[Y]


def _records(prepared: Path, split: str) -> tuple[list[str], SeriesMeta]:
    _check_split(split)
    meta = load_meta(prepared)
    files = [str(p) for p in tfrecords.verify_shards(prepared, split)]
    return files, meta


def load_windows(prepared: Path | str, split: str) -> Windows:
    """Every window of ``split`` as arrays (see :class:`Windows`), in time order."""
    import tensorflow as tf

    prepared = Path(prepared)
    files, meta = _records(prepared, split)
    parse = _parse_fn(meta.window, meta.horizon, len(meta.channels))
    ds = tf.data.TFRecordDataset(files).batch(4096).map(parse)
    xs, ys, ts, os_ = [], [], [], []
    with tfrecords.shard_errors(files):
        for ex in ds.as_numpy_iterator():
            xs.append(ex[X])
            ys.append(ex[Y])
            ts.append(ex[TIMES])
            os_.append(ex[ORIGIN])
    c, w, h = len(meta.channels), meta.window, meta.horizon
    if not ys:
        empty = np.zeros((0,), dtype="datetime64[ns]")
        return Windows(
            np.zeros((0, w, c), np.float32),
            np.zeros((0, h), np.float32),
            empty.reshape(0, h),
            empty,
        )
    return Windows(
        x=np.concatenate(xs).astype(np.float32),
        y=np.concatenate(ys).astype(np.float32),
        times=np.concatenate(ts).astype("datetime64[ns]"),
        origin=np.concatenate(os_).astype("datetime64[ns]"),
    )


def dataset(
    prepared: Path | str,
    split: str,
    *,
    batch_size: int,
    shuffle_buffer: int | None = None,
    seed: int = 0,
) -> tf.data.Dataset:
    """``(x, y)`` batches of ``split`` read from its TFRecords: ``x`` (batch, window,
    channels), ``y`` (batch, horizon), float32. Time order without ``shuffle_buffer``;
    with it, shuffled, the same order for the same seed (and a new order each epoch)."""
    import tensorflow as tf

    prepared = Path(prepared)
    files, meta = _records(prepared, split)
    parse = _parse_fn(meta.window, meta.horizon, len(meta.channels))
    ds = tf.data.TFRecordDataset(files)
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda s: _xy(parse(s)))
    return ds.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class WindowSet:
    """The windows made from one cleaned series, before their split is decided."""

    x: np.ndarray  # (n, window, channels) float32
    y: np.ndarray  # (n, horizon) float32
    target_index: np.ndarray  # (n, horizon) int64: the grid positions of y
    complete: np.ndarray  # (n,) bool: no NaN among the window's steps (no long gap)


def iter_windows(
    values: np.ndarray, window: int, horizon: int, batch_size: int = 1024
) -> Iterator[WindowSet]:
    """Every window of ``values`` (steps × channels, channel 0 the target), stride 1, in
    batches, made by ``keras.utils.timeseries_dataset_from_array`` over ``window +
    horizon`` steps. Batches, so that a long series never holds all its float64 windows at
    once (an hourly series of five years, window 168: ≈ 200 MB).

    The steps' grid positions ride along as one more float64 channel (exact up to 2**53),
    so each window knows which steps it covers.
    """
    import keras

    steps, channels = values.shape
    length = window + horizon
    if steps < length:
        return
    data = np.column_stack([values.astype(np.float64), np.arange(steps, dtype=np.float64)])
    ds = keras.utils.timeseries_dataset_from_array(
        data,
        None,
        sequence_length=length,
        sequence_stride=1,
        batch_size=batch_size,
        shuffle=False,
    )
    for batch in ds.as_numpy_iterator():
        seqs = np.asarray(batch)
        past, future = seqs[:, :window, :channels], seqs[:, window:, :]
        yield WindowSet(
            x=past.astype(np.float32),
            y=future[:, :, 0].astype(np.float32),
            target_index=future[:, :, channels].astype(np.int64),
            complete=~np.isnan(seqs[:, :, :channels]).any(axis=(1, 2)),
        )


def make_windows(values: np.ndarray, window: int, horizon: int) -> WindowSet:
    """All of :func:`iter_windows` at once."""
    parts = list(iter_windows(values, window, horizon))
    if not parts:
        channels = values.shape[1]
        return WindowSet(
            np.zeros((0, window, channels), np.float32),
            np.zeros((0, horizon), np.float32),
            np.zeros((0, horizon), np.int64),
            np.zeros((0,), bool),
        )
    return WindowSet(
        *(
            np.concatenate([getattr(p, f) for p in parts])
            for f in ("x", "y", "target_index", "complete")
        )
    )


def _example(x: np.ndarray, y: np.ndarray, times: np.ndarray, origin: int) -> bytes:
    import tensorflow as tf

    feature = {
        X: tf.train.Feature(float_list=tf.train.FloatList(value=x.reshape(-1).tolist())),
        Y: tf.train.Feature(float_list=tf.train.FloatList(value=y.tolist())),
        TIMES: tf.train.Feature(int64_list=tf.train.Int64List(value=times.tolist())),
        ORIGIN: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(origin)])),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


def write_split(out_dir: Path, split: str, windows: Windows) -> list[dict[str, Any]]:
    """``<split>-00000-of-00001.tfrecord`` holding ``windows`` in order; its shard entry
    (``reprotrain.data.tfrecords.describe_shards``) for ``shards.json``."""
    import tensorflow as tf

    from reprotrain.data import schema

    path = Path(out_dir) / schema.shard_name(split, 0, 1)
    times = windows.times.astype("datetime64[ns]").astype(np.int64)
    origin = windows.origin.astype("datetime64[ns]").astype(np.int64)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(len(windows)):
            writer.write(_example(windows.x[i], windows.y[i], times[i], origin[i]))
    return tfrecords.describe_shards([path], len(windows), max(1, len(windows)))
