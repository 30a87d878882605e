"""Everything MLflow (the only module that imports mlflow).

STUB INTERFACE — the tracking owner replaces the body, keeping these signatures.

Stages use it like this::

    with tracking.stage_run("train_head", params, sections=("seed", "model", ...),
                            root=root, upstream=[paths.PREPARE_RUN],
                            sidecar=paths.HEAD_RUN, environment=runtime.environment_info())
    as run:
        ...
        run.log_metrics({"loss": 0.3}, step=epoch)
        run.log_artifact(paths.HEAD_MODEL)

On success the sidecar JSON (``{"run_id": ..., ...}``) is written; on an exception the run
ends FAILED (KILLED for Ctrl-C) and the exception propagates.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reprotrain.config import Params, flatten


def tracking_uri(params: Params, root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's SQLite store (absolute path)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    store = (root / params.tracking.store).resolve()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


@dataclass
class StageRun:
    """A handle on the active MLflow run of one stage."""

    run_id: str

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        import mlflow

        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path or path.name)
        elif path.exists():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in tags.items()})


@contextmanager
def stage_run(
    stage: str,
    params: Params,
    sections: Sequence[str],
    root: Path,
    upstream: Sequence[Path] = (),
    sidecar: Path | None = None,
    environment: Mapping[str, Any] | None = None,
) -> Iterator[StageRun]:
    """Start an MLflow run for ``stage``; log its params; write ``sidecar`` on success."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(params, root))
    mlflow.set_experiment(params.tracking.experiment)
    with mlflow.start_run(run_name=stage) as active:
        logged: dict[str, Any] = {}
        for section in sections:
            value = getattr(params, section)
            logged.update(flatten(value, section))
        mlflow.log_params(logged)
        run = StageRun(active.info.run_id)
        run.set_tags({"reprotrain.stage": stage, **(environment or {})})
        yield run
    if sidecar is not None:
        sidecar = root / sidecar
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        sidecar.write_text(json.dumps({"run_id": run.run_id, "stage": stage}, indent=2) + "\n")
