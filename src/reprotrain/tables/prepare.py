"""prepare for the table kind: one CSV/TSV/Parquet file → schema, row ledger, quarantine,
sharded TFRecords per split, ``stats.json`` and ``labels.json``.

It streams: three passes over the file, none holding more than a chunk of rows.

1. profile each column (:class:`~.schema.ColumnProfile`) → infer the schema;
2. check each row against the schema (quarantine reasons, :func:`check_row`), compute its
   ledger key; then drop exact duplicates (one ledger key), quarantine duplicates whose
   labels conflict (all of them) and classes too small to split, assign splits
   (:mod:`.ledger`);
3. write each kept row to its split's shards, in file order.

No row is held: per row, passes 2 and 3 keep about 21 bytes (key, class and split codes),
plus the temporaries of sorting and assigning them; memory grows with the ledger, not with
the file (benchmarks/table_prepare.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain.data import tfrecords
from reprotrain.data.split import Fractions
from reprotrain.errors import DataError
from reprotrain.fsio import atomic_path, atomic_write_json, atomic_write_text
from reprotrain.progress import progress
from reprotrain.tables import ledger as ledgers
from reprotrain.tables import reading
from reprotrain.tables.records import SplitWriter, serialize_row
from reprotrain.tables.schema import (
    LABELS_FILE,
    QUARANTINE_FILE,
    SCHEMA_FILE,
    SPLITS,
    STATS_FILE,
    ColumnProfile,
    Schema,
    check_columns,
    find_label,
    infer_schema,
    schema_changes,
)
from reprotrain.tables.screening import (
    Checker,
    Scan,
    dedupe,
    drop_small_classes,
    longer_than,
    name_conflicts,
    quarantine_csv,
    reason_counts,
    scan,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """What prepare reads from params.yaml (``prepare``, ``data.columns``, ``table``)."""

    columns: Any  # config.ColumnsConfig
    val_fraction: float
    test_fraction: float
    test_from_val: float
    shard_size: int
    max_categories: int
    sequence_length: int
    seed: int

    @classmethod
    def from_params(cls, params: Any) -> Options:
        return cls(
            params.data.columns,
            params.prepare.val_fraction,
            params.prepare.test_fraction,
            params.prepare.test_from_val,
            params.prepare.shard_size,
            params.table.max_categories,
            params.table.sequence_length,
            params.seed,
        )


def source_file(raw_dir: Path) -> Path:
    """The one data file fetch left in ``data/raw``."""
    from reprotrain.data.file_fetch import data_files

    files = data_files(Path(raw_dir))
    if len(files) != 1:
        found = ", ".join(f.name for f in files) or "none"
        raise DataError(
            f"{raw_dir}: expected one CSV/TSV/Parquet file from fetch, found {found}; "
            "rerun fetch (dvc repro -f fetch)"
        )
    return files[0]


# ------------------------------------------------------------------ pass 1: profile


def profile(path: Path, header: Sequence[str], label: str) -> tuple[dict[str, ColumnProfile], int]:
    """Per-column profiles and the number of data rows (pass 1)."""
    profiles = {name: ColumnProfile(name) for name in header if name != label}
    rows = 0
    with progress(None, "prepare: profile columns", unit="rows") as bar:
        for chunk in reading.iter_chunks(path):
            cells = [r.cells for r in chunk if r.cells is not None]
            rows += len(chunk)
            for i, name in enumerate(header):
                if name == label:
                    continue
                values = [v for c in cells if (v := reading.text_value(c[i])) is not None]
                profiles[name].add(values, sum(map(reading.is_number, values)))
            bar.update(len(chunk))
    return profiles, rows


# ------------------------------------------------------------------ pass 2: check rows


def check_coverage(counts: dict[str, Any], names: Sequence[str]) -> None:
    """Every class in every split (a given split column can leave one out)."""
    for split in SPLITS:
        missing = [c for c in names if counts[split]["per_class"][c] == 0]
        if missing:
            raise DataError(
                f"the {split} split has no row of class(es) {', '.join(missing[:5])}: fix the "
                "split column (data.columns.split) or add rows of those classes"
            )


# ------------------------------------------------------------------ pass 3: write


def write_shards(
    path: Path,
    out: Path,
    schema: Schema,
    plan: tuple[np.ndarray, np.ndarray, list[str]],
    options: Options,
    s: Scan,
) -> tuple[dict[str, list[dict]], int]:
    """Write each kept row to its split (pass 3); (shard index, truncated texts)."""
    splits, keys, header = plan
    checker = Checker(schema, header)
    ids = {name: schema.labels.index(name) for name in schema.labels}
    totals = np.bincount(splits[splits >= 0], minlength=len(SPLITS))
    writers = [
        SplitWriter(out, sp, int(totals[i]), options.shard_size) for i, sp in enumerate(SPLITS)
    ]
    truncated, index = 0, 0
    text_at = [checker.inputs.index(c) for c in schema.text]
    with progress(s.rows, "prepare: write TFRecords", unit="rows") as bar:
        for chunk in reading.iter_chunks(path):
            for row in chunk:
                if index >= len(splits):
                    raise DataError(f"{path} grew while prepare read it: rerun prepare")
                if index in s.reasons:
                    s.lines[index] = row.line
                    if index not in s.excerpts and row.cells is not None:
                        s.excerpts[index] = reading.clip(",".join(map(str, row.cells)))
                code = int(splits[index])
                if code >= 0:
                    values = checker.values(row.cells)
                    label = reading.label_value(row.cells[checker.label])
                    truncated += sum(
                        1
                        for j in text_at
                        if values[j] and longer_than(values[j], options.sequence_length)
                    )
                    by_name = dict(zip(checker.inputs, values, strict=True))
                    by_name[schema.label] = label
                    data = serialize_row(
                        schema,
                        by_name,
                        label_id=ids[label],
                        row=row.line,
                        key=ledgers.key_hex(keys[index]),
                    )
                    writers[code].write(data)
                index += 1
            bar.update(len(chunk))
    name_conflicts(s)
    return {sp: w.close() for sp, w in zip(SPLITS, writers, strict=True)}, truncated


def previous_schema(path: Path) -> Schema | None:
    try:
        return Schema.load(path) if path.is_file() else None
    except DataError as exc:
        log.warning("the previous schema cannot be read (%s): not compared", exc)
        return None


def prepare_table(
    raw_dir: Path, out_dir: Path, options: Options, ledger_path: Path, last_schema: Path
) -> dict[str, Any]:
    """Prepare the table fetch left in ``raw_dir`` into ``out_dir``; the stats (also in
    ``stats.json``). ``last_schema``: the previous prepare's schema (compared, then
    replaced), kept beside the ledger because DVC deletes ``out_dir`` before a run."""
    path = source_file(raw_dir)
    header = reading.header(path)
    check_columns(header, options.columns)
    label = find_label(header, options.columns.label)
    profiles, total = profile(path, header, label)
    draft = infer_schema(
        header, profiles, options.columns, max_categories=options.max_categories, labels=()
    )
    s = scan(path, header, draft, total)
    keys = np.frombuffer(s.keys, dtype=ledgers.KEY_DTYPE)  # a view: no copy
    labels = np.frombuffer(s.labels, np.int32)
    kept = dedupe(s, keys, labels)
    index = drop_small_classes(s, kept.index, labels)
    if not len(index):
        raise DataError(
            f"{path}: no usable row ({len(s.reasons)} quarantined): see the reasons above"
        )
    names = sorted({n for n, c in s.names.items() if c in set(labels[index].tolist())})
    if len(names) < 2:
        raise DataError(
            f"{path}: the label column {draft.label!r} has one class ({names[0]!r}) in its "
            f"{len(index)} usable rows: nothing to learn; check data.columns.label"
        )
    schema = replace(draft, labels=tuple(names))
    recode = np.full(len(s.names) + 1, -1, np.int32)
    for n, c in s.names.items():
        if n in names:
            recode[c] = names.index(n)
    item_labels = recode[labels[index]]
    assignment = ledgers.assign(
        keys[index],
        item_labels,
        names,
        np.frombuffer(s.given, np.int8)[index],
        ledgers.read_ledger(ledger_path),
        seed=options.seed,
        fractions=Fractions(options.val_fraction, options.test_fraction, options.test_from_val),
    )
    counts = ledgers.split_counts(assignment.splits, item_labels, names)
    check_coverage(counts, names)
    splits = np.full(s.rows, -1, np.int8)
    splits[index] = assignment.splits
    changes = schema_changes(previous_schema(last_schema), schema)
    for change in changes:
        log.warning("schema changed since the last prepare: %s", change)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        shards, truncated = write_shards(path, tmp, schema, (splits, keys, header), options, s)
        tfrecords.write_shard_index(tmp, shards)
        schema.save(tmp / SCHEMA_FILE)
        atomic_write_json(tmp / LABELS_FILE, list(names))
        atomic_write_text(tmp / QUARANTINE_FILE, quarantine_csv(s))
        stats = {
            "source": path.name,
            "rows_read": s.rows,
            "rows": len(index),
            "splits": counts,
            "quarantined": len(s.reasons),
            "quarantined_by_reason": reason_counts(s),
            "duplicates": kept.duplicates,
            "conflicting_duplicates": kept.conflicting,
            "truncated_texts": truncated,
            "sequence_length": options.sequence_length,
            "roles": schema.roles(),
            "inferred": list(schema.inferred),
            "schema_changes": changes,
            "ledger": assignment.report(),
        }
        atomic_write_json(tmp / STATS_FILE, stats)
    ledgers.write_ledger(ledger_path, assignment.ledger)
    ledgers.log_report(assignment, ledger_path)
    schema.save(last_schema)
    log_summary(stats)
    return stats


#: Share of quarantined rows above which prepare warns that the file itself may be wrong.
MANY_QUARANTINED = 0.1


def log_summary(stats: dict[str, Any]) -> None:
    log.info("roles: %s", ", ".join(f"{c}={r}" for c, r in stats["roles"].items()))
    log.info(
        "%d rows read: %s; %d quarantined %s, %d duplicates dropped, %d texts longer than "
        "%d tokens",
        stats["rows_read"],
        ", ".join(f"{s} {v['total']}" for s, v in stats["splits"].items()),
        stats["quarantined"],
        stats["quarantined_by_reason"] or "",
        stats["duplicates"],
        stats["truncated_texts"],
        stats["sequence_length"],
    )
    if stats["quarantined"] > MANY_QUARANTINED * stats["rows_read"]:
        top = max(stats["quarantined_by_reason"].items(), key=lambda kv: kv[1])
        log.warning(
            "%d of %d rows were quarantined, most for %r (%d): is the file what data.source "
            "should be (encoding UTF-8, delimiter, header row)? See quarantine.csv",
            stats["quarantined"],
            stats["rows_read"],
            top[0],
            top[1],
        )
