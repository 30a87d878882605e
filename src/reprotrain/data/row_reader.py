"""Streaming a CSV, TSV or Parquet file as chunks of rows, each with its line in the file
or the reason it cannot be read: what the table and series kinds' prepare read their
source with (the values in the cells are theirs to interpret: ``tables.reading``).

Why the csv module and not pandas: prepare must report every row it cannot use with its
line number and go on. ``csv`` reads one row at a time (flat memory for any file size),
gives the line a row starts on (quoted fields may span lines), and lets a row whose field
count is wrong or whose bytes are not UTF-8 be quarantined while the rest is read; pandas
does that only with its slow python engine. Parquet is read by row groups (pyarrow).

The delimiter: tab for ``.tsv``, else a comma, unless the header line has none and holds a
semicolon, tab or pipe (a spreadsheet's export in a comma-decimal locale).
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reprotrain.errors import DataError

EXCERPT = 80  # characters of a row shown in quarantine.csv


CHUNK_ROWS = 10_000


@dataclass(frozen=True)
class Row:
    """One data row: its line in the file (the header is line 1; a Parquet row counts as
    the line it would be on in the same table as a CSV), its cells in header order, or
    ``problem`` (why it cannot be read) and ``excerpt`` when it cannot be used at all."""

    line: int
    cells: tuple[Any, ...] | None
    problem: str | None = None
    excerpt: str = ""


def clip(text: str, n: int = EXCERPT) -> str:
    """A one-line excerpt (newlines shown as ⏎, bytes that are not UTF-8 as \\xNN)."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    text = text.replace("\r\n", "⏎").replace("\n", "⏎").replace("\r", "⏎")
    return text if len(text) <= n else text[: n - 1] + "…"


def _open_text(path: Path) -> io.TextIOBase:
    gz = path.name.lower().endswith(".gz")
    raw: Any = gzip.open(path, "rb") if gz else path.open("rb")  # noqa: SIM115 (returned)
    # surrogateescape: a row with bytes that are not UTF-8 is read, then quarantined.
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def header(path: Path) -> list[str]:
    """The column names (a DataError for an empty or unreadable file)."""
    path = Path(path)
    if is_parquet(path):
        return unnamed([str(n).strip() for n in _parquet(path).schema_arrow.names])
    with _open_text(path) as f:
        try:
            names = next(csv.reader(f, delimiter=delimiter(path)))
        except StopIteration:
            raise DataError(f"{path} is empty: expected a header row of column names") from None
        except (csv.Error, UnicodeError) as exc:
            raise DataError(f"{path}: unreadable header row ({exc})") from None
    names = [n.strip() for n in names]
    if any(_undecodable(n) for n in names):
        raise DataError(f"{path}: the header row is not UTF-8 text; re-save the file as UTF-8")
    if not any(names):
        raise DataError(f"{path}: the header row is empty")
    return unnamed(names)


def unnamed(names: list[str]) -> list[str]:
    """Blank column names (a DataFrame's index saved by ``to_csv``) as ``column_<N>``
    (1-based position), so every column has a name a feature and an input can carry."""
    return [n if n else f"column_{i}" for i, n in enumerate(names, start=1)]


def delimiter(path: Path) -> str:
    """Tab for ``.tsv``; else a comma, unless the header line has none and holds a
    semicolon, tab or pipe (a CSV saved by a spreadsheet in a comma-decimal locale)."""
    if path.name.lower().endswith((".tsv", ".tsv.gz")):
        return "\t"
    with _open_text(path) as f:
        first = f.readline()
    if "," not in first:
        for other in (";", "\t", "|"):
            if other in first:
                return other
    return ","


def _undecodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _parquet(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None


def iter_chunks(path: Path, chunk_rows: int = CHUNK_ROWS) -> Iterator[list[Row]]:
    """The data rows of ``path`` in file order, ``chunk_rows`` at a time."""
    path = Path(path)
    rows = _parquet_rows(path) if is_parquet(path) else _csv_rows(path)
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _csv_rows(path: Path) -> Iterator[Row]:
    width, sep = len(header(path)), delimiter(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a huge text is a row, not an error
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=sep)
        end, first = 0, True
        while True:
            start = end + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                end = reader.line_num
                yield Row(start, None, f"unparsable line ({exc})")
                continue
            end = reader.line_num
            if first or not cells:
                first = False
                continue  # the header; a blank line is no row
            raw = ",".join(cells)
            if _undecodable(raw):
                yield Row(start, None, "undecodable bytes (not UTF-8)", clip(raw))
            elif len(cells) != width:
                problem = f"{len(cells)} fields, expected {width} (the header's)"
                yield Row(start, None, problem, clip(raw))
            else:
                yield Row(start, tuple(cells))


def _parquet_rows(path: Path) -> Iterator[Row]:
    file = _parquet(path)
    line = 1
    for batch in file.iter_batches(batch_size=CHUNK_ROWS):
        columns = batch.to_pydict()
        for cells in zip(*columns.values(), strict=True):
            line += 1
            yield Row(line, cells)


def may_have_decimal_commas(path: Path) -> bool:
    """A text file whose delimiter is not a comma (Parquet has typed numbers)."""
    path = Path(path)
    return not is_parquet(path) and delimiter(path) != ","
