"""The canonical values prepare hashes, checks and stores, read from the cells of the rows
:mod:`reprotrain.data.row_reader` streams (standard library only: the served model ships it).

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

import math
import re
from collections.abc import Iterable
from typing import Any

from reprotrain.data.decimal_comma import is_decimal_comma

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


def comma_number_value(value: Any) -> float | None:
    """:func:`number_value` of a cell of a decimal-comma column (``1,5`` → 1.5)."""
    if value.__class__ is str and "," in value:
        if not is_decimal_comma(value):
            raise NotANumber(value.strip())
        value = value.replace(",", ".")
    return number_value(value)


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
