"""The run handle a stage logs through: metrics (also copied to its pipeline row), artifacts,
tags, and store failures turned into one :class:`TrackingError` line.

Split from :mod:`.runs` (which opens and ends the run) so that the handle, which stages and
the registry code use, reads on its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reprotrain.errors import TrackingError
from reprotrain.timing import timed
from reprotrain.tracking.tags import TAG_NOTE

logger = logging.getLogger(__name__)


def _metric_key(key: str) -> str:
    """THE metric-name sanitiser: MLflow keys allow alphanumerics, ``_ - . space / :`` only."""
    return "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in str(key))


def _metric_list(values: Mapping[str, float]) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in values.items()]


@contextmanager
def store_errors(uri: str, what: str) -> Iterator[None]:
    """A store failure while a stage runs (a stopped server, a broken file) becomes one
    TrackingError line that says what to do, instead of an HTTP traceback."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as exc:
        cause = getattr(exc, "message", None) or str(exc)
        cause = " ".join(str(cause).split())[:300]
        if uri.startswith(("http://", "https://")):
            raise TrackingError(
                f"MLflow tracking server {uri} failed while {what} ({cause}); restart the "
                "server and rerun (`dvc repro`): training resumes from its last epoch backup"
            ) from None
        raise TrackingError(f"MLflow store {uri} failed while {what}: {cause}") from None


@dataclass
class StageRun:
    """A handle on the active MLflow run of one stage (and its pipeline parent)."""

    run_id: str
    stage: str = ""
    parent_run_id: str | None = None
    experiment_id: str | None = None
    #: The run id this execution reproduces (``python -m reprotrain reproduce``), else None.
    reproduces: str | None = None
    uri: str = ""
    pipeline_id: str = ""

    def sidecar(self) -> dict[str, Any]:
        """The body of the ``*.run.json`` sidecar that names this run to downstream stages."""
        return {
            "run_id": self.run_id,
            "stage": self.stage,
            "pipeline_run_id": self.parent_run_id,
            "pipeline_id": self.pipeline_id,
            "experiment_id": self.experiment_id,
        }

    @timed("logging")
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Per-epoch (``step``) or final metrics; final ones are also copied into the
        pipeline row as ``<stage>.<name>`` so executions compare side by side."""
        import mlflow

        values = {_metric_key(k): float(v) for k, v in metrics.items()}
        what = f"logging {self.stage} metrics" + (f" of step {step}" if step is not None else "")
        with store_errors(self.uri, what):
            mlflow.log_metrics(values, step=step, run_id=self.run_id)
            if step is None and self.parent_run_id and self.stage:
                mlflow.MlflowClient().log_batch(
                    self.parent_run_id,
                    metrics=_metric_list({f"{self.stage}.{k}": v for k, v in values.items()}),
                )

    @timed("logging")
    def log_pipeline_metrics(self, metrics: Mapping[str, float]) -> None:
        """Metrics of the whole execution (evaluate: the final test metrics), logged both on
        this run and, un-prefixed, on the pipeline row; ``accuracy`` also goes in its note."""
        import mlflow

        values = {_metric_key(k): float(v) for k, v in metrics.items()}
        with store_errors(self.uri, f"logging the {self.stage} pipeline metrics"):
            mlflow.log_metrics(values, run_id=self.run_id)
            if not self.parent_run_id:
                return
            client = mlflow.MlflowClient()
            client.log_batch(self.parent_run_id, metrics=_metric_list(values))
            if "accuracy" in values:
                note = client.get_run(self.parent_run_id).data.tags.get(TAG_NOTE, "")
                note = note.split("\n\n**Test accuracy")[0]
                line = f"**Test accuracy: {values['accuracy']:.4f}**"
                client.set_tag(self.parent_run_id, TAG_NOTE, f"{note}\n\n{line}".strip())

    @timed("logging")
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        import mlflow

        path = Path(path)
        with store_errors(self.uri, f"uploading {path}"):
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=artifact_path or path.name)
            elif path.exists():
                mlflow.log_artifact(str(path), artifact_path=artifact_path)
            else:
                logger.warning("artifact %s does not exist; not logged", path)

    @timed("logging")
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        import mlflow

        with store_errors(self.uri, f"tagging the {self.stage} run"):
            mlflow.set_tags({k: str(v) for k, v in tags.items()})

    @timed("logging")
    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        import mlflow

        with store_errors(self.uri, f"uploading {artifact_file}"):
            mlflow.log_dict(dict(data), artifact_file)


class NoRun(StageRun):
    """The run handle of a non-chief multi-worker process: records nothing (the chief's run
    holds the stage), so the stage's code stays the same on every worker."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_pipeline_metrics(self, metrics: Mapping[str, float]) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        pass
