"""Where the MLflow store is, whether it can be used, and calls that survive a busy SQLite file.

Where. ``MLFLOW_TRACKING_URI`` (e.g. a server) wins; otherwise a SQLite store
``<project>/<tracking.store>/mlflow.db`` with artifacts in ``<project>/<tracking.store>/artifacts``,
both absolute. The project is ``$DVC_ROOT`` when DVC sets it: ``dvc exp run --temp/--queue``
runs stages in a temporary copy but sets ``DVC_ROOT`` to the *original* repository (see
``dvc/repo/experiments/queue/base.py``), so every experiment lands in the one project store.

Reachable. A server that does not answer ``/health`` within a few seconds is a
:class:`TrackingError` *before* training starts, not an exception after an hour of training.

Busy. MLflow 3.17's SQLAlchemy store sets ``PRAGMA busy_timeout = 20000`` on every session
(``mlflow/store/db/utils.py``), but SQLite does not wait on a lock when a reading transaction
must be upgraded to a writing one (it answers SQLITE_BUSY at once, to avoid a deadlock), and
the first process to open a fresh file runs the schema migrations while others read it. With
two queued experiments writing one file this surfaces as "database is locked", which MLflow
wraps as ``TEMPORARILY_UNAVAILABLE``. MLflow exposes no connect-args hook for SQLite, so
:func:`retrying` repeats the few store calls we make at run start and end, with backoff, and
:func:`client` opens a SQLite store under a file lock (one migration at a time).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from reprotrain.errors import TrackingError

logger = logging.getLogger(__name__)

#: Telemetry off before mlflow is imported anywhere in this process (and its children).
for _var, _value in (
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ("MLFLOW_ENABLE_TELEMETRY", "false"),
    ("DO_NOT_TRACK", "true"),
    ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
):
    os.environ.setdefault(_var, _value)

HEALTH_TIMEOUT = 5.0
#: The experiment tag the MLflow 3 UI reads to open the runs table in its model-training view
#: (instead of the GenAI overview).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
T = TypeVar("T")


def origin(root: Path) -> Path:
    """The project whose store runs go to: ``$DVC_ROOT`` (the original repository of a
    --temp/--queue experiment) when it holds a dvc.yaml, else ``root``."""
    dvc_root = os.environ.get("DVC_ROOT")
    if dvc_root and (Path(dvc_root) / "dvc.yaml").is_file():
        return Path(dvc_root).resolve()
    return Path(root).resolve()


def default_uri(root: Path, store: str = "mlruns") -> str:
    """The SQLite URI of the project's own store (``store`` relative to :func:`origin`)."""
    return f"sqlite:///{origin(root) / store / 'mlflow.db'}"


def store_uri(root: Path, store: str = "mlruns") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else :func:`default_uri`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri(root, store)


def artifact_location(uri: str) -> str | None:
    """Artifact root for new experiments: ``<store>/artifacts`` next to a SQLite file; None
    (the server's choice) for a server."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
    return None


def server_problem(uri: str, timeout: float = HEALTH_TIMEOUT) -> str | None:
    """Why the HTTP(S) tracking server at ``uri`` cannot be used (``GET /health`` is not 200
    within ``timeout`` s), or None when it answers or ``uri`` is not a server."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            return None if resp.status == 200 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


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
    problem = server_problem(uri, timeout)
    if problem is not None:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({problem}); start it or unset "
            "MLFLOW_TRACKING_URI to use the project's SQLite store"
        )


def is_busy(exc: BaseException) -> bool:
    """A transient SQLite lock (MLflow's TEMPORARILY_UNAVAILABLE, or the raw message)."""
    code = getattr(exc, "error_code", "")
    text = str(exc).lower()
    return code == "TEMPORARILY_UNAVAILABLE" or "database is locked" in text


def retrying(fn: Callable[..., T], *args: Any, attempts: int = 8, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, repeated with jittered exponential backoff (0.2 s … ~10 s)
    while it fails with a busy SQLite file; any other error, or the last one, propagates."""
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt == attempts or not is_busy(exc):
                raise
            delay = min(10.0, 0.2 * 2 ** (attempt - 1)) * (0.5 + random.random())
            logger.info("MLflow store busy (%s); retrying in %.1f s", exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _first_open_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` beside a SQLite store while MLflow opens it.

    Why: the first process to open a fresh file runs MLflow's schema migrations (alembic);
    two stage processes doing it at once fail with "table ... already exists" or see a
    half-migrated schema. Opening an existing store takes milliseconds, so serialising the
    open costs nothing.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock = Path(uri[len("sqlite:///") :]).with_name(".mlflow.db.open-lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def client(uri: str) -> Any:
    """An ``MlflowClient`` for tracking and registry at ``uri``, also made MLflow's default.

    Opening a SQLite store runs SQLAlchemy at once: a damaged file raises a raw
    ``sqlalchemy.exc.DatabaseError`` here, which becomes one TrackingError line (with the cause).
    """
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with _first_open_lock(uri):
            return retrying(mlflow.MlflowClient, uri, registry_uri=uri)
    except Exception as exc:
        cause = " ".join(str(getattr(exc, "message", exc)).split())[:300]
        raise TrackingError(
            f"MLflow store {uri} cannot be opened ({type(exc).__name__}: {cause}); restore it "
            "from a backup or point tracking.store / MLFLOW_TRACKING_URI at a working store"
        ) from None


def connect(uri: str, experiment: str) -> str:
    """Point MLflow at ``uri`` and return the id of ``experiment`` (created with the project's
    artifact root if new; tagged as a model-training experiment for the UI). Any failure is a
    TrackingError."""
    import mlflow
    from mlflow.exceptions import MlflowException

    check_reachable(uri)
    mlf = client(uri)

    def get_or_create() -> str:
        exp = mlf.get_experiment_by_name(experiment)
        if exp is None:
            try:
                return mlf.create_experiment(
                    experiment,
                    artifact_location=artifact_location(uri),
                    tags=dict([EXPERIMENT_KIND]),
                )
            except MlflowException as exc:  # created concurrently by another stage/worker
                exp = mlf.get_experiment_by_name(experiment)
                if exp is None:
                    raise exc from None
        if exp.lifecycle_stage == "deleted":
            mlf.restore_experiment(exp.experiment_id)
        if EXPERIMENT_KIND[0] not in exp.tags:  # keep a kind the user chose
            mlf.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id

    try:
        exp_id = retrying(get_or_create)
        mlflow.set_experiment(experiment_id=exp_id)
    except MlflowException as exc:
        raise TrackingError(f"MLflow store {uri}: {exc.message}") from None
    return exp_id
