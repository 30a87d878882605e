"""The time cuts: the train, val and test periods, recorded once in ``data/series/cuts.json``
(git-tracked, kept by DVC: the series' analogue of the image kind's split ledger).

Why recorded: a retrain on a longer series must score on the same test period as before,
or test metrics are not comparable. So the first prepare cuts at ``series.val_fraction`` /
``series.test_fraction`` of the span (counted in steps of the regular grid) and records the
two timestamps; later runs keep them. Rows appended after the last one extend the test
period (older rows put before the first extend train); ``series.recut: true`` moves the cuts
to the fractions of the current span (and re-records everything).

Why the digests: a value that changes inside an already-cut period (a revised figure, a
re-exported file) silently changes what the metrics mean. The ledger keeps an 8-hex digest
of every step's values as first recorded; each prepare compares and reports the steps that
changed (per period, with their timestamps) until the cuts are recut.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

from reprotrain import fsio
from reprotrain.errors import DataError

log = logging.getLogger(__name__)

VERSION = 1
SPLITS = ("train", "val", "test")
#: Steps per digest line in cuts.json: appends change the last lines only (small git diffs).
BLOCK = 64
DIGEST_HEX = 8
#: Changed steps listed by timestamp per period (all are counted).
SHOWN = 10


@dataclass(frozen=True)
class Cuts:
    """Where val and test begin: a step at or after ``val_start`` is val, at or after
    ``test_start`` test, every earlier one train."""

    val_start: pd.Timestamp
    test_start: pd.Timestamp

    def as_dict(self) -> dict[str, str]:
        return {"val_start": self.val_start.isoformat(), "test_start": self.test_start.isoformat()}


@dataclass
class Ledger:
    """What ``cuts.json`` holds."""

    cuts: Cuts
    frequency: str
    channels: tuple[str, ...]
    first: pd.Timestamp  # the first recorded step (the digests start there)
    digests: list[str]  # one per step of the grid from ``first``
    fractions: dict[str, float] = field(default_factory=dict)

    def times(self) -> pd.DatetimeIndex:
        offset = to_offset(self.frequency)
        return pd.date_range(self.first, periods=len(self.digests), freq=offset).as_unit("ns")


def first_cuts(times: pd.DatetimeIndex, val_fraction: float, test_fraction: float) -> Cuts:
    """The cuts at the fractions of the span (in steps; each period at least one step)."""
    n = len(times)
    if n < len(SPLITS):
        raise DataError(f"the series has {n} steps: too few to cut into train, val and test")
    n_test = min(max(1, round(n * test_fraction)), n - 2)
    n_val = min(max(1, round(n * val_fraction)), n - n_test - 1)
    return Cuts(times[n - n_test - n_val], times[n - n_test])


def period_of(times: pd.DatetimeIndex | np.ndarray, cuts: Cuts) -> np.ndarray:
    """``"train"``/``"val"``/``"test"`` per timestamp."""
    t = np.asarray(times, dtype="datetime64[ns]")
    out = np.full(t.shape, "train", dtype=object)
    out[t >= np.datetime64(cuts.val_start.to_datetime64(), "ns")] = "val"
    out[t >= np.datetime64(cuts.test_start.to_datetime64(), "ns")] = "test"
    return out


def step_digests(raw: np.ndarray) -> list[str]:
    """An 8-hex digest of each step's values (a gap digests as itself, not as a number)."""
    rows = np.where(np.isnan(raw), np.inf, raw).astype("<f8")
    return [hashlib.sha256(r.tobytes()).hexdigest()[:DIGEST_HEX] for r in rows]


def read_ledger(path: Path) -> Ledger | None:
    """The recorded ledger, None if there is none yet (a DataError if it is unreadable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: unreadable cuts ({exc}); restore it from git or delete it to cut again"
        ) from None
    try:
        blocks = data["digests"]["blocks"]
        digests = [b[i : i + DIGEST_HEX] for b in blocks for i in range(0, len(b), DIGEST_HEX)]
        return Ledger(
            Cuts(pd.Timestamp(data["val_start"]), pd.Timestamp(data["test_start"])),
            data["frequency"],
            tuple(data["channels"]),
            pd.Timestamp(data["digests"]["first"]),
            digests,
            data.get("fractions", {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{path}: not a cuts file of this version ({exc!r}); restore it from "
            "git or delete it to cut again"
        ) from None


def write_ledger(path: Path, ledger: Ledger) -> None:
    joined = "".join(ledger.digests)
    step = BLOCK * DIGEST_HEX
    fsio.atomic_write_json(
        Path(path),
        {
            "version": VERSION,
            **ledger.cuts.as_dict(),
            "frequency": ledger.frequency,
            "channels": list(ledger.channels),
            "fractions": ledger.fractions,
            "digests": {
                "first": ledger.first.isoformat(),
                "steps": len(ledger.digests),
                "blocks": [joined[i : i + step] for i in range(0, len(joined), step)],
            },
        },
    )


def _compare(previous: Ledger, times: pd.DatetimeIndex, digests: list[str]) -> dict[str, Any]:
    """The steps of the recorded span whose values changed (or went missing)."""
    times = pd.DatetimeIndex(times).as_unit("ns")
    now = dict(zip(times.asi8.tolist(), digests, strict=True))
    old_times = previous.times()
    changed: dict[str, list[pd.Timestamp]] = {s: [] for s in SPLITS}
    periods = period_of(old_times, previous.cuts)
    for t, d, p in zip(old_times, previous.digests, periods, strict=True):
        if now.get(t.value) != d:
            changed[p].append(t)
    report: dict[str, Any] = {
        "compared": True,
        "rows": sum(len(v) for v in changed.values()),
        "periods": {
            s: {"rows": len(v), "times": [t.isoformat() for t in v[:SHOWN]]}
            for s, v in changed.items()
            if v
        },
        "appended": int((times > old_times[-1]).sum()),
        "prepended": int((times < old_times[0]).sum()),
    }
    return report


def _merged(previous: Ledger, times: pd.DatetimeIndex, digests: list[str]) -> Ledger | None:
    """The recorded digests kept, the new steps' added: None when the grids do not line up."""
    times = pd.DatetimeIndex(times).as_unit("ns")
    by_time = dict(zip(times.asi8.tolist(), digests, strict=True))
    by_time.update(zip(previous.times().asi8.tolist(), previous.digests, strict=True))
    first, last = min(by_time), max(by_time)
    offset = to_offset(previous.frequency)
    grid = pd.date_range(pd.Timestamp(first), pd.Timestamp(last), freq=offset).as_unit("ns")
    if len(grid) != len(by_time) or not all(t in by_time for t in grid.asi8.tolist()):
        return None
    return Ledger(
        previous.cuts,
        previous.frequency,
        previous.channels,
        grid[0],
        [by_time[t] for t in grid.asi8.tolist()],
        previous.fractions,
    )


@dataclass(frozen=True)
class Decision:
    """The cuts this prepare uses, the ledger it records, and what changed since."""

    cuts: Cuts
    ledger: Ledger
    recorded: bool  # the cuts come from cuts.json (False: cut now)
    changed: dict[str, Any]


def decide(
    previous: Ledger | None,
    times: pd.DatetimeIndex,
    raw: np.ndarray,
    frequency: str,
    channels: tuple[str, ...],
    fractions: tuple[float, float],
    recut: bool = False,
) -> Decision:
    """Keep the recorded cuts (and report changed steps), or cut at the fractions: on the
    first run, with ``recut``, or when the recorded steps cannot be compared (another
    frequency or other columns: the report says so)."""
    digests = step_digests(raw)
    val_fraction, test_fraction = fractions
    fresh = Ledger(
        first_cuts(times, val_fraction, test_fraction),
        frequency,
        channels,
        times[0],
        digests,
        {"val": val_fraction, "test": test_fraction},
    )
    if previous is None:
        return Decision(fresh.cuts, fresh, False, {"compared": False, "note": "first cut"})
    if recut:
        note = f"recut (series.recut): the cuts were {previous.cuts.as_dict()}"
        return Decision(fresh.cuts, fresh, False, {"compared": False, "recut": True, "note": note})
    note = None
    if previous.frequency != frequency:
        note = f"the frequency was {previous.frequency}, now {frequency}"
    elif previous.channels != channels:
        note = f"the columns were {', '.join(previous.channels)}, now {', '.join(channels)}"
    merged = None if note else _merged(previous, times, digests)
    if merged is None:
        note = note or "the recorded steps do not lie on the current grid"
        kept = Ledger(previous.cuts, frequency, channels, times[0], digests, previous.fractions)
        return Decision(
            previous.cuts, kept, True, {"compared": False, "note": f"{note}: rows not compared"}
        )
    changed = _compare(previous, times, digests)
    if previous.fractions and previous.fractions != fresh.fractions:
        log.info(
            "prepare: series.val/test_fraction changed, the recorded cuts are kept "
            "(series.recut: true moves them)"
        )
    return Decision(previous.cuts, merged, True, changed)
