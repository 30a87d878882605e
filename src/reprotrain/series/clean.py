"""Turning a messy source into one regular series, every change counted and reported.

The rules, in order (each one's count goes to ``stats.json``, quarantined rows to
``quarantine.csv`` with their reason; docs/series.md):

0. a row that cannot be split into the header's fields (:func:`.frame.read_source`) is
   quarantined as it is read;
1. a timestamp that does not parse: its row is quarantined;
2. a timestamp that occurs more than once: every row of it is quarantined (which one is
   right cannot be known; the step becomes a gap, rule 5);
3. the frequency is inferred (``pandas.infer_freq`` on the whole series, else the most
   common answer on short runs of it, else the median step) and a regular grid laid from
   the first to the last timestamp;
4. a timestamp off that grid (irregular) moves to the nearest step; if that step already
   has a value the row is quarantined;
5. a value that is not a number is a gap (counted per column), as is a grid step no row
   has (a missing step); a gap of at most ``series.max_gap`` steps between two values is
   interpolated linearly (the step is marked ``interpolated``); a longer one, or one at
   either end of the series, stays empty, and the windows that touch it are dropped.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import BaseOffset

from reprotrain.errors import DataError
from reprotrain.series.frame import MALFORMED, Rejected, Roles, parse_times, to_numbers

log = logging.getLogger(__name__)

UNPARSEABLE = "unparseable timestamp"
DUPLICATE = "duplicate timestamp"
IRREGULAR = "irregular timestamp"
#: An inferred frequency is kept when at least this share of the timestamps lie on its grid.
ON_GRID_SHARE = 0.5
#: Steps of each run the frequency is inferred on when the whole series is irregular.
RUN = 7
#: A median step of (min, max) days stands for this calendar step (months vary in length,
#: so a monthly series on the 15th has no fixed step and no pandas alias of its own).
CALENDAR = ((27, 32, "MS"), (88, 93, "QS"), (360, 370, "YS"))


@dataclass(frozen=True)
class Problem:
    """A quarantined source row: its line in the file (header = line 1), its raw timestamp
    and why."""

    line: int
    time: str
    reason: str


@dataclass
class Cleaned:
    """The series on its regular grid."""

    times: pd.DatetimeIndex  # the grid
    frequency: str
    raw: np.ndarray  # (steps, channels) float64, NaN in every gap: what the source said
    values: np.ndarray  # raw with the short gaps interpolated
    interpolated: np.ndarray  # (steps,) bool: some channel of the step was interpolated
    quarantine: list[Problem] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)


def _fixed_step(offset: BaseOffset) -> int | None:
    """The step in ns of a fixed-length frequency (h, 15min, D, 7D), None for calendar ones
    (W-SAT, MS, B): their steps vary and the grid comes from ``pandas.date_range``."""
    try:
        step = pd.Timedelta(offset)
    except (ValueError, TypeError):
        return None
    return int(step.value) if step.value > 0 else None


def _infer_freq(index: pd.DatetimeIndex) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas 3's "will return a BaseOffset" notice
        try:
            found = pd.infer_freq(index)
        except (ValueError, TypeError):
            return None
    return getattr(found, "freqstr", found)


def infer_frequency(times: pd.DatetimeIndex) -> BaseOffset:
    """The series' step (see the module, rule 3); ``times`` sorted, unique, ≥ 3 of them."""
    times = pd.DatetimeIndex(times).as_unit("ns")
    whole = _infer_freq(times)
    if whole is not None:
        return to_offset(whole)
    starts = np.unique(np.linspace(0, max(0, len(times) - RUN), num=25, dtype=int))
    votes = Counter(
        f for s in starts if s >= 0 and (f := _infer_freq(times[s : s + RUN])) is not None
    )
    for candidate, _ in votes.most_common(3):
        offset = to_offset(candidate)
        grid = make_grid(times, offset)
        if np.isin(times.asi8, grid.asi8).mean() >= ON_GRID_SHARE:
            return offset
    median = pd.Timedelta(int(np.median(np.diff(times.asi8))))
    if median <= pd.Timedelta(0):
        raise DataError("the timestamps have no regular step (their median step is 0)")
    day = pd.Timedelta(days=1)
    for low, high, alias in CALENDAR:
        if pd.Timedelta(days=low) <= median <= pd.Timedelta(days=high):
            return to_offset(alias)
    return to_offset(f"{median // day}D" if median % day == pd.Timedelta(0) else median)


def make_grid(times: pd.DatetimeIndex, offset: BaseOffset, floor: bool = False) -> pd.DatetimeIndex:
    """The regular steps of ``offset`` covering ``times`` (nearest steps to the first and
    the last; with ``floor``, a calendar offset's period starts holding them). A fixed step
    is anchored where most timestamps lie (its most common phase)."""
    times = pd.DatetimeIndex(times).as_unit("ns")
    step = _fixed_step(offset)
    ns = times.asi8
    if step is not None:
        phases = (ns - ns[0]) % step
        values, counts = np.unique(phases, return_counts=True)
        phase = int(values[np.argmax(counts)])
        base = int(ns[0]) + phase  # integers throughout: a float loses ns at 1e18

        def nearest_step(t: int) -> int:
            return base + (t - base + step // 2) // step * step

        first, last = nearest_step(int(ns[0])), nearest_step(int(ns[-1]))
        # not np.arange(first, last + 1, step): it sizes the range in float64 and drops the
        # last step at ns timestamps (measured with numpy 2)
        steps = first + step * np.arange((last - first) // step + 1, dtype=np.int64)
        return pd.DatetimeIndex(steps.astype("datetime64[ns]"))

    def nearest(t: pd.Timestamp) -> pd.Timestamp:
        if offset.is_on_offset(t):
            return t
        back, forward = offset.rollback(t), offset.rollforward(t)
        return back if floor or t - back <= forward - t else forward

    start, end = nearest(times[0]), nearest(times[-1])
    return pd.date_range(start, end, freq=offset).as_unit("ns")


def _snap(times: np.ndarray, grid: np.ndarray, floor: bool = False) -> np.ndarray:
    """Each time's nearest grid position (ties: the earlier step); with ``floor``, the last
    step at or before it (the period holding it)."""
    if floor:
        return np.clip(np.searchsorted(grid, times, side="right") - 1, 0, len(grid) - 1)
    if len(grid) == 1:
        return np.zeros(len(times), dtype=int)
    pos = np.clip(np.searchsorted(grid, times), 1, len(grid) - 1)
    left = grid[pos - 1]
    right = grid[pos]
    return np.where(times - left <= right - times, pos - 1, pos)


def gap_runs(missing: np.ndarray) -> list[tuple[int, int]]:
    """``[(start, stop)]`` of each run of True in ``missing`` (stop exclusive)."""
    if not missing.any():
        return []
    padded = np.concatenate([[False], missing, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def fill_gaps(raw: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``raw`` with each gap of at most ``max_gap`` steps between two values interpolated
    linearly; the interpolated-step mask; the gap counts (interpolated, left empty)."""
    values = raw.copy()
    interpolated = np.zeros(raw.shape[0], dtype=bool)
    filled = {"gaps": 0, "steps": 0}
    empty = {"gaps": 0, "steps": 0}
    positions = np.arange(raw.shape[0])
    for c in range(raw.shape[1]):
        col = raw[:, c]
        known = ~np.isnan(col)
        for start, stop in gap_runs(~known):
            inside = start > 0 and stop < len(col)
            if inside and stop - start <= max_gap:
                values[start:stop, c] = np.interp(
                    positions[start:stop], positions[known], col[known]
                )
                interpolated[start:stop] = True
                filled["gaps"] += 1
                filled["steps"] += stop - start
            else:
                empty["gaps"] += 1
                empty["steps"] += stop - start
    return values, interpolated, {"gaps_interpolated": filled, "gaps_left": empty}


def _quarantine_times(
    text: pd.Series, times: pd.Series, lines: np.ndarray
) -> tuple[np.ndarray, list[Problem], Counter[str]]:
    """Rules 1 and 2: the mask of rows kept and the quarantined ones."""
    problems: list[Problem] = []
    reasons: Counter[str] = Counter()
    bad = times.isna().to_numpy()
    for i in np.flatnonzero(bad):
        problems.append(
            Problem(int(lines[i]), str(text.iloc[i]), f"{UNPARSEABLE} {text.iloc[i]!r}")
        )
    reasons[UNPARSEABLE] = int(bad.sum())
    dup = times.duplicated(keep=False).to_numpy() & ~bad
    sizes = times[dup].value_counts()
    for i in np.flatnonzero(dup):
        t = times.iloc[i]
        problems.append(
            Problem(
                int(lines[i]), str(text.iloc[i]), f"{DUPLICATE} {t.isoformat()} ({sizes[t]} rows)"
            )
        )
    reasons[DUPLICATE] = int(dup.sum())
    return ~bad & ~dup, problems, reasons


def clean(
    frame: pd.DataFrame, roles: Roles, max_gap: int, rejected: Sequence[Rejected] = ()
) -> Cleaned:
    """Apply the module's rules to the source rows of ``frame`` (indexed by their line in
    the file, as :func:`.frame.read_source` gives them); ``rejected``: the rows the reading
    quarantined (rule 0), reported with the others."""
    lines = frame.index.to_numpy()
    text = frame[roles.time].astype("string").reset_index(drop=True)
    times = parse_times(frame[roles.time]).reset_index(drop=True)
    keep, problems, reasons = _quarantine_times(text, times, lines)
    problems += [Problem(r.line, "", r.reason) for r in rejected]
    reasons[MALFORMED] = len(rejected)
    channels = []
    non_numeric, missing_values = {}, {}
    for name in roles.channels:
        values, bad, missing = to_numbers(frame[name].reset_index(drop=True))
        channels.append(values)
        non_numeric[name], missing_values[name] = bad, missing
    matrix = np.column_stack(channels)
    kept = np.flatnonzero(keep)
    if len(frame) and reasons[UNPARSEABLE] == len(frame):
        raise DataError(
            f"the time column {roles.time!r}: no value parses as a timestamp (the first is "
            f"{str(text.iloc[0])!r}); write dates such as 2021-01-31 or 2021-01-31T12:00 "
            "(numbers are read as years only), or set data.columns.time"
        )
    if len(kept) < 3:
        raise DataError(
            f"only {len(kept)} rows with a usable, unique timestamp in {roles.time!r} "
            f"({len(frame) + len(rejected)} rows; {len(problems)} quarantined, see "
            "quarantine.csv): a series needs many more"
        )
    order = kept[np.argsort(times.to_numpy()[kept], kind="stable")]
    t_sorted = pd.DatetimeIndex(times.to_numpy()[order])
    offset = infer_frequency(t_sorted)
    grid = make_grid(t_sorted, offset)
    # A calendar step most timestamps are off (monthly on the 15th): each goes to the start
    # of the period holding it, not to the nearer of two month starts.
    floor = _fixed_step(offset) is None and (
        np.isin(t_sorted.asi8, grid.asi8).mean() < ON_GRID_SHARE
    )
    if floor:
        grid = make_grid(t_sorted, offset, floor=True)
    pos = _snap(t_sorted.asi8, grid.asi8, floor)
    exact = t_sorted.asi8 == grid.asi8[pos]
    # Exact rows first, then the moved ones by distance: a step's value is its own row's.
    rank = np.lexsort((np.abs(t_sorted.asi8 - grid.asi8[pos]), ~exact, pos))
    raw = np.full((len(grid), matrix.shape[1]), np.nan)
    taken = np.zeros(len(grid), dtype=bool)
    moved = 0
    for r in rank:
        p, row = pos[r], order[r]
        if taken[p]:
            problems.append(
                Problem(
                    int(lines[row]),
                    str(text.iloc[row]),
                    f"{IRREGULAR} {t_sorted[r].isoformat()}: its nearest "
                    f"step {grid[p].isoformat()} already has a row",
                )
            )
            reasons[IRREGULAR] += 1
            continue
        taken[p] = True
        raw[p] = matrix[row]
        moved += int(not exact[r])
    values, interpolated, gaps = fill_gaps(raw, max_gap)
    counts = {
        "rows": len(frame) + len(rejected),
        "steps": len(grid),
        "quarantined": {k: int(v) for k, v in sorted(reasons.items()) if v},
        "non_numeric": non_numeric,
        "missing_values": missing_values,
        "missing_steps": int((~taken).sum()),
        "irregular_moved": moved,
        "alignment": "period start" if floor else "nearest step",
        **gaps,
    }
    problems.sort(key=lambda p: p.line)
    return Cleaned(grid, offset.freqstr, raw, values, interpolated, problems, counts)
