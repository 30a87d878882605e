"""Everything MLflow (the only package besides ``serving`` and ``commands`` that imports it).

Stages use it like this::

    SPEC = dag.stage("train_head")  # its params, sidecar and upstream sidecars
    with tracking.stage_run(SPEC, params, root, environment=runtime.environment_info(info)) as run:
        ...
        run.log_metrics({"loss": 0.3}, step=epoch)
        run.log_artifact(paths.HEAD_MODEL)

Modules, by concern:

- :mod:`.store`: where the store is (``MLFLOW_TRACKING_URI``, else the project's SQLite file,
  following ``$DVC_ROOT``), whether it answers, retries on a busy SQLite file;
- :mod:`.lineage`: git, ``dvc.yaml``/``dvc.lock``, content hashes, ``*.run.json`` sidecars;
- :mod:`.handle`: the run handle a stage logs through (:class:`StageRun`);
- :mod:`.runs`: the stage-run lifecycle (nested stage runs, FAILED/KILLED endings, a
  stopped server as one clear error), with :mod:`.pipeline` (the one parent row per
  execution), :mod:`.owners` (runs of SIGKILLed processes marked KILLED) and
  :mod:`.process` (SIGTERM as Ctrl-C, MLflow's environment knobs, the server-down check);
- :mod:`.registry`: versions, aliases, explicit promotion and rollback; :mod:`.resolve`:
  ``models:/`` and ``runs:/`` URIs resolved to local files (re-exported by ``registry``);
  :mod:`.registration` snapshots the champion, registers a candidate and applies a
  decision (``evaluation.decision`` decides);
- :mod:`.tags`: the tag names.

``registry`` and ``registration`` are not imported here: they pull in the promotion rule, and
a stage's ``dvc.yaml`` deps are the modules it imports, so only the stages and commands that
register or promote import them (``from reprotrain.tracking import registration``).

Documented environment: ``MLFLOW_TRACKING_URI`` (store override), ``DVC_ROOT``,
``DVC_EXP_NAME``, ``DVC_EXP_BASELINE_REV``, ``DVC_STAGE`` (set by DVC),
``REPROTRAIN_REPRODUCES`` (set by ``reprotrain reproduce``) and ``REPROTRAIN_PROMOTE`` (read by
the evaluate stage: ``challenger`` only proposes). Telemetry is switched off.
"""

from __future__ import annotations

from reprotrain.errors import ModelError, TrackingError
from reprotrain.tracking.handle import NoRun, StageRun
from reprotrain.tracking.lineage import (
    ENV_REPRODUCES,
    changed_params,
    data_hashes,
    read_sidecar,
    read_yaml,
    source_paths,
    stage_deps,
    stage_outputs,
    upstream_stages,
)
from reprotrain.tracking.pipeline import PARAMS_ARTIFACT
from reprotrain.tracking.runs import stage_run
from reprotrain.tracking.store import (
    HEALTH_TIMEOUT,
    artifact_location,
    check_reachable,
    connect,
    default_uri,
    store_uri,
)
from reprotrain.tracking.tags import (
    TAG_COMMIT,
    TAG_DIRTY,
    TAG_DIRTY_PATHS,
    TAG_ERROR,
    TAG_EXP,
    TAG_HOST,
    TAG_PID,
    TAG_PIPELINE,
    TAG_REPRODUCES,
    TAG_ROLE,
    TAG_ROOT,
    TAG_STAGE,
    VTAG_ACCURACY,
    VTAG_DIGEST,
    VTAG_IMAGE_SIZE,
    VTAG_LABELS,
    VTAG_PREVIOUS,
    VTAG_RUN,
)

__all__ = [
    "ENV_REPRODUCES",
    "HEALTH_TIMEOUT",
    "PARAMS_ARTIFACT",
    "TAG_COMMIT",
    "TAG_DIRTY",
    "TAG_DIRTY_PATHS",
    "TAG_ERROR",
    "TAG_EXP",
    "TAG_HOST",
    "TAG_PID",
    "TAG_PIPELINE",
    "TAG_REPRODUCES",
    "TAG_ROLE",
    "TAG_ROOT",
    "TAG_STAGE",
    "VTAG_ACCURACY",
    "VTAG_DIGEST",
    "VTAG_IMAGE_SIZE",
    "VTAG_LABELS",
    "VTAG_PREVIOUS",
    "VTAG_RUN",
    "ModelError",
    "NoRun",
    "StageRun",
    "TrackingError",
    "artifact_location",
    "changed_params",
    "check_reachable",
    "connect",
    "data_hashes",
    "default_uri",
    "read_sidecar",
    "read_yaml",
    "source_paths",
    "stage_deps",
    "stage_outputs",
    "stage_run",
    "store_uri",
    "upstream_stages",
]
