"""The series kind's prepare: the snapshotted file → a cleaned regular series, its periods
(the recorded cuts), and the windows of each period as TFRecords (``data/series/prepared``).

No look-ahead: a window belongs to the period all its targets lie in; a window whose
targets straddle a cut is used by no split (counted). Its inputs may reach back into the
earlier periods: that is the past, known at its origin. So the train period must hold one
whole window (``window + horizon`` steps), while val and test need only ``horizon`` steps
each (their first window's inputs are train's, or val's, last steps).
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reprotrain import fsio
from reprotrain.config_kinds import ColumnsConfig, SeriesConfig
from reprotrain.data import tfrecords
from reprotrain.errors import DataError
from reprotrain.series import cuts as cutting
from reprotrain.series.clean import Cleaned, clean
from reprotrain.series.frame import Rejected, Roles, find_source, infer_roles, read_source
from reprotrain.series.windows import (
    INTERPOLATED,
    PERIOD,
    QUARANTINE,
    SERIES_FILE,
    SPLITS,
    STATS,
    Windows,
    iter_windows,
    write_split,
)
from reprotrain.timing import timed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """The windows of each split and what was left out."""

    windows: dict[str, Windows]
    dropped: dict[str, int]  # windows that touch a gap left empty
    across_cuts: int  # windows whose targets straddle a cut


def check_lengths(steps: dict[str, int], window: int, horizon: int, recorded: bool = False) -> None:
    """A one-line DataError when a period is too short for one window (see the module)."""
    recut = (
        "; or set series.recut: true (the cuts recorded in data/series/cuts.json no longer "
        "fit the data)"
        if recorded
        else ""
    )
    need = window + horizon
    if steps["train"] < need:
        raise DataError(
            f"the train period has {steps['train']} steps; window {window} + horizon "
            f"{horizon} needs at least {need} (lower series.window/horizon, or lower "
            f"series.val_fraction/test_fraction){recut}"
        )
    for split in ("val", "test"):
        if steps[split] < horizon:
            raise DataError(
                f"the {split} period has {steps[split]} steps; horizon {horizon} needs at "
                f"least {horizon} (its windows' inputs reach back into the earlier periods; "
                f"lower series.horizon or raise series.{split}_fraction){recut}"
            )


def split_windows(cleaned: Cleaned, periods: np.ndarray, window: int, horizon: int) -> Split:
    """Keras' windows of the cleaned series, each given to the period of its targets."""
    times = cleaned.times.to_numpy().astype("datetime64[ns]")
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {s: [] for s in SPLITS}
    dropped = dict.fromkeys(SPLITS, 0)
    across = 0
    for made in iter_windows(cleaned.values, window, horizon):
        first = periods[made.target_index[:, 0]]
        inside = first == periods[made.target_index[:, -1]]
        across += int((~inside).sum())
        for split in SPLITS:
            mine = inside & (first == split)
            keep = mine & made.complete
            dropped[split] += int((mine & ~made.complete).sum())
            parts[split].append((made.x[keep], made.y[keep], made.target_index[keep]))
    out = {}
    for split in SPLITS:
        x, y, idx = (
            (np.concatenate([p[i] for p in parts[split]]) for i in range(3))
            if parts[split]
            else (
                np.zeros((0, window, cleaned.values.shape[1]), np.float32),
                np.zeros((0, horizon), np.float32),
                np.zeros((0, horizon), np.int64),
            )
        )
        out[split] = Windows(
            x=x, y=y, times=times[idx], origin=times[idx[:, 0] - 1] if len(idx) else times[:0]
        )
    return Split(out, dropped, across)


def _period_table(times: pd.DatetimeIndex, periods: np.ndarray) -> dict[str, dict[str, Any]]:
    table = {}
    for split in SPLITS:
        t = times[periods == split]
        table[split] = {
            "first": t[0].isoformat() if len(t) else None,
            "last": t[-1].isoformat() if len(t) else None,
            "steps": len(t),
        }
    return table


def series_frame(cleaned: Cleaned, roles: Roles, periods: np.ndarray) -> pd.DataFrame:
    """The cleaned series as :func:`reprotrain.series.windows.load_series` returns it."""
    frame = pd.DataFrame({roles.time: cleaned.times})
    for i, name in enumerate(roles.channels):
        frame[name] = cleaned.values[:, i]
    frame[PERIOD] = pd.Series(periods, dtype=str)
    frame[INTERPOLATED] = cleaned.interpolated
    return frame


def _quarantine_csv(cleaned: Cleaned) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("line", "time", "reason"))
    writer.writerows((p.line, p.time, p.reason) for p in cleaned.quarantine)
    return buf.getvalue()


def _write(
    out_dir: Path, split: Split, frame: pd.DataFrame, cleaned: Cleaned, stats: dict[str, Any]
) -> None:
    out_dir.mkdir(parents=True)
    index = {s: write_split(out_dir, s, split.windows[s]) for s in SPLITS}
    tfrecords.write_shard_index(out_dir, index)
    frame.to_parquet(out_dir / SERIES_FILE, index=False)
    (out_dir / QUARANTINE).write_text(_quarantine_csv(cleaned), encoding="utf-8")
    fsio.atomic_write_json(out_dir / STATS, stats)


def _report(stats: dict[str, Any], out_dir: Path) -> None:
    c = stats["counts"]
    log.info(
        "prepare: %s series %s (%d rows → %d steps of %s); windows train/val/test %s; "
        "quarantined %s; gaps interpolated %s, left %s; windows dropped %s → %s",
        stats["source"],
        stats["columns"]["target"],
        c["rows"],
        c["steps"],
        stats["frequency"],
        "/".join(str(c["windows"][s]) for s in SPLITS),
        c["quarantined"] or 0,
        c["gaps_interpolated"],
        c["gaps_left"],
        c["windows_dropped"],
        out_dir,
    )
    changed = stats["changed"]
    if changed.get("rows"):
        where = "; ".join(
            f"{s}: {v['rows']} (e.g. {', '.join(v['times'][:3])})"
            for s, v in changed["periods"].items()
        )
        log.warning(
            "prepare: %d steps changed inside the recorded periods since the cuts were "
            "recorded (%s): metrics are not comparable with earlier runs there "
            "(series.recut: true re-records)",
            changed["rows"],
            where,
        )
    elif changed.get("note"):
        log.info("prepare: cuts: %s", changed["note"])


def _no_rows(source: Path, rejected: tuple[Rejected, ...]) -> str:
    if not rejected:
        return f"{source}: no rows (a series needs one row per time step)"
    first = rejected[0]
    return (
        f"{source}: no usable row, all {len(rejected)} are malformed (line {first.line}: "
        f"{first.reason}); check the delimiter and the header row"
    )


@timed("data")
def prepare(
    raw_dir: Path,
    out_dir: Path,
    columns: ColumnsConfig,
    cfg: SeriesConfig,
    cuts_file: Path | None = None,
) -> dict[str, Any]:
    """Prepare the series in ``raw_dir`` into ``out_dir`` (swapped in whole); read and
    update the cuts ledger ``cuts_file`` (None: cut from scratch, record nothing). Returns
    the stats written as ``stats.json``."""
    source = find_source(Path(raw_dir))
    read = read_source(source)
    if read.frame.empty:
        raise DataError(_no_rows(source, read.rejected))
    roles = infer_roles(read.frame, columns)
    cleaned = clean(read.frame, roles, cfg.max_gap, read.rejected)
    previous = cutting.read_ledger(cuts_file) if cuts_file is not None else None
    decision = cutting.decide(
        previous,
        cleaned.times,
        cleaned.raw,
        cleaned.frequency,
        roles.channels,
        (cfg.val_fraction, cfg.test_fraction),
        cfg.recut,
    )
    periods = cutting.period_of(cleaned.times, decision.cuts)
    table = _period_table(cleaned.times, periods)
    check_lengths(
        {s: v["steps"] for s, v in table.items()}, cfg.window, cfg.horizon, decision.recorded
    )
    split = split_windows(cleaned, periods, cfg.window, cfg.horizon)
    for s in SPLITS:
        if not len(split.windows[s]):
            raise DataError(
                f"the {s} period has no complete window: all {split.dropped[s]} touch a gap "
                f"longer than series.max_gap ({cfg.max_gap}) steps; fill the gaps, raise "
                "series.max_gap, or lower series.window/horizon"
            )
    counts = {
        **cleaned.counts,
        "windows": {s: len(split.windows[s]) for s in SPLITS},
        "windows_dropped": split.dropped,
        "windows_across_cuts": split.across_cuts,
    }
    stats = {
        "kind": "series",
        "source": source.name,
        "frequency": cleaned.frequency,
        "columns": {
            "time": roles.time,
            "target": roles.target,
            "covariates": list(roles.covariates),
            "unused": list(roles.unused),
        },
        "decimal_comma": list(read.decimal_comma),
        "window": cfg.window,
        "horizon": cfg.horizon,
        "max_gap": cfg.max_gap,
        "cuts": decision.cuts.as_dict(),
        "cuts_recorded": decision.recorded,
        "periods": table,
        "counts": counts,
        "changed": decision.changed,
    }
    out_dir = Path(out_dir)
    fsio.remove_stale_temporaries(out_dir.parent, out_dir.name)
    with fsio.atomic_path(out_dir) as new_dir:
        _write(new_dir, split, series_frame(cleaned, roles, periods), cleaned, stats)
    if cuts_file is not None:  # last: a failed prepare leaves the recorded cuts as they were
        Path(cuts_file).parent.mkdir(parents=True, exist_ok=True)
        cutting.write_ledger(Path(cuts_file), decision.ledger)
    _report(stats, out_dir)
    return stats
