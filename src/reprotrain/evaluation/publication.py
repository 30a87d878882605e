"""What every kind's evaluate publishes around the decision, in one place: the report and
plots on the run, then, once the registry has moved, ``metrics/promotion.json`` (written and
logged), the export report's tags on the registered version, the reports folder and the
model card as the version's description.

Why one module: the image, table and series stages did these steps in the same order with
the same files. Why in ``evaluation`` rather than ``tracking``: it attaches the export tags
(:mod:`reprotrain.serving.export_tags`), and tracking imports nothing from serving.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reprotrain import fsio, paths
from reprotrain.serving import export_tags
from reprotrain.tracking.handle import StageRun
from reprotrain.tracking.lineage import read_sidecar
from reprotrain.tracking.registration import describe_version

#: The decision as the registry applied it (``registration.apply_decision``'s record).
PROMOTION = paths.METRICS_DIR / "promotion.json"


def read_json(path: Path) -> dict[str, Any] | None:
    """``path``'s JSON, or None when there is no such file (export did not run)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def log_report(run: StageRun, flat_metrics: Mapping[str, float], metrics_file: Path) -> None:
    """The evaluation's metrics on the run (and its pipeline row), the metrics file and the
    plots folder (CSVs, PNGs, predictions) as artifacts."""
    run.log_pipeline_metrics(flat_metrics)
    run.log_artifact(metrics_file)
    run.log_artifact(paths.PLOTS_DIR, artifact_path="plots")


def record_promotion(
    run: StageRun, promotion: Mapping[str, Any], export_sidecar: Path
) -> dict[str, Any] | None:
    """Write and log :data:`PROMOTION`; tag the registered version with the export report
    (``metrics/export.json``, linked to the export run named in ``export_sidecar``) when
    export ran. Returns that report (None: no export yet), which the card shows."""
    fsio.atomic_write_json(PROMOTION, promotion)
    run.log_artifact(PROMOTION)
    report = read_json(paths.EXPORT_METRICS)
    if report is not None:
        export_run = read_sidecar(export_sidecar) or {}
        name, version = promotion["registered_model"], promotion["version"]
        export_tags.attach_exports(name, version, report, export_run.get("run_id"))
    return report


def publish_card(run: StageRun, promotion: Mapping[str, Any], card: Path) -> None:
    """Log the reports folder and show ``card`` on the registered version."""
    run.log_artifact(paths.REPORTS_DIR, artifact_path="reports")
    describe_version(run, promotion["registered_model"], promotion["version"], card)
