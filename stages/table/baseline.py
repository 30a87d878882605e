"""baseline (data.kind: table): scikit-learn fitted on the prepared train split
(TF-IDF + LogisticRegression with text, else HistGradientBoosting), scored on val and test
beside the majority class; evaluate reports the network's gain over it.
"""

from __future__ import annotations

from pathlib import Path

from reprotrain import dag, fsio, paths, tracking
from reprotrain.cli import run_main
from reprotrain.config import load_params
from reprotrain.tables import classical
from reprotrain.tables.records import read_frame
from reprotrain.tables.schema import Schema

SPEC = dag.stage("baseline", "table")
METRICS = paths.METRICS_DIR / "baseline.json"


def main() -> int:
    params = load_params()
    with tracking.stage_run(SPEC, params, Path.cwd()) as run:
        schema = Schema.load(paths.TABLE_PREPARED)
        frames = {s: read_frame(paths.TABLE_PREPARED, s) for s in ("train", "val", "test")}
        model = classical.fit_baseline(
            schema, frames["train"], max_tokens=params.table.max_tokens, seed=params.seed
        )
        metrics = {"model": classical.describe(model)}
        for split in ("val", "test"):
            probs = classical.baseline_probs(model, frames[split], schema)
            metrics[f"{split}_accuracy"] = classical.accuracy(probs, frames[split], schema)
            metrics[f"{split}_majority_accuracy"] = classical.majority_accuracy(
                frames["train"], frames[split], schema
            )
        classical.save_baseline(model, paths.TABLE_BASELINE)
        fsio.atomic_write_json(METRICS, metrics)
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
        run.set_tags({"baseline.model": metrics["model"]})
        run.log_artifact(METRICS, artifact_path="metrics")
    return 0


if __name__ == "__main__":
    run_main(main)
