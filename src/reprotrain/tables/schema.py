"""The roles of a table's columns (:class:`Schema`), how prepare infers them, and the ONE
TFRecord layout of a prepared row (its feature keys and parse spec).

Why one module for both: the writer (:mod:`.records`), the readers and the model all take
the column names and their roles from the saved ``schema.json``; a role that the writer and
a reader decided separately would only fail deep inside tf.data. Like TFX's schema, the
file is saved with the prepared data and compared with the previous one, so that a column
that silently changed role (a numeric column that now holds text) is reported.

Inference (:func:`infer_schema`) reads a :class:`ColumnProfile` per column, accumulated in
one streaming pass (prepare never holds the table):

* label: ``data.columns.label``, else a column named ``label`` (any case);
* numeric: at least :data:`NUMERIC_SHARE` of the non-missing cells read as numbers (the
  rest are typos prepare quarantines);
* categorical: strings with at most ``table.max_categories`` distinct values, or one-word
  codes (US states, product codes) repeated on average at least twice, up to
  :data:`DISTINCT_CAP` distinct values; never mostly unique values;
* text: every other string column; a column with no value at all is ignored (logged).

Explicit roles (``data.columns``) always win; ``data.columns.ignore`` is dropped.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reprotrain.errors import ConfigError, DataError
from reprotrain.fsio import atomic_write_json

log = logging.getLogger(__name__)

SCHEMA_FILE = "schema.json"
LABELS_FILE = "labels.json"
STATS_FILE = "stats.json"
QUARANTINE_FILE = "quarantine.csv"
SPLITS = ("train", "val", "test")

# ------------------------------------------------------------------ the TFRecord layout
# One feature per input column, keyed by the column's name: numbers as float_list (NaN for
# missing), categories and text as bytes_list (UTF-8, "" for missing); the label column as
# its class name (bytes), plus these reserved keys, which no column may be named:
LABEL_ID = "__label_id__"  # int64 class id: index into Schema.labels
ROW = "__row__"  # int64: the row's line number in the source file (1 = the header)
KEY = "__key__"  # bytes: the row's ledger key (hex content hash of its feature values)
RESERVED = (LABEL_ID, ROW, KEY)

#: Share of a column's non-missing cells that must read as numbers for it to be numeric.
NUMERIC_SHARE = 0.98
#: Distinct values counted per column; beyond that a column is "many-valued" (not categorical).
DISTINCT_CAP = 10_000
#: Mean whitespace tokens below which string values count as one-word codes.
ONE_WORD = 1.5

ROLES = ("text", "numeric", "categorical")
_ROW_ID = re.compile(r"(row_?)?(id|index|idx)|uuid|unnamed: \d+|column_\d+")


@dataclass(frozen=True)
class Schema:
    """The columns a prepared table holds and their roles. ``labels`` are the class names,
    sorted; a class id is its index. ``inputs`` is the model's input order."""

    label: str
    labels: tuple[str, ...]
    text: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    #: The given split column (data.columns.split), or None.
    split: str | None = None
    #: Columns of the source that are not used (data.columns.ignore, empty columns).
    ignore: tuple[str, ...] = ()
    #: The roles prepare inferred (the others were given in data.columns).
    inferred: tuple[str, ...] = ()

    @property
    def inputs(self) -> tuple[str, ...]:
        return (*self.text, *self.numeric, *self.categorical)

    def role(self, column: str) -> str:
        """``text``, ``numeric``, ``categorical``, ``label``, ``split`` or ``ignore``."""
        for role in ROLES:
            if column in getattr(self, role):
                return role
        if column == self.label:
            return "label"
        if column == self.split:
            return "split"
        return "ignore"

    def roles(self) -> dict[str, str]:
        """column → role, for every column the source had."""
        cols = (self.label, *self.inputs, *((self.split,) if self.split else ()), *self.ignore)
        return {c: self.role(c) for c in cols}

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schema:
        tuples = ("labels", *ROLES, "ignore", "inferred")
        return cls(**{k: (tuple(v) if k in tuples else v) for k, v in data.items()})

    def save(self, path: Path | str) -> Path:
        return atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: Path | str) -> Schema:
        """The schema a prepare saved (a directory means its ``schema.json``)."""
        path = Path(path)
        if path.is_dir():
            path = path / SCHEMA_FILE
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise DataError(f"{path} not found: run prepare first (dvc repro prepare)") from None
        except (OSError, ValueError, TypeError) as exc:
            raise DataError(
                f"{path}: unreadable schema ({exc}); rebuild it with `dvc repro -f prepare`"
            ) from None


def feature_spec(schema: Schema) -> dict[str, Any]:
    """``tf.io.parse_example`` spec of a prepared row (TF imported lazily)."""
    import tensorflow as tf

    spec = {c: tf.io.FixedLenFeature([], tf.string) for c in (*schema.text, *schema.categorical)}
    spec.update({c: tf.io.FixedLenFeature([], tf.float32) for c in schema.numeric})
    spec[schema.label] = tf.io.FixedLenFeature([], tf.string)
    spec[LABEL_ID] = tf.io.FixedLenFeature([], tf.int64)
    spec[ROW] = tf.io.FixedLenFeature([], tf.int64)
    spec[KEY] = tf.io.FixedLenFeature([], tf.string)
    return spec


# ------------------------------------------------------------------ inference


@dataclass
class ColumnProfile:
    """What one streaming pass learns about a column: enough to infer its role."""

    name: str
    present: int = 0  # non-missing cells
    numbers: int = 0  # non-missing cells that read as numbers
    tokens: int = 0  # whitespace tokens over the non-numeric cells
    distinct: set[str] = field(default_factory=set)
    many: bool = False  # more than DISTINCT_CAP distinct values

    def add(self, values: Iterable[str], numbers: int) -> None:
        """Count a chunk: ``values`` its non-missing cells as strings, ``numbers`` how many
        of them read as numbers."""
        values = list(values)
        self.present += len(values)
        self.numbers += numbers
        self.tokens += sum(len(v.split()) for v in values)
        if not self.many:
            self.distinct.update(values)
            if len(self.distinct) > DISTINCT_CAP:
                self.many, self.distinct = True, set()

    @property
    def is_row_id(self) -> bool:
        """Named like a row id (``id``, ``index``, pandas' ``Unnamed: 0``, a blank name) and
        holding mostly distinct values: an identifier, not a feature (it would also make
        every row distinct, hiding duplicates)."""
        d = self.n_distinct
        return bool(_ROW_ID.fullmatch(self.name.strip().lower())) and (
            d is None or d > self.present / 2
        )

    @property
    def is_numeric(self) -> bool:
        return self.present > 0 and self.numbers >= NUMERIC_SHARE * self.present

    @property
    def n_distinct(self) -> int | None:
        """Exact distinct values, None when above the cap."""
        return None if self.many else len(self.distinct)

    def is_categorical(self, max_categories: int) -> bool:
        d = self.n_distinct
        if d is None or d == 0 or d > self.present / 2:  # mostly unique: an id or free text
            return False
        one_word = self.tokens < ONE_WORD * self.present
        return d <= max_categories or one_word


def find_label(header: Sequence[str], given: str | None) -> str:
    """The label column: ``data.columns.label`` or a column named label (any case)."""
    if given is not None:
        return given
    for name in header:
        if name.strip().lower() == "label":
            return name
    raise ConfigError(
        f"no label column: the table has no column named 'label'; set data.columns.label to "
        f"one of its columns: {_shown(header)}"
    )


def _shown(names: Sequence[str]) -> str:
    return ", ".join(names[:30]) + (", …" if len(names) > 30 else "")


def check_columns(header: Sequence[str], columns: Any) -> None:
    """Every column named in ``data.columns`` exists, reserved names are not used, and no
    column has two roles (one line each, naming what exists)."""
    if len(set(header)) != len(header):
        dup = sorted({c for c in header if list(header).count(c) > 1})
        raise DataError(f"the table's header repeats column(s) {', '.join(dup)}: rename them")
    bad = [c for c in header if c in RESERVED]
    if bad:
        raise DataError(f"column name(s) {', '.join(bad)} are reserved: rename them")
    seen: dict[str, str] = {}
    for role in ("label", *ROLES, "split", "ignore"):
        value = getattr(columns, role)
        names = [value] if isinstance(value, str) else list(value or ())
        for name in names:
            if name not in header:
                raise ConfigError(
                    f"data.columns.{role} names {name!r}, which is not a column of the table "
                    f"(its columns: {_shown(header)})"
                )
            if name in seen and seen[name] != role:
                raise ConfigError(
                    f"column {name!r} is in both data.columns.{seen[name]} and "
                    f"data.columns.{role}: give it one role"
                )
            seen[name] = role


def infer_roles(
    header: Sequence[str],
    profiles: Mapping[str, ColumnProfile],
    columns: Any,
    *,
    label: str,
    max_categories: int,
) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...], tuple[str, ...]]:
    """(role → columns, ignored, inferred roles) for ``header``; explicit roles win."""
    given = {r: getattr(columns, r) for r in ROLES}
    taken = {label, *(columns.ignore or ()), *([columns.split] if columns.split else [])}
    for names in given.values():
        taken.update(names or ())
    found: dict[str, list[str]] = {r: [] for r in ROLES}
    empty = []
    for name in header:
        if name in taken:
            continue
        p = profiles[name]
        if p.present == 0 or p.is_row_id:
            empty.append(name)
        elif p.is_numeric:
            found["numeric"].append(name)
        elif p.is_categorical(max_categories):
            found["categorical"].append(name)
        else:
            found["text"].append(name)
    if empty:
        log.warning(
            "column(s) %s have no value in any row or are row ids (named like one, a value "
            "per row): ignored; give them a role in data.columns to use them",
            ", ".join(empty),
        )
    roles = {r: tuple(given[r]) if given[r] is not None else tuple(found[r]) for r in ROLES}
    # A column inferred for a role whose list was given explicitly is left out: ignored.
    leftover = [c for r in ROLES if given[r] is not None for c in found[r]]
    ignored = tuple(c for c in header if c in (*(columns.ignore or ()), *empty, *leftover))
    inferred = tuple(r for r in ("label", *ROLES) if getattr(columns, r) is None)
    return roles, ignored, inferred


def infer_schema(
    header: Sequence[str],
    profiles: Mapping[str, ColumnProfile],
    columns: Any,
    *,
    max_categories: int,
    labels: Iterable[str],
) -> Schema:
    """The schema of a table whose columns are ``header`` (in file order), from one pass's
    ``profiles`` and ``data.columns`` (``columns``); ``labels``: the class names seen."""
    header = list(header)
    check_columns(header, columns)
    label = find_label(header, columns.label)
    roles, ignored, inferred = infer_roles(
        header, profiles, columns, label=label, max_categories=max_categories
    )
    schema = Schema(
        label=label,
        labels=tuple(sorted(set(labels))),
        split=columns.split,
        ignore=ignored,
        inferred=inferred,
        **roles,
    )
    if not schema.inputs:
        raise ConfigError(
            f"no input column: every column is the label, the split or ignored; the table's "
            f"columns: {_shown(header)}"
        )
    return schema


def schema_changes(old: Schema | None, new: Schema) -> list[str]:
    """What changed between two prepares' schemas, one readable line per change ([] when
    the same, or when there was no previous schema)."""
    if old is None:
        return []
    changes = []
    if old.label != new.label:
        changes.append(f"label column {old.label!r} → {new.label!r}")
    old_roles, new_roles = old.roles(), new.roles()
    for col in sorted(set(old_roles) | set(new_roles)):
        a, b = old_roles.get(col, "absent"), new_roles.get(col, "absent")
        if a != b and "label" not in (a, b):
            changes.append(f"column {col!r}: {a} → {b}")
    added = sorted(set(new.labels) - set(old.labels))
    removed = sorted(set(old.labels) - set(new.labels))
    if added:
        changes.append(f"new class(es): {', '.join(added)}")
    if removed:
        changes.append(f"class(es) gone: {', '.join(removed)}")
    return changes
