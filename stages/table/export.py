"""export (table kind): the table model as a SavedModel taking the raw-column dict, and
TFLite (float32, float16, with TensorFlow string ops), each re-scored on the test rows
against the Keras model (reprotrain.tables.export; the verdict and report are the image
export's).

Reads models/table/model.keras and data/table/prepared (test split). Writes
models/table/export/ and metrics/export.json. A format that cannot be written or run is
reported not shipped, with the reason; only the SavedModel is required.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from reprotrain import dag, paths, runtime, tracking
from reprotrain.cli import run_main
from reprotrain.config import load_params
from reprotrain.serving import export
from reprotrain.tables import export as table_export
from reprotrain.tables import inference
from reprotrain.tables.features import InputSpec
from reprotrain.tables.schema import Schema
from reprotrain.tables.training import load_split

SPEC = dag.stage("export", "table")
logger = logging.getLogger("reprotrain.stages.table.export")


def main() -> int:
    params = load_params()
    dag.check_kind(SPEC, params.data.kind)
    info = runtime.configure(params.runtime, params.seed)
    schema = Schema.load(paths.TABLE_PREPARED)
    test = load_split(paths.TABLE_PREPARED, "test", schema)
    model = inference.load(paths.TABLE_MODEL, num_classes=len(schema.labels))
    shutil.rmtree(paths.TABLE_EXPORT_DIR, ignore_errors=True)  # no format left from before
    with tracking.stage_run(
        SPEC, params, Path.cwd(), environment=runtime.environment_info(info)
    ) as run:
        report = table_export.export_and_verify(
            model,
            paths.TABLE_MODEL,
            paths.TABLE_EXPORT_DIR,
            InputSpec.from_schema(schema),
            (test.inputs, test.y),
            params.export,
        )
        export.publish(run, report, paths.EXPORT_METRICS)
    return 0


if __name__ == "__main__":
    run_main(main)
