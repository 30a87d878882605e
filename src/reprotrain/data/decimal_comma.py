"""Numbers written with a decimal comma (``1,5``: a spreadsheet's export in many European
locales, ``;``-separated), and the rule that says a column is written that way.

The rule (the table and series kinds' prepare and the table predict apply it to files
whose delimiter is not a comma): a column is read with a decimal comma when some of its
values are numbers written ``digits,digits`` (an exponent allowed) and none of its values
holds a dot. A dot beside the commas (``1.234,5``, or ``1.5`` next to ``2,5``) could be a
thousands separator: such a column is left as written, and so is a value with two commas.
Standard library only: the served table model ships it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+(?:[eE][+-]?\d+)?")


def is_decimal_comma(text: str) -> bool:
    """A number written with a decimal comma (``1,5``, ``-0,25``, ``1,5e3``)."""
    return "," in text and _DECIMAL_COMMA.fullmatch(text.strip()) is not None


def to_dot(text: str) -> str:
    """``1,5`` → ``1.5``; any other text as it is (its parser says what is wrong)."""
    return text.replace(",", ".") if is_decimal_comma(text) else text


@dataclass
class CommaTally:
    """What a pass over a column learns about its decimal commas (the module's rule)."""

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
