"""evaluate (table kind): score the model on the test split, decide the promotion, apply it.

Reads data/table/prepared (test rows, schema), models/table/model.keras and its history, the
classical baseline and metrics/export.json. Writes metrics/evaluate.json (the image kind's
metrics, the gain over the baseline, permutation importance), the plots,
plots/predictions.csv (what predict and the server answer per test row),
metrics/promotion.json and the model card. Promotion is the image kind's order, against a
table champion on the same inputs only (tables.promotion).
"""

from __future__ import annotations

from pathlib import Path

from reprotrain import dag, paths, runtime, tracking
from reprotrain.cli import run_main
from reprotrain.config import load_params
from reprotrain.evaluation import publication
from reprotrain.tables import card, importance, inference, promotion, scoring
from reprotrain.tables.schema import Schema
from reprotrain.tables.training import load_split
from reprotrain.tracking import images, registration

SPEC = dag.stage("evaluate", "table")
METRICS = paths.METRICS_DIR / "evaluate.json"


def main() -> int:
    params = load_params()
    dag.check_kind(SPEC, params.data.kind)
    mode = registration.promotion_mode()  # $REPROTRAIN_PROMOTE, checked before anything slow
    info = runtime.configure(params.runtime, params.seed)
    schema = Schema.load(paths.TABLE_PREPARED)
    labels = list(schema.labels)
    test = load_split(paths.TABLE_PREPARED, "test", schema)
    env = runtime.environment_info(info)
    with tracking.stage_run(SPEC, params, Path.cwd(), environment=env) as run:
        model = inference.load(paths.TABLE_MODEL, num_classes=len(labels))
        scores = scoring.score(model, test, schema, params)
        scoring.write_results(scores, test, labels, METRICS)
        publication.log_report(run, scores.flat_metrics(), METRICS)
        run.log_metrics(importance.as_metrics(scores.ranked))
        run.log_dict({"permutation_importance": scores.ranked}, "importance.json")

        candidate = promotion.Candidate(test, schema, scores.probs, scores.floor)
        promoted = promotion.promote(run, params, candidate, mode)
        export = publication.record_promotion(run, promoted, paths.TABLE_EXPORT_RUN)
        fields = scoring.model_card(
            params, schema, model.name, scores, promoted, export, run.run_id
        )
        card.write_card(paths.MODEL_CARD, fields)
        images.log_images(run, images.figure_keys({"evaluate": [scoring.IMAGES_DIR]}))
        publication.publish_card(run, promoted, paths.MODEL_CARD)
    return 0


if __name__ == "__main__":
    run_main(main)
