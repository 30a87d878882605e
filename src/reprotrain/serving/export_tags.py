"""Tags that point a registered model version at the files the export stage shipped.

Why a module of its own: the exported formats are made and verified by
:mod:`reprotrain.serving.export` in the export stage, while the version they belong to is
only registered later, by evaluate. This is the one step that joins the two: it writes the
export report onto the version as tags, so the registry answers "which formats passed, and
where are their files" without storing the files twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mlflow


def attach_exports(
    name: str,
    version: str | int,
    report: Mapping[str, Any],
    export_run_id: str | None,
    *,
    client: Any = None,
) -> dict[str, str]:
    """Tag a registered version with the export report: ``export.<format>.<metric>`` for
    every format, ``export.shipped`` (the formats that passed) and, for each shipped format,
    ``export.<format>.uri``: where the export stage logged the file (``runs:/<id>/export/…``).

    Why tags and URIs rather than copies: a registered version's artifacts are its logged
    model; the exported files are already artifacts of the export run, so the version points
    at them (``mlflow artifacts download -u <uri>``) instead of storing them twice.
    """
    from reprotrain.serving.export import flat_metrics, shipped_formats
    from reprotrain.serving.formats import DIRECTORY_FORMATS, FILENAMES

    client = client or mlflow.MlflowClient()
    tags = {k: repr(v) if isinstance(v, float) else str(v) for k, v in flat_metrics(report).items()}
    shipped = shipped_formats(report)
    tags["export.shipped"] = ",".join(shipped) or "none"
    for fmt, row in report.get("formats", {}).items():
        tags[f"export.{fmt}.reason"] = str(row.get("reason", ""))[:5000]
    if export_run_id:
        tags["export.run_id"] = export_run_id
        for fmt in shipped:
            # stages/export.py logs a file under export/<format>/, a directory's contents
            # (the SavedModel, the OpenVINO IR) directly under export/<format>.
            leaf = "" if fmt in DIRECTORY_FORMATS else f"/{FILENAMES[fmt]}"
            tags[f"export.{fmt}.uri"] = f"runs:/{export_run_id}/export/{fmt}{leaf}"
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    return tags
