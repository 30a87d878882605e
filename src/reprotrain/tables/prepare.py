"""prepare for the table kind: one CSV/TSV/Parquet file → schema, row ledger, quarantine,
sharded TFRecords per split, ``stats.json`` and ``labels.json``.

It streams: three passes over the file, none holding more than a chunk of rows.

1. profile each column (:class:`~.schema.ColumnProfile`, and its decimal commas:
   :class:`~.decimal_comma.CommaTally`) → infer the schema;
2. check each row against the schema (quarantine reasons, :class:`~.screening.Checker`),
   compute its ledger key; then drop exact duplicates (one ledger key), quarantine
   duplicates whose labels conflict (all of them) and classes too small to split, assign
   splits (:mod:`.ledger`);
3. write each kept row to its split's shards, in file order.

Memory is flat in the number of rows: nothing per row stays in RAM. Pass 2's keys, classes
and given splits, the previous ledger, the de-duplication, the assignment and pass 3's
split of each row live in a temporary on-disk SQLite database (:mod:`.rowstore`, its page
cache bounded), read and written a batch at a time; Python keeps per-class counts and the
quarantined rows' reasons (benchmarks/table_prepare.py measures it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from reprotrain.data import decimal_comma, row_reader, tfrecords
from reprotrain.data.split import Fractions
from reprotrain.errors import DataError
from reprotrain.fsio import atomic_path, atomic_write_json, atomic_write_text
from reprotrain.progress import progress
from reprotrain.tables import ledger as ledgers
from reprotrain.tables import reading
from reprotrain.tables.records import SplitWriter, serialize_row
from reprotrain.tables.rowstore import RowStore
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


def profile(
    path: Path, header: Sequence[str], label: str
) -> tuple[dict[str, ColumnProfile], int, frozenset[str]]:
    """Per-column profiles, the number of data rows and the columns read with a decimal
    comma (pass 1). A decimal-comma column's comma values count as numbers."""
    profiles = {name: ColumnProfile(name) for name in header if name != label}
    commas = (
        {name: decimal_comma.CommaTally() for name in profiles}
        if row_reader.may_have_decimal_commas(path)
        else {}
    )
    rows = 0
    with progress(None, "prepare: profile columns", unit="rows") as bar:
        for chunk in row_reader.iter_chunks(path):
            cells = [r.cells for r in chunk if r.cells is not None]
            rows += len(chunk)
            for i, name in enumerate(header):
                if name == label:
                    continue
                values = [v for c in cells if (v := reading.text_value(c[i])) is not None]
                profiles[name].add(values, reading.count_numbers(values))
                if commas:
                    commas[name].add(values)
            bar.update(len(chunk))
    decimal = frozenset(n for n, t in commas.items() if t.decimal_comma)
    for name in decimal:
        p = profiles[name]
        profiles[name] = replace(p, numbers=p.numbers + commas[name].commas)
    return profiles, rows, decimal


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
    path: Path, out: Path, checker: Checker, options: Options, s: Scan
) -> tuple[dict[str, list[dict]], int]:
    """Write each kept row to its split (pass 3): the store gives the kept rows' keys and
    splits in file order, beside the file's rows. (shard index, truncated texts)."""
    schema = checker.schema
    ids = {name: schema.labels.index(name) for name in schema.labels}
    totals = s.store.split_totals()
    writers = [
        SplitWriter(out, sp, int(totals.get(i, 0)), options.shard_size)
        for i, sp in enumerate(SPLITS)
    ]
    truncated, index = 0, 0
    text_at = [checker.inputs.index(c) for c in schema.text]
    kept = s.store.kept()
    next_kept, key, code = next(kept, (-1, b"", -1))
    with progress(s.rows, "prepare: write TFRecords", unit="rows") as bar:
        for chunk in row_reader.iter_chunks(path):
            for row in chunk:
                if index >= s.rows:
                    raise DataError(f"{path} grew while prepare read it: rerun prepare")
                if index in s.reasons:
                    s.lines[index] = row.line
                    if index not in s.excerpts and row.cells is not None:
                        s.excerpts[index] = row_reader.clip(",".join(map(str, row.cells)))
                if index == next_kept:
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
                        schema, by_name, label_id=ids[label], row=row.line, key=key.hex()
                    )
                    writers[code].write(data)
                    next_kept, key, code = next(kept, (-1, b"", -1))
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
    header = row_reader.header(path)
    check_columns(header, options.columns)
    label = find_label(header, options.columns.label)
    profiles, total, decimal = profile(path, header, label)
    if decimal:
        log.info("read with a decimal comma: %s", ", ".join(sorted(decimal)))
    draft = infer_schema(
        header, profiles, options.columns, max_categories=options.max_categories, labels=()
    )
    decimal = frozenset(c for c in decimal if c in draft.numeric)
    with RowStore(options.seed) as store:
        s = scan(path, header, Checker(draft, header, decimal), total, store)
        kept = dedupe(s)
        schema = replace(draft, labels=_classes(path, draft, s))
        store.set_names(s.names)
        previous = ledgers.read_ledger(ledger_path, store)
        log.debug("%d rows in the previous ledger %s", previous, ledger_path)
        fractions = Fractions(options.val_fraction, options.test_fraction, options.test_from_val)
        assignment = ledgers.assign(store, fractions=fractions)
        counts = ledgers.split_counts(store, schema.labels)
        check_coverage(counts, schema.labels)
        changes = schema_changes(previous_schema(last_schema), schema)
        for change in changes:
            log.warning("schema changed since the last prepare: %s", change)
        with atomic_path(out_dir) as tmp:
            tmp.mkdir(parents=True)
            checker = Checker(schema, header, decimal)
            shards, truncated = write_shards(path, tmp, checker, options, s)
            tfrecords.write_shard_index(tmp, shards)
            schema.save(tmp / SCHEMA_FILE)
            atomic_write_json(tmp / LABELS_FILE, list(schema.labels))
            atomic_write_text(tmp / QUARANTINE_FILE, quarantine_csv(s))
            stats = {
                "source": path.name,
                "rows_read": s.rows,
                "rows": sum(v["total"] for v in counts.values()),
                "splits": counts,
                "quarantined": len(s.reasons),
                "quarantined_by_reason": reason_counts(s),
                "duplicates": kept.duplicates,
                "conflicting_duplicates": kept.conflicting,
                "truncated_texts": truncated,
                "sequence_length": options.sequence_length,
                "roles": schema.roles(),
                "inferred": list(schema.inferred),
                "decimal_comma": sorted(decimal),
                "schema_changes": changes,
                "ledger": assignment.report(),
            }
            atomic_write_json(tmp / STATS_FILE, stats)
        ledgers.write_ledger(ledger_path, store)
    ledgers.log_report(assignment, ledger_path)
    schema.save(last_schema)
    log_summary(stats)
    return stats


def _classes(path: Path, draft: Schema, s: Scan) -> tuple[str, ...]:
    """The classes that get rows, sorted (the rows of classes too small to split are
    quarantined); a DataError when fewer than two are left."""
    sizes = drop_small_classes(s)
    if not sizes:
        raise DataError(
            f"{path}: no usable row ({len(s.reasons)} quarantined): see the reasons above"
        )
    inverse = {c: n for n, c in s.names.items()}
    names = sorted(inverse[c] for c in sizes)
    if len(names) < 2:
        raise DataError(
            f"{path}: the label column {draft.label!r} has one class ({names[0]!r}) in its "
            f"{sum(sizes.values())} usable rows: nothing to learn; check data.columns.label"
        )
    return tuple(names)


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
