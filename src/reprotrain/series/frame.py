"""Reading a series source and deciding which column plays which role (time, target,
covariates), as the user named them or as inferred.

Inference (a role left null in ``data.columns``), chosen to be predictable rather than
clever, and recorded in ``stats.json`` so that it never changes silently:

* time: the first column named ``time``, ``date``, ``timestamp``, ``datetime`` or ``ds``
  (case-insensitive, in that order); else the only non-numeric column whose values mostly
  (≥ 90 %) parse as dates; else a one-line error asking for ``data.columns.time``.
* target: the only numeric column left (not time, not a covariate, not ignored); else a
  one-line error listing them and asking for ``data.columns.target``.
* covariates: none unless given. Other columns are not used (listed as ``unused``).

A column is numeric when most (≥ 50 %) of its non-empty values parse as numbers: a target
with a few text values ("n/a", "?") is still the target, its text values become gaps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reprotrain.config_kinds import ColumnsConfig
from reprotrain.data import decimal_comma, row_reader
from reprotrain.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TIME_NAMES = ("time", "date", "timestamp", "datetime", "ds")
#: Names the prepared series adds (``reprotrain.series.windows``): no source column may be one.
RESERVED = ("period", "interpolated")
NUMERIC_SHARE = 0.5
DATE_SHARE = 0.9


@dataclass(frozen=True)
class Roles:
    """Which source column is what."""

    time: str
    target: str
    covariates: tuple[str, ...]
    unused: tuple[str, ...] = ()

    @property
    def channels(self) -> tuple[str, ...]:
        return (self.target, *self.covariates)


#: What fetch snapshots for a series (``reprotrain.data.file_fetch.DATA_SUFFIXES``; not
#: imported, so that prepare's code deps stay clear of fetch's).
DATA_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".csv.gz")


def find_source(raw_dir: Path) -> Path:
    """The one data file fetch snapshotted into ``raw_dir`` (as ``data/raw/<its name>``)."""
    files = (
        sorted(
            p
            for p in Path(raw_dir).iterdir()
            if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(DATA_SUFFIXES)
        )
        if Path(raw_dir).is_dir()
        else []
    )
    if len(files) != 1:
        what = "no CSV/TSV/Parquet file" if not files else f"{len(files)} data files"
        raise DataError(f"{raw_dir}: {what} (expected the one fetch snapshots); rerun fetch")
    return files[0]


#: The quarantine reason of a row that cannot be split into the header's fields (a wrong
#: field count, an unclosed quote, bytes that are not UTF-8).
MALFORMED = "malformed row"


@dataclass(frozen=True)
class Rejected:
    """A source row quarantined before any column is looked at: its line (header = 1) and
    why, with an excerpt of it."""

    line: int
    reason: str


@dataclass(frozen=True)
class Source:
    """A source file's usable rows, indexed by their line in the file (the header is line
    1; a quoted field may span lines), and the rows it quarantined as :data:`MALFORMED`."""

    frame: pd.DataFrame
    rejected: tuple[Rejected, ...] = ()
    #: Columns written with a decimal comma (``1,5``), read as numbers with a dot.
    decimal_comma: tuple[str, ...] = ()


def read_source(path: Path) -> Source:
    """Every column as text (CSV/TSV) or as stored (Parquet): parsing is :mod:`clean`'s, so
    that a bad value is counted, not turned into an exception or a silent NaN here.

    CSV and TSV rows are split by the shared row reader (:mod:`reprotrain.data.row_reader`,
    the csv module): a row whose field count is not the header's is quarantined with its
    line, the rest used (pandas would fail the whole file on one extra field, and pad a
    short row with NaN silently)."""
    path = Path(path)
    if not row_reader.is_parquet(path):
        return _read_text(path)
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot read it as a table ({first})") from None
    frame.index = pd.RangeIndex(2, len(frame) + 2)
    return Source(frame)


def _read_text(path: Path) -> Source:
    names = _deduplicated(row_reader.header(path))
    lines: list[int] = []
    cells: list[tuple[str, ...]] = []
    rejected: list[Rejected] = []
    for chunk in row_reader.iter_chunks(path):
        for row in chunk:
            if row.cells is None:
                excerpt = f": {row.excerpt!r}" if row.excerpt else ""
                rejected.append(Rejected(row.line, f"{MALFORMED}: {row.problem}{excerpt}"))
            else:
                lines.append(row.line)
                cells.append(row.cells)
    frame = pd.DataFrame(cells, columns=names, index=pd.Index(lines, dtype="int64"), dtype=str)
    commas = _decimal_comma_columns(frame) if row_reader.delimiter(path) != "," else ()
    for name in commas:
        frame[name] = frame[name].map(decimal_comma.to_dot)
    return Source(frame, tuple(rejected), commas)


def _decimal_comma_columns(frame: pd.DataFrame) -> tuple[str, ...]:
    """The columns of a file not separated by commas that the decimal-comma rule
    (:mod:`reprotrain.data.decimal_comma`) says are written ``1,5``."""
    out = []
    for name in frame.columns:
        tally = decimal_comma.CommaTally()
        tally.add([v.strip() for v in frame[name] if v.strip()])
        if tally.decimal_comma:
            out.append(str(name))
    return tuple(out)


def _deduplicated(names: list[str]) -> list[str]:
    """A repeated column name gets ``.1``, ``.2``, … (as pandas names them)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        n = seen.get(name, 0)
        seen[name] = n + 1
        out.append(name if n == 0 else f"{name}.{n}")
    return out


def numeric_share(col: pd.Series) -> float:
    """Share of the non-empty values that parse as numbers (1.0 for a numeric dtype)."""
    if pd.api.types.is_bool_dtype(col):
        return 0.0
    if pd.api.types.is_numeric_dtype(col):
        return 1.0
    text = col.astype("string").str.strip()
    present = text[text.notna() & (text != "")]
    if present.empty:
        return 0.0
    return float(pd.to_numeric(present, errors="coerce").notna().mean())


def date_share(col: pd.Series) -> float:
    """Share of the non-empty values that parse as timestamps."""
    if pd.api.types.is_datetime64_any_dtype(col):
        return 1.0
    if pd.api.types.is_numeric_dtype(col):
        return 0.0
    text = col.astype("string").str.strip()
    present = text[text.notna() & (text != "")]
    if present.empty:
        return 0.0
    sample = present.iloc[:: max(1, len(present) // 500)]
    return float(parse_times(sample).notna().mean())


def parse_times(col: pd.Series) -> pd.Series:
    """Timestamps (datetime64[ns], naive), NaT where a value does not parse.

    Integers between 1000 and 2999 are years (an annual series). Timezone-aware values are
    converted to UTC, then made naive. Text is parsed with pandas' format inference and,
    if that leaves values unparsed, element by element (``format="mixed"``).
    """
    if pd.api.types.is_datetime64_any_dtype(col):
        out = pd.to_datetime(col)
    elif pd.api.types.is_numeric_dtype(col):
        values = pd.to_numeric(col, errors="coerce")
        years = values.dropna()
        if len(years) and (years == years.round()).all() and years.between(1000, 2999).all():
            out = pd.to_datetime(
                values.astype("Int64").astype("string"), format="%Y", errors="coerce"
            )
        else:
            out = pd.Series(pd.NaT, index=col.index, dtype="datetime64[ns]")
    else:
        text = col.astype("string").str.strip()
        out = _parse_text(text)
    if isinstance(out.dtype, pd.DatetimeTZDtype):
        out = out.dt.tz_convert("UTC").dt.tz_localize(None)
    return out.astype("datetime64[ns]")


def _parse_text(text: pd.Series) -> pd.Series:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "could not infer format": we try "mixed" next
        try:
            first = pd.to_datetime(text, errors="coerce")
        except (ValueError, TypeError):  # mixed offsets and naive values
            first = pd.to_datetime(text, errors="coerce", utc=True)
        if first.isna().sum() > text.isna().sum():
            try:
                mixed = pd.to_datetime(text, errors="coerce", format="mixed")
            except (ValueError, TypeError):
                mixed = pd.to_datetime(text, errors="coerce", format="mixed", utc=True)
            if mixed.notna().sum() > first.notna().sum():
                return mixed
    return first


def _named_time(names: Sequence[str]) -> str | None:
    lower = {n.lower(): n for n in reversed(names)}
    return next((lower[t] for t in TIME_NAMES if t in lower), None)


def _infer_time(frame: pd.DataFrame, exclude: set[str]) -> str:
    names = [c for c in frame.columns if c not in exclude]
    named = _named_time(names)
    if named is not None:
        return named
    dates = [
        c
        for c in names
        if numeric_share(frame[c]) < NUMERIC_SHARE and date_share(frame[c]) >= DATE_SHARE
    ]
    if len(dates) == 1:
        return dates[0]
    what = (
        f"columns {', '.join(dates)} all parse as dates"
        if dates
        else (f"no column is named {'/'.join(TIME_NAMES)} or holds dates")
    )
    raise ConfigError(f"data.columns.time: {what}; set data.columns.time to the timestamp column")


def _check_named(frame: pd.DataFrame, role: str, names: Sequence[str]) -> None:
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise ConfigError(
            f"data.columns.{role}: no column {', '.join(map(repr, missing))} in the source "
            f"(its columns: {', '.join(map(str, frame.columns))})"
        )


def infer_roles(frame: pd.DataFrame, columns: ColumnsConfig) -> Roles:
    """The :class:`Roles` of ``frame``'s columns, from ``data.columns`` (see the module)."""
    frame = frame.rename(columns=str)
    ignore = set(columns.ignore)
    covariates = tuple(columns.covariates or ())
    for role, names in (
        ("time", [columns.time] if columns.time else []),
        ("target", [columns.target] if columns.target else []),
        ("covariates", covariates),
        ("ignore", list(ignore)),
    ):
        _check_named(frame, role, names)
    time = columns.time or _infer_time(frame, ignore | set(covariates) | {columns.target})
    target = columns.target
    if target is None:
        taken = ignore | {time} | set(covariates)
        numeric = [
            c for c in frame.columns if c not in taken and numeric_share(frame[c]) >= NUMERIC_SHARE
        ]
        if len(numeric) != 1:
            found = f"numeric columns {', '.join(numeric)}" if numeric else "no numeric column"
            raise ConfigError(
                f"data.columns.target: {found} besides the time column {time!r}; set "
                "data.columns.target to the value to forecast"
            )
        target = numeric[0]
    used = [time, target, *covariates]
    duplicated = sorted({c for c in used if used.count(c) > 1})
    if duplicated:
        raise ConfigError(f"data.columns: {', '.join(duplicated)} given more than one role")
    reserved = [c for c in used if c in RESERVED]
    if reserved:
        raise ConfigError(
            f"data.columns: column {reserved[0]!r} has a name the prepared series uses "
            f"({', '.join(RESERVED)}); rename it in the source"
        )
    for c in (target, *covariates):
        if numeric_share(frame[c]) < NUMERIC_SHARE:
            raise DataError(
                f"column {c!r} (the {'target' if c == target else 'covariate'}) is not numeric: "
                f"{numeric_share(frame[c]):.0%} of its values are numbers"
            )
    unused = tuple(c for c in frame.columns if c not in used)
    return Roles(time, target, covariates, unused)


#: Values that mean "no value" (counted as missing, not as non-numeric), lower-cased.
MISSING_MARKERS = frozenset({"", "na", "n/a", "nan", "null", "none", "#n/a"})


def to_numbers(col: pd.Series) -> tuple[np.ndarray, int, int]:
    """``col`` as float64 (NaN: a gap), how many values were not numbers (text, infinity)
    and how many were empty or a missing marker (:data:`MISSING_MARKERS`)."""
    if pd.api.types.is_bool_dtype(col):
        col = col.astype(float)
    if pd.api.types.is_numeric_dtype(col):
        values = pd.to_numeric(col, errors="coerce").astype(float).to_numpy()
        inf = np.isinf(values)
        return np.where(inf, np.nan, values), int(inf.sum()), int(np.isnan(values).sum())
    text = col.astype("string").str.strip()
    parsed = pd.to_numeric(text, errors="coerce").astype(float).to_numpy()
    inf = np.isinf(parsed)
    parsed = np.where(inf, np.nan, parsed)
    missing = (text.isna() | text.str.lower().isin(MISSING_MARKERS)).fillna(True).to_numpy(bool)
    return parsed, int((~missing & np.isnan(parsed)).sum()), int(missing.sum())
