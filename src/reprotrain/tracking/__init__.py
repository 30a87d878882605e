"""Everything MLflow (the only module besides ``ui``/``reproduce`` that imports mlflow).

Stages use it like this::

    with tracking.stage_run("train_head", params, sections=("seed", "model", ...),
                            root=root, upstream=[paths.PREPARE_RUN],
                            sidecar=paths.HEAD_RUN, environment=runtime.environment_info())
    as run:
        ...
        run.log_metrics({"loss": 0.3}, step=epoch)
        run.log_artifact(paths.HEAD_MODEL)

Store. ``MLFLOW_TRACKING_URI`` (e.g. a server) wins; otherwise a SQLite store
``<project>/<tracking.store>/mlflow.db`` with artifacts in ``<project>/<tracking.store>/artifacts``,
both absolute. The project is ``$DVC_ROOT`` when DVC sets it: ``dvc exp run --temp/--queue``
runs stages in a temporary copy but sets ``DVC_ROOT`` to the *original* repository (see
``dvc/repo/experiments/queue/base.py``), so every experiment lands in the one project store.
A server that does not answer ``/health`` within a few seconds is a :class:`TrackingError`
*before* training starts, not an exception after an hour of training.

One row per pipeline execution. DVC runs every stage as its own process, so the stages find
their common parent run by a tag: ``reprotrain.pipeline_id`` = hash of (git HEAD, params.yaml,
the content of every dvc.yaml dependency that no stage produces, i.e. code and config,
``$DVC_EXP_NAME``, and ``$REPROTRAIN_REPRODUCES``). The first stage that runs creates the parent
run ("pipeline", all params flattened); later stages of the same execution nest under it
(``mlflow.parentRunId``). If the newest parent with that id already holds a run of the same
stage, this is a new execution of an unchanged configuration (``dvc repro -f``) and a new
parent is created. The parent is RUNNING only while one of its stages runs and then takes the
stage's final status, so it is never left RUNNING between stages. ``evaluate`` logs the final
test metrics into it with :meth:`StageRun.log_pipeline_metrics`; stage-level final metrics are
copied into it as ``<stage>.<metric>``.

Lineage tags on every stage run: git commit and dirty flag (code/config only: dvc.lock and
outputs change during a repro and do not count), the DVC stage, ``DVC_EXP_NAME``, the md5 that
dvc.lock records for each input produced by another stage (``reprotrain.data.<path>``), the
run ids of upstream stages from their ``*.run.json`` sidecars (so a cached stage is still
linked; ``missing`` if there is none), and the environment (versions, devices, CUDA, seed).
The pipeline row also keeps the exact ``params.yaml`` as an artifact (``reproduce`` restores
it for runs made with uncommitted params, e.g. ``dvc exp run -S``).

Endings: an exception ends the stage run (and its parent) FAILED with the message in the
``reprotrain.error`` tag and the run's note; Ctrl-C or SIGTERM ends them KILLED; only
SIGKILL can leave a run RUNNING. Datasets: the splits of ``data/prepared/manifest.csv`` are
logged as ``mlflow.data`` inputs of every stage that reads ``data/prepared``.

Documented environment: ``MLFLOW_TRACKING_URI`` (store override), ``DVC_ROOT``,
``DVC_EXP_NAME``, ``DVC_EXP_BASELINE_REV``, ``DVC_STAGE`` (set by DVC), and
``REPROTRAIN_REPRODUCES`` (set by ``reprotrain reproduce``). Telemetry is switched off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reprotrain.config import Params, flatten
from reprotrain.errors import ModelError, TrackingError
from reprotrain.evaluation import gate as promotion

logger = logging.getLogger(__name__)

#: Telemetry off before mlflow is imported anywhere in this process (and its children).
for _var, _value in (
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ("MLFLOW_ENABLE_TELEMETRY", "false"),
    ("DO_NOT_TRACK", "true"),
    ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
):
    os.environ.setdefault(_var, _value)

PIPELINE_RUN_NAME = "pipeline"
TAG_STAGE = "reprotrain.stage"
TAG_PIPELINE = "reprotrain.pipeline_id"
TAG_ROLE = "reprotrain.role"  # "pipeline" (parent) or "stage"
TAG_ROOT = "reprotrain.project_root"
TAG_COMMIT = "reprotrain.git.commit"
TAG_DIRTY = "reprotrain.git.dirty"
TAG_DIRTY_PATHS = "reprotrain.git.dirty_paths"
#: The parent run keeps the exact params.yaml as an artifact (reproduce restores it).
PARAMS_ARTIFACT = "params.yaml"
TAG_EXP = "reprotrain.dvc.exp_name"
TAG_REPRODUCES = "reprotrain.reproduces"
TAG_ERROR = "reprotrain.error"
VTAG_ACCURACY = "reprotrain.test_accuracy"
VTAG_DIGEST = "reprotrain.test_digest"
VTAG_LABELS = "reprotrain.labels"
VTAG_IMAGE_SIZE = "reprotrain.image_size"
VTAG_RUN = "reprotrain.run_id"
#: Set by ``reprotrain reproduce`` for the pipeline it reruns: tags the runs and keeps the
#: registry aliases where they are (a rerun must not move ``champion``).
ENV_REPRODUCES = "REPROTRAIN_REPRODUCES"
HEALTH_TIMEOUT = 5.0
MANIFEST = Path("data/prepared/manifest.csv")


# --------------------------------------------------------------------------- store


def store_root(root: Path) -> Path:
    """The project whose store runs go to: ``$DVC_ROOT`` (original repo of a --temp/--queue
    experiment, set by DVC for every stage command) when it exists, else ``root``."""
    dvc_root = os.environ.get("DVC_ROOT")
    if dvc_root and (Path(dvc_root) / "dvc.yaml").is_file():
        return Path(dvc_root).resolve()
    return Path(root).resolve()


def default_store(root: Path, store: str = "mlruns") -> Path:
    """Absolute directory of the project's SQLite store and artifacts."""
    path = Path(store)
    return path if path.is_absolute() else store_root(root) / path


def default_uri(root: Path, store: str = "mlruns") -> str:
    return f"sqlite:///{default_store(root, store) / 'mlflow.db'}"


def tracking_uri(params: Params, root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's SQLite store (absolute path)."""
    return project_uri(root, params.tracking.store)


def project_uri(root: Path, store: str = "mlruns") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite store of the project at ``root``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return default_uri(root, store)


def artifact_location(uri: str) -> str | None:
    """Artifact root for new experiments: ``<store>/artifacts`` next to a SQLite file; None
    (the server's choice) for a server."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
    return None


def check_reachable(uri: str, timeout: float = HEALTH_TIMEOUT) -> None:
    """Fail fast (TrackingError) when the store cannot be used.

    SQLite: the directory must be creatable. HTTP(S): ``GET /health`` must answer 200 within
    ``timeout`` seconds. Other schemes (databricks, ...) are left to MLflow.
    """
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"cannot create the MLflow store {db.parent}: {exc}") from None
        return
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                if resp.status == 200:
                    return
                problem = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            problem = str(getattr(exc, "reason", exc))
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({problem}); start it or unset "
            "MLFLOW_TRACKING_URI to use the project's SQLite store"
        )


def connect(uri: str, experiment: str) -> str:
    """Point MLflow at ``uri`` and return the id of ``experiment`` (created with the project's
    artifact root if new). Any failure is a TrackingError."""
    import mlflow
    from mlflow.exceptions import MlflowException

    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    try:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                exp_id = client.create_experiment(
                    experiment, artifact_location=artifact_location(uri)
                )
            except MlflowException:  # created concurrently by another stage/worker
                exp = client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            exp_id = exp.experiment_id
        mlflow.set_experiment(experiment_id=exp_id)
    except MlflowException as exc:
        raise TrackingError(f"MLflow store {uri}: {exc.message}") from None
    return exp_id


# --------------------------------------------------------------------------- lineage


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _entry_paths(entries: Sequence[Any] | None) -> list[str]:
    out = []
    for entry in entries or ():
        out.append(next(iter(entry)) if isinstance(entry, dict) else str(entry))
    return out


def stage_outputs(dvc_yaml: Mapping[str, Any]) -> dict[str, str]:
    """``{output path: producing stage}`` over outs, metrics and plots of every stage."""
    produced: dict[str, str] = {}
    for name, stage in (dvc_yaml.get("stages") or {}).items():
        for kind in ("outs", "metrics", "plots"):
            for p in _entry_paths(stage.get(kind)):
                produced[p.rstrip("/")] = name
    return produced


def stage_deps(dvc_yaml: Mapping[str, Any], stage: str) -> list[str]:
    st = (dvc_yaml.get("stages") or {}).get(stage) or {}
    return [p.rstrip("/") for p in _entry_paths(st.get("deps"))]


def data_hashes(root: Path, stage: str) -> dict[str, str]:
    """md5 that dvc.lock records for each input of ``stage`` that another stage produced.

    The producer's ``outs`` entry is read (it is written when the producer finishes), so the
    hash is that of the data this run reads, the same string ``dvc.lock`` shows.
    """
    dvc_yaml = _read_yaml(root / "dvc.yaml")
    lock = _read_yaml(root / "dvc.lock").get("stages") or {}
    produced = stage_outputs(dvc_yaml)
    out: dict[str, str] = {}
    for dep in stage_deps(dvc_yaml, stage):
        producer = produced.get(dep)
        if producer is None or producer == stage:
            continue
        md5 = "missing"
        for entry in (lock.get(producer) or {}).get("outs") or ():
            if str(entry.get("path", "")).rstrip("/") == dep:
                md5 = str(
                    entry.get("md5") or entry.get("etag") or entry.get("checksum") or "missing"
                )
        out[dep] = md5
    return out


def source_paths(root: Path) -> list[str]:
    """dvc.yaml, params.yaml and every dependency no stage produces (code and config)."""
    dvc_yaml = _read_yaml(root / "dvc.yaml")
    produced = stage_outputs(dvc_yaml)
    deps = {dep for name in (dvc_yaml.get("stages") or {}) for dep in stage_deps(dvc_yaml, name)}
    return sorted({"dvc.yaml", "params.yaml"} | {d for d in deps if d not in produced})


def _digest_paths(root: Path, rels: Sequence[str]) -> str:
    """sha256 over the names and bytes of files (directories walked, caches skipped)."""
    h = hashlib.sha256()
    for rel in rels:
        path = root / rel
        files = (
            sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
            if path.is_dir()
            else [path]
        )
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0")
            h.update(f.read_bytes() if f.is_file() else b"<missing>")
            h.update(b"\0")
    return h.hexdigest()


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def changed_paths(root: Path, paths: Sequence[str]) -> list[str] | None:
    """Those of ``paths`` that differ from HEAD or are untracked (None: not a git repo)."""
    try:
        proc = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all", "--", *paths],
            cwd=root, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return sorted({line[3:].strip().strip('"') for line in proc.stdout.splitlines() if line})


def git_state(root: Path, paths: Sequence[str] = ()) -> tuple[str, bool]:
    """(HEAD commit or "unknown", whether ``paths`` differ from HEAD or are untracked)."""
    commit = _git(root, "rev-parse", "HEAD") or "unknown"
    changed = changed_paths(root, paths) if paths else []
    dirty = bool(changed) if changed is not None else True
    return commit, dirty or commit == "unknown"


def pipeline_key(root: Path, commit: str, env: Mapping[str, str] | None = None) -> str:
    """Identity of one pipeline configuration (see the module docstring)."""
    env = os.environ if env is None else env
    h = hashlib.sha256()
    for part in (
        commit,
        _digest_paths(root, source_paths(root)),
        env.get("DVC_EXP_NAME", ""),
        env.get(ENV_REPRODUCES, ""),
    ):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """A ``*.run.json`` sidecar, or None when it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("run_id") else None


def upstream_tags(
    root: Path, upstream: Sequence[Path], producers: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``reprotrain.upstream.<stage>`` = run id, or ``missing`` when the sidecar is absent
    (the stage is named by dvc.yaml's ``producers`` of the sidecar path, else by its file)."""
    producers = producers or {}
    tags: dict[str, str] = {}
    for rel in upstream:
        data = read_sidecar(root / rel)
        fallback = producers.get(Path(rel).as_posix(), Path(rel).name.removesuffix(".run.json"))
        if data is None:
            tags[f"reprotrain.upstream.{fallback}"] = "missing"
        else:
            tags[f"reprotrain.upstream.{data.get('stage') or fallback}"] = str(data["run_id"])
    return tags


def _all_params(params: Params) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in type(params).__dataclass_fields__:
        out.update(flatten(getattr(params, f), f))
    return {k: _param_value(v) for k, v in out.items()}


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return text[:6000]


# --------------------------------------------------------------------------- runs


@dataclass
class StageRun:
    """A handle on the active MLflow run of one stage (and its pipeline parent)."""

    run_id: str
    stage: str = ""
    parent_run_id: str | None = None
    experiment_id: str | None = None
    _reproduces: str | None = field(default=None, repr=False)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Per-epoch (``step``) or final metrics; final ones are also copied into the
        pipeline row as ``<stage>.<name>`` so executions compare side by side."""
        import mlflow

        values = {_metric_key(k): float(v) for k, v in metrics.items()}
        mlflow.log_metrics(values, step=step, run_id=self.run_id)
        if step is None and self.parent_run_id and self.stage:
            mlflow.MlflowClient().log_batch(
                self.parent_run_id,
                metrics=_metric_list({f"{self.stage}.{k}": v for k, v in values.items()}),
            )

    def log_pipeline_metrics(self, metrics: Mapping[str, float]) -> None:
        """Metrics of the whole execution (evaluate: the final test metrics), logged both on
        this run and, un-prefixed, on the pipeline row."""
        import mlflow

        values = {_metric_key(k): float(v) for k, v in metrics.items()}
        mlflow.log_metrics(values, run_id=self.run_id)
        if self.parent_run_id:
            mlflow.MlflowClient().log_batch(self.parent_run_id, metrics=_metric_list(values))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        import mlflow

        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path or path.name)
        elif path.exists():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)
        else:
            logger.warning("artifact %s does not exist; not logged", path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        import mlflow

        mlflow.log_dict(dict(data), artifact_file)


def _metric_key(key: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space / : only.
    return "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in str(key))


def _metric_list(values: Mapping[str, float]) -> list[Any]:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in values.items()]


def _find_parent(client: Any, exp_id: str, pipeline_id: str, stage: str) -> str | None:
    """The newest parent with ``pipeline_id`` that has no run of ``stage`` yet."""
    parents = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{TAG_PIPELINE}` = '{pipeline_id}' and tags.`{TAG_ROLE}` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        return None
    parent = parents[0].info.run_id
    siblings = client.search_runs(
        [exp_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and tags.`{TAG_STAGE}` = '{stage}'",
        max_results=1,
    )
    return None if siblings else parent


def _open_parent(
    client: Any,
    exp_id: str,
    pipeline_id: str,
    stage: str,
    params: Params,
    tags: Mapping[str, str],
    root: Path,
) -> str:
    """Find or create this execution's parent run and mark it RUNNING for the stage."""
    from mlflow.entities import Param, RunTag

    parent = _find_parent(client, exp_id, pipeline_id, stage)
    if parent is None:
        run = client.create_run(
            exp_id,
            run_name=PIPELINE_RUN_NAME,
            tags={**tags, TAG_ROLE: "pipeline", TAG_PIPELINE: pipeline_id},
        )
        parent = run.info.run_id
        items = [Param(k, v) for k, v in _all_params(params).items()]
        for i in range(0, len(items), 100):
            client.log_batch(parent, params=items[i : i + 100])
        if (root / PARAMS_ARTIFACT).is_file():
            client.log_artifact(parent, str(root / PARAMS_ARTIFACT))
        logger.info("MLflow: new pipeline run %s (pipeline id %s)", parent, pipeline_id)
    else:
        client.update_run(parent, status="RUNNING")
    client.log_batch(parent, tags=[RunTag(f"reprotrain.run.{stage}", "pending")])
    return parent


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
                rows, source=str(manifest), name=str(split), digest=digest,
                targets="label_index" if "label_index" in rows else None,
            )  # fmt: skip
            mlflow.log_input(ds, context=str(split))


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
    """Start an MLflow run for ``stage`` nested under its pipeline run; log params, lineage,
    environment and datasets; write ``sidecar`` on success. FAILED (with the error message)
    on an exception, KILLED on Ctrl-C; the exception propagates. Never leaves a run RUNNING."""
    import mlflow
    from mlflow.entities import RunStatus
    from mlflow.exceptions import MlflowException

    root = Path(root).resolve()
    uri = tracking_uri(params, root)
    exp_id = connect(uri, params.tracking.experiment)
    client = mlflow.MlflowClient(uri, registry_uri=uri)

    sources = source_paths(root)
    commit = _git(root, "rev-parse", "HEAD") or "unknown"
    changed = changed_paths(root, sources)
    dirty = commit == "unknown" or changed is None or bool(changed)
    pid = pipeline_key(root, commit)
    exp_name = os.environ.get("DVC_EXP_NAME")
    reproduces = os.environ.get(ENV_REPRODUCES)
    common = {
        TAG_PIPELINE: pid,
        TAG_COMMIT: commit,
        "mlflow.source.git.commit": commit,
        TAG_DIRTY: str(dirty).lower(),
        TAG_DIRTY_PATHS: ",".join(changed or [])[:4000],
        TAG_ROOT: str(store_root(root)),
    }
    if exp_name:
        common[TAG_EXP] = exp_name
        common["reprotrain.dvc.exp_baseline_rev"] = os.environ.get("DVC_EXP_BASELINE_REV", "")
    if reproduces:
        common[TAG_REPRODUCES] = reproduces
    try:
        parent = _open_parent(client, exp_id, pid, stage, params, common, root)
    except MlflowException as exc:
        raise TrackingError(f"MLflow store {uri}: {exc.message}") from None

    dvc_yaml = _read_yaml(root / "dvc.yaml")
    tags = {
        **common,
        TAG_ROLE: "stage",
        TAG_STAGE: stage,
        "reprotrain.dvc.stage": os.environ.get("DVC_STAGE", stage),
        **{f"reprotrain.data.{p}": h for p, h in data_hashes(root, stage).items()},
        **upstream_tags(root, upstream, stage_outputs(dvc_yaml)),
        **{f"reprotrain.env.{k}": str(v) for k, v in (environment or {}).items()},
    }
    if mlflow.active_run() is not None:  # a leftover from a caller: never nest by accident
        mlflow.end_run()
    try:
        active = mlflow.start_run(
            experiment_id=exp_id, run_name=stage, parent_run_id=parent, tags=tags
        )
    except MlflowException as exc:
        client.set_terminated(parent, status=RunStatus.to_string(RunStatus.FAILED))
        raise TrackingError(f"MLflow store {uri}: {exc.message}") from None
    run = StageRun(active.info.run_id, stage, parent, exp_id, reproduces)
    status = RunStatus.to_string(RunStatus.FAILED)
    previous_term = _interrupt_on_sigterm()
    try:
        logged: dict[str, Any] = {}
        for section in sections:
            logged.update(flatten(getattr(params, section), section))
        mlflow.log_params({k: _param_value(v) for k, v in logged.items()})
        try:
            _log_datasets(root, stage_deps(dvc_yaml, stage))
        except Exception as exc:
            logger.warning("could not log the dataset manifest: %s", exc)
        client.set_tag(parent, f"reprotrain.run.{stage}", run.run_id)
        logger.info("MLflow: %s run %s (pipeline run %s) in %s", stage, run.run_id, parent, uri)
        yield run
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt as exc:
        status = RunStatus.to_string(RunStatus.KILLED)
        _note_error(client, run.run_id, parent, stage, f"interrupted ({exc or 'Ctrl-C'})")
        raise
    except BaseException as exc:
        _note_error(client, run.run_id, parent, stage, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        _finish(client, run.run_id, parent, status)
    if sidecar is not None:
        path = root / sidecar
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {"run_id": run.run_id, "stage": stage, "pipeline_run_id": parent,
                "pipeline_id": pid, "experiment_id": exp_id}  # fmt: skip
        path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _interrupt_on_sigterm() -> Any:
    """Treat SIGTERM (``kill``, ``dvc queue kill``, a CI timeout) like Ctrl-C while a stage
    runs, so the run ends KILLED instead of staying RUNNING. Returns the previous handler
    (None when not in the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


def _note_error(client: Any, run_id: str, parent: str, stage: str, message: str) -> None:
    message = message[:4000]
    try:
        client.set_tag(run_id, TAG_ERROR, message)
        client.set_tag(run_id, "mlflow.note.content", f"**{stage} failed**: {message}")
        client.set_tag(parent, TAG_ERROR, f"{stage}: {message}")
    except Exception as exc:
        logger.warning("could not record the error in MLflow: %s", exc)


def _finish(client: Any, run_id: str, parent: str, status: str) -> None:
    """End the stage run and give the parent the same status (never left RUNNING)."""
    import mlflow

    try:
        if mlflow.active_run() is not None and mlflow.active_run().info.run_id == run_id:
            mlflow.end_run(status=status)
        else:
            client.set_terminated(run_id, status=status)
    finally:
        client.set_terminated(parent, status=status)


# --------------------------------------------------------------------------- registry


def _signature(image_size: int, num_classes: int) -> Any:
    """Raw 0–255 RGB float32 images in, class probabilities out (what serving sends)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype("float32"), (-1, image_size, image_size, 3), "image")]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, num_classes), "probabilities")]),
    )


def _requirements() -> list[str]:
    """Pinned serving requirements from the installed distributions. Passing them skips
    MLflow's inference, which loads the model in a subprocess (~15 s of TensorFlow import)."""
    import importlib.metadata as md

    reqs = []
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "mlflow", "numpy"):
        try:
            reqs.append(f"{dist}=={md.version(dist)}")
        except md.PackageNotFoundError:
            continue
    return reqs


def _version_accuracy(mv: Any) -> float | None:
    try:
        return float(mv.tags.get(VTAG_ACCURACY))
    except (TypeError, ValueError):
        return None


def _find_keras(directory: Path) -> Path:
    found = sorted(Path(directory).rglob("*.keras"))
    if not found:
        raise ModelError(f"no .keras file in the downloaded MLflow model {directory}")
    return found[0]


def register_and_promote(
    run: StageRun,
    model_path: Path,
    *,
    name: str,
    accuracy: float,
    test_digest: str,
    rescore: Callable[[Path], float],
    min_accuracy: float,
    min_improvement: float,
    image_size: int,
    labels: list[str],
    artifact_name: str = "model",
) -> dict[str, Any]:
    """Log ``model_path`` as an MLflow Keras model on ``run``, register a new version of
    ``name`` and move the ``champion`` alias to it if it passes the gate, else ``challenger``.

    The gate (``promotion.decide``) compares accuracies on the same test set: when the
    champion was scored on another test set (``test_digest`` differs) its model is downloaded
    and ``rescore(path_to_keras)`` measures it on the current one first.

    Why a signature and no input example: with MLflow 3.17, ``mlflow.keras.log_model(...,
    input_example=...)`` fails with FileNotFoundError while saving the example; the signature
    documents the input the same way (and is what ``mlflow models serve`` validates against).
    """
    import keras
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    model = keras.saving.load_model(model_path, compile=False)
    info = mlflow.keras.log_model(
        model,
        name=artifact_name,
        signature=_signature(image_size, len(labels)),
        pip_requirements=_requirements(),
    )
    run.log_dict({"labels": list(labels)}, "labels.json")
    tags = {
        VTAG_ACCURACY: repr(float(accuracy)),
        VTAG_DIGEST: test_digest,
        VTAG_LABELS: json.dumps(list(labels)),
        VTAG_IMAGE_SIZE: str(image_size),
        VTAG_RUN: run.run_id,
    }
    mv = mlflow.register_model(info.model_uri, name, tags=tags)
    version = int(mv.version)

    champion = None
    try:
        champion = client.get_model_version_by_alias(name, promotion.CHAMPION)
    except MlflowException:
        champion = None
    champion_accuracy: float | None = None
    champion_version: int | None = None
    if champion is not None and int(champion.version) != version:
        champion_version = int(champion.version)
        champion_accuracy = _version_accuracy(champion)
        if champion.tags.get(VTAG_DIGEST) != test_digest or champion_accuracy is None:
            local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{champion_version}"))
            champion_accuracy = float(rescore(_find_keras(local)))
            old = f"{champion.tags.get(VTAG_DIGEST)}:{champion.tags.get(VTAG_ACCURACY)}"
            for k, v in {
                VTAG_ACCURACY: repr(champion_accuracy),
                VTAG_DIGEST: test_digest,
                "reprotrain.rescored_from": old,
            }.items():
                client.set_model_version_tag(name, str(champion_version), k, v)
            logger.info(
                "champion v%d re-scored on the current test set: %.4f",
                champion_version,
                champion_accuracy,
            )

    decision = promotion.decide(accuracy, champion_accuracy, min_accuracy, min_improvement)
    alias: str | None = decision.alias
    reason = decision.reason
    promoted = decision.promoted
    exp_name = os.environ.get("DVC_EXP_NAME")
    if run._reproduces:
        alias, promoted = None, False
        reason = f"reproduction of run {run._reproduces}: registry aliases left unchanged"
    elif exp_name and decision.promoted:
        # A DVC experiment is not on any branch, and queued experiments run in parallel:
        # letting them race for `champion` would serve a model nobody committed. The gate's
        # verdict is kept in the reason; promotion happens when the experiment is applied,
        # committed and evaluated again (`dvc repro --force -s evaluate`).
        alias, promoted = promotion.CHALLENGER, False
        reason = (
            f"DVC experiment {exp_name}: the gate would promote ({decision.reason}), but "
            "experiments never take the champion alias; apply and commit it, then run "
            "`dvc repro --force -s evaluate`"
        )
        client.set_registered_model_alias(name, alias, str(version))
    else:
        client.set_registered_model_alias(name, decision.alias, str(version))
    client.set_model_version_tag(name, str(version), "reprotrain.promotion_reason", reason)
    result = {
        "promoted": promoted,
        "alias": alias,
        "version": version,
        "reason": reason,
        "champion_version": champion_version,
        "champion_accuracy": champion_accuracy,
        "accuracy": float(accuracy),
        "registered_model": name,
        "model_uri": f"models:/{name}/{version}",
    }
    run.set_tags(
        {
            "reprotrain.registry.model": name,
            "reprotrain.registry.version": version,
            "reprotrain.registry.alias": alias or "none",
            "reprotrain.promotion.promoted": str(promoted).lower(),
            "reprotrain.promotion.reason": reason,
        }
    )
    if run.parent_run_id:
        for key, value in {
            "reprotrain.registry.version": str(version),
            "reprotrain.registry.alias": alias or "none",
            "reprotrain.promotion.reason": reason,
        }.items():
            client.set_tag(run.parent_run_id, key, value)
    logger.info("registry: %s v%d → %s (%s)", name, version, alias or "no alias", reason)
    return result


def _registry_client(root: Path, store: str) -> Any:
    import mlflow

    uri = project_uri(Path(root), store)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(uri, registry_uri=uri)


def _model_version(client: Any, uri: str) -> Any:
    """``models:/NAME@alias`` or ``models:/NAME/VERSION`` → ModelVersion (TrackingError)."""
    from mlflow.exceptions import MlflowException

    if not uri.startswith("models:/"):
        raise TrackingError(f"{uri!r} is not a models:/NAME@alias or models:/NAME/VERSION URI")
    body = uri[len("models:/") :].strip("/")
    try:
        if "@" in body:
            name, alias = body.rsplit("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, version = body.rpartition("/")
        if not name or not version.isdigit():
            raise TrackingError(f"{uri!r}: expected models:/NAME@alias or models:/NAME/VERSION")
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise TrackingError(f"{uri}: {exc.message}") from None


def resolve_model(uri: str, root: Path, store: str = "mlruns") -> Path:
    """A local ``.keras`` file for a registry URI, downloaded into
    ``<root>/.reprotrain/registry/<name>/<version>`` (reused when already there)."""
    import mlflow

    client = _registry_client(root, store)
    mv = _model_version(client, uri)
    dest = Path(root) / ".reprotrain" / "registry" / mv.name / str(mv.version)
    existing = sorted(dest.rglob("*.keras")) if dest.is_dir() else []
    if existing:
        return existing[0]
    dest.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(
        f"models:/{mv.name}/{mv.version}", dst_path=str(dest)
    )
    return _find_keras(Path(local))


def resolve_labels(uri: str, root: Path, store: str = "mlruns") -> list[str] | None:
    """Class names stored with a registered version (None if it has none)."""
    mv = _model_version(_registry_client(root, store), uri)
    raw = mv.tags.get(VTAG_LABELS)
    try:
        labels = json.loads(raw) if raw else None
    except ValueError:
        return None
    return [str(x) for x in labels] if isinstance(labels, list) else None
