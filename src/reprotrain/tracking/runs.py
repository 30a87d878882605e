"""The stage-run lifecycle: one MLflow run per stage, nested under one pipeline run.

One row per pipeline execution. DVC runs every stage as its own process, so the stages find
their common parent run by a tag: ``reprotrain.pipeline_id`` (:func:`lineage.pipeline_key`).
The first stage that runs creates the parent run (all params flattened, named after what
distinguishes it: the DVC experiment name, or the short commit and the params that differ
from HEAD's params.yaml, which its note also lists); later stages of the same execution nest
under it. If the newest parent with that id already holds a run of the same stage, this is a
new execution of an unchanged configuration (``dvc repro -f``) and a new parent is created.
The parent is RUNNING only while one of its stages runs and then takes the stage's final
status. Stage-level final metrics are copied into it as ``<stage>.<metric>``.

Endings: an exception ends the stage run (and its parent) FAILED with the message in the
``reprotrain.error`` tag and the run's note; Ctrl-C or SIGTERM ends them KILLED. SIGKILL (or
the OOM killer, or a power cut) cannot be caught, so every run records the process that owns
it (host, pid, process start time): the next stage run on that host marks a RUNNING run whose
process is gone KILLED, with a note saying so. A tracking server that stops answering while a
stage runs ends the stage with one :class:`TrackingError` line (restart it and rerun; the
training backup resumes), never a raw traceback.

The training stages' runs also sample the machine while they run (MLflow system metrics:
``system/cpu_utilization_percentage``, ``system/system_memory_usage_megabytes``, GPU
utilisation and memory where ``nvidia-ml-py`` sees a GPU), every
``tracking.system_metrics_interval`` seconds, when ``tracking.system_metrics`` is on.

In a multi-worker run only the chief records the stage: on the other workers ``stage_run``
yields a :class:`NoRun` (every call a no-op, no sidecar), so they write nothing shared.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reprotrain import timing
from reprotrain.config import Params
from reprotrain.dag import Stage, check_kind, param_values
from reprotrain.errors import ReprotrainError, TrackingError
from reprotrain.tracking import lineage, process, store
from reprotrain.tracking.handle import NoRun, StageRun, store_errors
from reprotrain.tracking.owners import process_tags, reap_dead_runs
from reprotrain.tracking.pipeline import open_parent, param_value
from reprotrain.tracking.tags import (
    TAG_COMMIT,
    TAG_DIRTY,
    TAG_DIRTY_PATHS,
    TAG_ERROR,
    TAG_EXP,
    TAG_NOTE,
    TAG_PIPELINE,
    TAG_REPRODUCES,
    TAG_ROLE,
    TAG_ROOT,
    TAG_STAGE,
)

logger = logging.getLogger(__name__)

MANIFEST = Path("data/prepared/manifest.csv")
# The long, hardware-bound stages: their runs log MLflow system metrics (CPU, memory, GPU).
SYSTEM_METRICS_STAGES = frozenset({"train_head", "finetune", "baseline"})


def _log_datasets(root: Path, deps: Sequence[str]) -> None:
    """Each split of ``data/prepared/manifest.csv`` as an ``mlflow.data`` input (name = split,
    digest = sha256 of the split's rows: which images, labels and content hashes)."""
    manifest = root / MANIFEST
    if not any(d == "data/prepared" or d == MANIFEST.as_posix() for d in deps):
        return
    if not manifest.is_file():
        logger.warning("%s not found: datasets not logged", manifest)
        return
    import warnings

    import mlflow
    import pandas as pd

    df = pd.read_csv(manifest)
    if "split" not in df.columns:
        return
    for split, rows in df.groupby("split", sort=True):
        rows = rows.reset_index(drop=True)
        digest = hashlib.sha256(rows.to_csv(index=False).encode()).hexdigest()[:16]
        with warnings.catch_warnings():  # source-type ambiguity and int-schema hints
            warnings.simplefilter("ignore", UserWarning)
            ds = mlflow.data.from_pandas(
                rows,
                source=str(manifest),
                name=str(split),
                digest=digest,
                targets="label_index" if "label_index" in rows else None,
            )
            mlflow.log_input(ds, context=str(split))


# --------------------------------------------------------------------------- the stage run


def _common_tags(root: Path) -> dict[str, str]:
    """Lineage and ownership tags shared by the stage run and its parent."""
    commit = lineage.git(root, "rev-parse", "HEAD") or "unknown"
    changed = lineage.changed_paths(root, lineage.source_paths(root))
    dirty = commit == "unknown" or changed is None or bool(changed)
    tags = {
        TAG_PIPELINE: lineage.pipeline_key(root, commit),
        TAG_COMMIT: commit,
        "mlflow.source.git.commit": commit,
        TAG_DIRTY: str(dirty).lower(),
        TAG_DIRTY_PATHS: ",".join(changed or [])[:4000],
        TAG_ROOT: str(store.origin(root)),
        **process_tags(),
    }
    exp_name = os.environ.get("DVC_EXP_NAME")
    if exp_name:
        tags[TAG_EXP] = exp_name
        tags["reprotrain.dvc.exp_baseline_rev"] = os.environ.get("DVC_EXP_BASELINE_REV", "")
    reproduces = os.environ.get(lineage.ENV_REPRODUCES)
    if reproduces:
        tags[TAG_REPRODUCES] = reproduces
    return tags


@contextmanager
def stage_run(
    spec: Stage,
    params: Params,
    root: Path,
    *,
    environment: Mapping[str, Any] | None = None,
    chief: bool = True,
) -> Iterator[StageRun]:
    """The MLflow run of the stage ``spec`` declares (:mod:`reprotrain.dag`), nested under its
    pipeline run: it logs exactly the params the spec says the stage reads, lineage (data
    hashes, the upstream sidecars' runs), ``environment`` and the datasets, and writes the
    spec's sidecar on success. FAILED (with the error message) on an exception, KILLED on
    Ctrl-C/SIGTERM; the exception propagates. Timed: its set-up and close count as
    ``mlflow``, the stage's own work inside it as its own phases (``reprotrain.timing``).

    ``chief=False`` (a non-chief worker of a multi-worker run): no run, no sidecar; yields
    a :class:`NoRun`."""
    check_kind(spec, params.data.kind)  # dvc.yaml of another kind: one line, before any run
    if not chief:
        logger.info("MLflow: not the chief worker, the chief records the %s run", spec.name)
        yield NoRun("", spec.name)
        return
    with timing.phase("mlflow"), _tracked(spec, params, Path(root).resolve(), environment) as run:
        with timing.phase("other"):
            yield run
        if spec.sidecar_path is not None:
            lineage.write_sidecar(root / spec.sidecar_path, run.sidecar())


@contextmanager
def _tracked(
    spec: Stage, params: Params, root: Path, environment: Mapping[str, Any] | None
) -> Iterator[StageRun]:
    """Open the run (:func:`_open`), log what it reads, and end it with the right status."""
    from mlflow.entities import RunStatus

    client, run = _open(spec, params, root, environment)
    status = RunStatus.to_string(RunStatus.FAILED)
    previous_term = process.interrupt_on_sigterm()
    try:
        with store_errors(run.uri, f"starting the {spec.name} run"):
            _log_inputs(client, run, spec, params, root)
        logger.info(
            "MLflow: %s run %s (pipeline run %s) in %s",
            spec.name,
            run.run_id,
            run.parent_run_id,
            run.uri,
        )
        yield run
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt as exc:
        status = RunStatus.to_string(RunStatus.KILLED)
        _note_error(client, run, f"interrupted ({exc or 'Ctrl-C'})")
        raise
    except BaseException as exc:
        message = str(exc) if isinstance(exc, ReprotrainError) else f"{type(exc).__name__}: {exc}"
        _note_error(client, run, message)
        raise
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        _finish(client, run, status)


def _open(
    spec: Stage, params: Params, root: Path, environment: Mapping[str, Any] | None
) -> tuple[Any, StageRun]:
    """Connect, reap runs left RUNNING by killed processes, find or open the pipeline run and
    start the stage's run under it with its lineage tags."""
    import mlflow
    from mlflow.entities import RunStatus
    from mlflow.exceptions import MlflowException

    uri = store.store_uri(root, params.tracking.store)
    exp_id = store.connect(uri, params.tracking.experiment)
    client = store.client(uri)
    try:
        store.retrying(reap_dead_runs, client, exp_id)
    except MlflowException as exc:
        logger.warning("could not check for runs left RUNNING by killed processes: %s", exc)
    common = _common_tags(root)
    try:
        parent = store.retrying(open_parent, client, exp_id, spec.name, params, common, root)
    except MlflowException as exc:
        raise TrackingError(f"MLflow store {uri}: {exc.message}") from None
    tags = {**common, **_stage_tags(spec, root, environment)}
    if mlflow.active_run() is not None:  # a leftover from a caller: never nest by accident
        mlflow.end_run()
    sampled = params.tracking.system_metrics and spec.name in SYSTEM_METRICS_STAGES
    try:
        with process.sampling_interval(params.tracking.system_metrics_interval):
            active = store.retrying(
                mlflow.start_run,
                experiment_id=exp_id,
                run_name=spec.name,
                parent_run_id=parent,
                tags=tags,
                log_system_metrics=sampled,
            )
    except MlflowException as exc:
        with contextlib.suppress(MlflowException):
            client.set_terminated(parent, status=RunStatus.to_string(RunStatus.FAILED))
        raise TrackingError(f"MLflow store {uri}: {exc.message}") from None
    run = StageRun(
        active.info.run_id,
        spec.name,
        parent,
        exp_id,
        common.get(TAG_REPRODUCES),
        uri,
        pipeline_id=common[TAG_PIPELINE],
    )
    return client, run


def _stage_tags(spec: Stage, root: Path, environment: Mapping[str, Any] | None) -> dict[str, str]:
    """The stage's own tags: its role and name, the hashes of the data it read, the runs of
    its upstream stages (from their sidecars) and the environment."""
    dvc_yaml = lineage.read_yaml(root / "dvc.yaml")
    return {
        TAG_ROLE: "stage",
        TAG_STAGE: spec.name,
        "reprotrain.dvc.stage": os.environ.get("DVC_STAGE", spec.name),
        **{f"reprotrain.data.{p}": h for p, h in lineage.data_hashes(root, spec.name).items()},
        **lineage.upstream_tags(root, spec.upstream_paths, lineage.stage_outputs(dvc_yaml)),
        **{f"reprotrain.env.{k}": str(v) for k, v in (environment or {}).items()},
    }


def _log_inputs(client: Any, run: StageRun, spec: Stage, params: Params, root: Path) -> None:
    """The params the stage reads, the datasets it was given, and its id on the pipeline row."""
    import mlflow
    from mlflow.exceptions import MlflowException

    logged = param_values(params, spec.params)
    mlflow.log_params({k: param_value(v) for k, v in logged.items()})
    try:
        deps = lineage.stage_deps(lineage.read_yaml(root / "dvc.yaml"), spec.name)
        _log_datasets(root, deps)
    except (MlflowException, OSError, ValueError, KeyError) as exc:
        logger.warning("could not log the dataset manifest: %s", exc)
    client.set_tag(run.parent_run_id, f"reprotrain.run.{spec.name}", run.run_id)


def _note_error(client: Any, run: StageRun, message: str) -> None:
    if process.server_down(run.uri):
        return
    message = message[:4000]
    try:
        client.set_tag(run.run_id, TAG_ERROR, message)
        client.set_tag(run.run_id, TAG_NOTE, f"**{run.stage} failed**: {message}")
        if run.parent_run_id:
            client.set_tag(run.parent_run_id, TAG_ERROR, f"{run.stage}: {message}")
    except Exception as exc:  # the original error matters more; keep it propagating
        logger.warning("could not record the error in MLflow: %s", exc)


def _finish(client: Any, run: StageRun, status: str) -> None:
    """End the stage run and give the parent the same status (never left RUNNING while the
    store answers; a store error here is logged, never raised over the stage's own error)."""
    import mlflow

    down = process.server_down(run.uri) if status != "FINISHED" else None
    with process.no_http_retries() if down else contextlib.nullcontext():
        try:
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run.run_id:
                mlflow.end_run(status=status)  # pops the fluent stack even when it fails
            elif not down:
                store.retrying(client.set_terminated, run.run_id, status=status)
            if run.parent_run_id and not down:
                store.retrying(client.set_terminated, run.parent_run_id, status=status)
        except Exception as exc:
            if status == "FINISHED":
                raise TrackingError(
                    f"MLflow store {run.uri}: could not close the {run.stage} run: {exc}"
                ) from None
            logger.warning("could not end MLflow run %s as %s: %s", run.run_id, status, exc)
