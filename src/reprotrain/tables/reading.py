"""Streaming a CSV, TSV or Parquet file as chunks of rows, and the canonical values prepare
hashes, checks and stores.

Why the csv module and not pandas: prepare must report every row it cannot use with its
line number and go on. ``csv`` reads one row at a time (flat memory for any file size),
gives the line a row starts on (quoted fields may span lines), and lets a row whose field
count is wrong or whose bytes are not UTF-8 be quarantined while the rest is read; pandas
does that only with its slow python engine. Parquet is read by row groups (pyarrow).

What counts as the same value (and so as the same row, see :mod:`.ledger`): text has its
surrounding whitespace stripped and its line endings made ``\\n``; the usual missing-value
spellings (pandas' defaults: ``""``, ``NA``, ``N/A``, ``NaN``, ``null``, ``None``, …) are
missing; a number is its float value (``1.50``, ``1.5`` and ``15e-1`` are the same).

Decimal commas (a spreadsheet's export in many European locales: ``;``-separated, ``1,5``):
in a file whose delimiter is not a comma, a column is read with a decimal comma when some of
its values are numbers written ``digits,digits`` (an exponent allowed) and none of its
values holds a dot (:class:`CommaTally`). Then ``1,5`` is the number 1.5, the same value
(and row key) as ``1.5`` elsewhere. A dot beside the commas (``1.234,5``, or ``1.5`` next to
``2,5``) could be a thousands separator: such a column is left as written (its comma
values are not numbers), and so is a value with two commas. In a comma-separated file a
comma is never a decimal point (it would have split the cell).
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reprotrain.errors import DataError

#: Spellings of a missing value (pandas' ``read_csv`` defaults).
MISSING = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)
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


def text_value(value: Any) -> str | None:
    """A cell as canonical text, None when missing."""
    if value.__class__ is str:  # the hot path: every CSV cell, three times
        if "\r" in value:
            value = value.replace("\r\n", "\n").replace("\r", "\n")
        text = value.strip()
        return None if text in MISSING else text
    if value is None:
        return None
    if isinstance(value, float):
        return None if math.isnan(value) else repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return text_value(str(value))


_INFINITIES = (math.inf, -math.inf)
_LEADING_ZERO = re.compile(r"[+-]?0\d")  # a code such as 007 stays as written


class NotANumber(ValueError):
    """A present cell of a numeric column that is no finite number."""


def number_value(value: Any) -> float | None:
    """A cell as a float, None when missing; :class:`NotANumber` when it is neither."""
    try:
        number = float(value)  # str (surrounding whitespace allowed), int, float, bool
    except (ValueError, TypeError):
        text = text_value(value)
        if text is None:
            return None
        raise NotANumber(text) from None
    if number != number:  # NaN: missing
        return None
    if number in (math.inf, -math.inf):
        raise NotANumber(str(value).strip())
    return number


def is_number(text: str) -> bool:
    try:
        number_value(text)
    except NotANumber:
        return False
    return True


def count_numbers(texts: Iterable[str]) -> int:
    """How many of ``texts`` (present cells) :func:`is_number` accepts; one loop, as
    pass 1 counts every cell of every column."""
    n = 0
    for text in texts:
        try:
            number = float(text)
        except ValueError:
            continue
        n += number not in _INFINITIES
    return n


_DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+(?:[eE][+-]?\d+)?")


def is_decimal_comma(text: str) -> bool:
    """A number written with a decimal comma (``1,5``, ``-0,25``, ``1,5e3``)."""
    return "," in text and _DECIMAL_COMMA.fullmatch(text.strip()) is not None


def comma_number_value(value: Any) -> float | None:
    """:func:`number_value` of a cell of a decimal-comma column (``1,5`` → 1.5)."""
    if value.__class__ is str and "," in value:
        if not is_decimal_comma(value):
            raise NotANumber(value.strip())
        value = value.replace(",", ".")
    return number_value(value)


@dataclass
class CommaTally:
    """What pass 1 learns about a column's decimal commas (see the module docstring)."""

    commas: int = 0  # values that are numbers written with a decimal comma
    dots: bool = False  # a value holds a dot

    def add(self, values: list[str]) -> None:
        """Count a chunk's non-missing cells (canonical text)."""
        if not self.dots:
            self.dots = any("." in v for v in values)
        self.commas += sum(1 for v in values if is_decimal_comma(v))

    @property
    def decimal_comma(self) -> bool:
        return self.commas > 0 and not self.dots


def label_value(value: Any) -> str | None:
    """A label cell as its class name: canonical text, an integral number without its
    ``.0`` (a re-export that writes ``1.0`` for ``1`` keeps the class)."""
    text = text_value(value)
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    if math.isfinite(number) and number.is_integer() and not _LEADING_ZERO.match(text):
        return str(int(number))
    return text


# ------------------------------------------------------------------ files


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
