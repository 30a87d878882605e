"""export (data.kind: series): the forecaster as a TF Serving SavedModel and TFLite
(export.formats), each re-scored on the test windows against the Keras model.

Reads models/series/model.keras and the test windows of data/series/prepared. Writes
models/series/export/ and metrics/export.json: per format the test MAE, its ratio to the
Keras model's, the largest forecast difference from it, file size, median batch-1 latency,
and whether it ships (series.export_max_diff). A format that does not convert is a
not-shipped row with the reason (reprotrain.series.export).
"""

from __future__ import annotations

from pathlib import Path

from reprotrain import dag, paths, runtime, tracking
from reprotrain.cli import run_main
from reprotrain.config import load_params
from reprotrain.series import export, windows
from reprotrain.series import model as series_model
from reprotrain.serving.export import publish

SPEC = dag.stage("export", "series")


def main() -> int:
    params = load_params()
    info = runtime.configure(params.runtime, params.seed)
    meta = windows.load_meta(paths.SERIES_PREPARED)
    test = windows.load_windows(paths.SERIES_PREPARED, "test")
    model = series_model.load(paths.SERIES_MODEL)
    series_model.check_shape(model, meta.window, len(meta.channels), meta.horizon)
    with tracking.stage_run(
        SPEC, params, Path.cwd(), environment=runtime.environment_info(info)
    ) as run:
        report = export.export_and_verify(
            model,
            paths.SERIES_MODEL,
            paths.SERIES_EXPORT_DIR,
            test.x,
            test.y,
            params.export.formats,
            max_diff=params.series.export_max_diff,
            latency_samples=params.export.latency_samples,
        )
        publish(run, report, paths.EXPORT_METRICS)
    return 0


if __name__ == "__main__":
    run_main(main)
