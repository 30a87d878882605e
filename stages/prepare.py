"""prepare: data/raw → validated, de-duplicated, split, sharded TFRecords in data/prepared.

Undecodable or unusable files are quarantined (data/prepared/quarantine.csv) and counted in
the summary, never dropped silently; the source is never modified.
"""

from __future__ import annotations

from pathlib import Path

from reprotrain import dag, paths, tracking
from reprotrain.cli import run_main
from reprotrain.config import load_params
from reprotrain.data.prepare import prepare

STAGE = "prepare"
SPEC = dag.stage(STAGE)


def main() -> int:
    params = load_params()
    with tracking.stage_run(SPEC, params, Path.cwd()) as run:
        summary = prepare(
            paths.RAW_DIR, paths.PREPARED_DIR, params.prepare, params.seed, paths.SPLITS_LEDGER
        )
        stats = summary.as_stats()
        run.log_metrics(
            {
                "images": stats["images"],
                "quarantined": stats["quarantined"],
                "duplicates": stats["duplicates"],
                "classes": len(summary.labels),
                **{f"{s}_images": v["total"] for s, v in stats["splits"].items()},
            }
        )
        for name in ("stats.json", "quarantine.csv", "labels.json", "manifest.csv", "shards.json"):
            run.log_artifact(paths.PREPARED_DIR / name, artifact_path="prepared")
    return 0


if __name__ == "__main__":
    run_main(main)
