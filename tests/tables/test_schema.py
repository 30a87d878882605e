"""Schema inference rules on profiles, the saved file, and the changes reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from reprotrain.config_kinds import ColumnsConfig
from reprotrain.errors import ConfigError, DataError
from reprotrain.tables.schema import ColumnProfile, Schema, infer_schema, schema_changes


def profiles(columns: dict[str, list[str]]) -> dict[str, ColumnProfile]:
    from reprotrain.tables.reading import is_number, text_value

    out = {}
    for name, cells in columns.items():
        values = [v for c in cells if (v := text_value(c)) is not None]
        p = ColumnProfile(name)
        p.add(values, sum(map(is_number, values)))
        out[name] = p
    return out


N = 200
COLUMNS = {
    "price": [str(i * 1.5) for i in range(N - 2)] + ["", "NA"],  # numbers with missing
    "country": ["fr", "de", "us", "it"] * (N // 4),  # a few values
    "state": [f"S{i % 60}" for i in range(N)],  # one-word codes, > max_categories
    "review": [f"words and more words {i}" for i in range(N)],  # free text
    "code": [f"c{i}" for i in range(N)],  # unique: not categorical
    "Unnamed: 0": [str(i) for i in range(N)],  # a saved DataFrame index: a row id
    "typo": [str(i) for i in range(N - 1)] + ["oops"],  # 99.5% numbers: numeric
    "empty": [""] * N,
    "label": ["a", "b"] * (N // 2),
}


def infer(**given: object) -> Schema:
    return infer_schema(
        list(COLUMNS),
        profiles(COLUMNS),
        ColumnsConfig(**given),
        max_categories=50,
        labels=["b", "a"],
    )


def test_roles_are_inferred_as_a_person_would() -> None:
    schema = infer()
    assert schema.numeric == ("price", "typo")
    assert schema.categorical == ("country", "state")
    assert schema.text == ("review", "code")
    assert schema.ignore == ("Unnamed: 0", "empty") and schema.label == "label"
    assert schema.labels == ("a", "b")
    assert schema.inputs == ("review", "code", "price", "typo", "country", "state")


def test_explicit_roles_win_and_ignore_drops() -> None:
    schema = infer(text=["review"], categorical=["code"], ignore=["state"])
    assert schema.text == ("review",) and schema.categorical == ("code",)
    assert "state" in schema.ignore and "country" in schema.ignore  # left out of a given list
    assert schema.numeric == ("price", "typo")
    assert schema.inferred == ("label", "numeric")


def test_bad_column_names_are_one_line() -> None:
    with pytest.raises(ConfigError, match=r"data.columns.numeric names 'cost'.*price, country"):
        infer(numeric=["cost"])
    with pytest.raises(ConfigError, match=r"both data.columns.text and data.columns.categorical"):
        infer(text=["review"], categorical=["review"])
    with pytest.raises(ConfigError, match=r"set data.columns.label"):
        infer_schema(["a"], profiles({"a": ["1"]}), ColumnsConfig(), max_categories=5, labels=[])
    with pytest.raises(DataError, match="reserved"):
        infer_schema(["__row__", "label"], {}, ColumnsConfig(), max_categories=5, labels=[])


def test_save_load_and_changes(tmp_path: Path) -> None:
    schema = infer()
    assert Schema.load(schema.save(tmp_path / "schema.json")) == schema
    assert schema_changes(None, schema) == [] and schema_changes(schema, schema) == []
    other = infer(text=["review", "state"], ignore=["code"])
    other = Schema.from_dict({**other.to_dict(), "labels": ["a", "c"]})
    assert schema_changes(schema, other) == [
        "column 'code': text → ignore",
        "column 'state': categorical → text",
        "new class(es): c",
        "class(es) gone: b",
    ]
    with pytest.raises(DataError, match="run prepare first"):
        Schema.load(tmp_path / "none")
