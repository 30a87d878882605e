"""Streaming rows with their line numbers, and the canonical values rows are keyed by."""

from __future__ import annotations

import math

import pytest

from reprotrain.data import decimal_comma
from reprotrain.tables import reading


def test_canonical_values() -> None:
    assert reading.text_value("  a\r\nb ") == "a\nb"
    assert reading.text_value("NA") is None and reading.text_value(float("nan")) is None
    assert reading.number_value("1.50") == reading.number_value("15e-1") == 1.5
    assert reading.number_value("") is None and reading.number_value(3) == 3.0
    with pytest.raises(reading.NotANumber):
        reading.number_value("abc")
    with pytest.raises(reading.NotANumber):
        reading.number_value("inf")
    assert reading.label_value("1.0") == reading.label_value(1) == "1"
    assert reading.label_value("007") == "007" and reading.label_value(" spam ") == "spam"
    assert math.isnan(float("nan")) and reading.label_value("") is None


def test_decimal_commas_read_as_the_same_numbers() -> None:
    assert reading.comma_number_value("1,5") == reading.number_value("1.5") == 1.5
    assert reading.comma_number_value(" -0,25 ") == -0.25
    assert reading.comma_number_value("1,5e3") == 1500.0 and reading.comma_number_value("7") == 7
    assert reading.comma_number_value("NA") is None
    for bad in ("1,234,5", "1.234,5", "a,b", ",5"):
        assert not decimal_comma.is_decimal_comma(bad)
        with pytest.raises(reading.NotANumber):
            reading.comma_number_value(bad)
    with pytest.raises(reading.NotANumber):
        reading.number_value("1,5")  # a column without the decimal comma rule


def test_a_column_has_decimal_commas_only_without_dots() -> None:
    tally = decimal_comma.CommaTally()
    tally.add(["1,5", "2", "3,25"])
    assert tally.decimal_comma and tally.commas == 2
    tally.add(["1.234,5"])  # a dot: a thousands separator? ambiguous, left as written
    assert not tally.decimal_comma
    words = decimal_comma.CommaTally()
    words.add(["red", "blue, green"])
    assert not words.decimal_comma
