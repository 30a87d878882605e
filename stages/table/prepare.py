"""prepare (data.kind: table): the CSV/Parquet file in data/raw → the inferred schema, the
row ledger, quarantine.csv, sharded TFRecords per split, stats.json in data/table/prepared.

Rows that cannot be used are quarantined with their line and reason (never dropped
silently); a schema that changed since the last prepare is reported. See docs/tables.md.
"""

from __future__ import annotations

from pathlib import Path

from reprotrain import dag, paths, tracking
from reprotrain.cli import run_main
from reprotrain.config import load_params
from reprotrain.dag.table import LAST_SCHEMA
from reprotrain.tables.prepare import Options, prepare_table

SPEC = dag.stage("prepare", "table")


def main() -> int:
    params = load_params()
    with tracking.stage_run(SPEC, params, Path.cwd()) as run:
        stats = prepare_table(
            paths.RAW_DIR,
            paths.TABLE_PREPARED,
            Options.from_params(params),
            paths.TABLE_LEDGER,
            LAST_SCHEMA,
        )
        run.log_metrics(
            {
                "rows_read": stats["rows_read"],
                "rows": stats["rows"],
                "quarantined": stats["quarantined"],
                "duplicates": stats["duplicates"],
                "conflicting_duplicates": stats["conflicting_duplicates"],
                "truncated_texts": stats["truncated_texts"],
                "schema_changes": len(stats["schema_changes"]),
                **{f"{s}_rows": v["total"] for s, v in stats["splits"].items()},
            }
        )
        for name in ("schema.json", "stats.json", "quarantine.csv", "labels.json", "shards.json"):
            run.log_artifact(paths.TABLE_PREPARED / name, artifact_path="prepared")
    return 0


if __name__ == "__main__":
    run_main(main)
