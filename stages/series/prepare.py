"""prepare (data.kind: series): data/raw/<file> → a cleaned regular series, its train | val |
test periods (the cuts recorded in data/series/cuts.json) and each period's windows as
TFRecords in data/series/prepared.

Quarantined rows are in data/series/prepared/quarantine.csv with their reason; every
cleaning rule's count, the cuts and the steps changed since they were recorded are in
stats.json (docs/series.md).
"""

from __future__ import annotations

from pathlib import Path

from reprotrain import dag, paths, tracking
from reprotrain.cli import run_main
from reprotrain.config import load_params
from reprotrain.series.prepare import prepare
from reprotrain.series.windows import QUARANTINE, SERIES_FILE, SPLITS, STATS

STAGE = "prepare"
SPEC = dag.stage(STAGE, "series")


def main() -> int:
    params = load_params()
    with tracking.stage_run(SPEC, params, Path.cwd()) as run:
        stats = prepare(
            paths.RAW_DIR,
            paths.SERIES_PREPARED,
            params.data.columns,
            params.series,
            paths.SERIES_CUTS,
        )
        counts = stats["counts"]
        run.log_metrics(
            {
                "rows": counts["rows"],
                "steps": counts["steps"],
                "quarantined": sum(counts["quarantined"].values()),
                "gap_steps_interpolated": counts["gaps_interpolated"]["steps"],
                "gap_steps_left": counts["gaps_left"]["steps"],
                "windows_dropped": sum(counts["windows_dropped"].values()),
                "rows_changed": stats["changed"].get("rows", 0),
                **{f"{s}_windows": counts["windows"][s] for s in SPLITS},
            }
        )
        for name in (STATS, QUARANTINE, SERIES_FILE):
            run.log_artifact(paths.SERIES_PREPARED / name, artifact_path="prepared")
        run.log_artifact(paths.SERIES_CUTS, artifact_path="prepared")
    return 0


if __name__ == "__main__":
    run_main(main)
