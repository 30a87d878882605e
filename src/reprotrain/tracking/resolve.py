"""Resolving ``models:/`` and ``runs:/`` URIs to local ``.keras`` files, through a
download cache that is never read half-written.

Why a module of its own: ``predict``, the API and the registration of a candidate need a
registered model *as a file*; that is downloading and caching, not the registry's rules
about who may move ``champion`` (:mod:`reprotrain.tracking.registry`, which re-exports
these names).

The download cache (:func:`resolve_model`) is keyed by the store URI as well as the
version, fills a temporary directory that is renamed into place only once complete, and
reuses a file only when its size and sha256 match the record written with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reprotrain.errors import ModelError, TrackingError
from reprotrain.fsio import atomic_write_json, file_sha256
from reprotrain.tracking import store
from reprotrain.tracking.tags import VTAG_LABELS

logger = logging.getLogger(__name__)


def find_keras(directory: Path) -> Path:
    directory = Path(directory)
    if directory.is_file() and directory.suffix == ".keras":
        return directory
    found = sorted(directory.rglob("*.keras"))
    if not found:
        raise ModelError(f"no .keras file in the downloaded MLflow artifact {directory}")
    return found[0]


def _model_version(client: Any, uri: str) -> Any:
    """``models:/NAME@alias`` or ``models:/NAME/VERSION`` → ModelVersion (TrackingError)."""
    from mlflow.exceptions import MlflowException

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


def _check_scheme(uri: str) -> None:
    if not uri.startswith(("models:/", "runs:/")):
        raise TrackingError(
            f"{uri!r} is not a models:/NAME@alias, models:/NAME/VERSION or runs:/RUN_ID/PATH URI"
        )


#: The record written into a cache entry once its download is complete.
CACHE_RECORD = ".reprotrain-download.json"
#: A temporary download directory older than this is a killed download's leftover.
STALE_DOWNLOAD_S = 3600.0


def cache_dir(root: Path, uri: str, *key: str) -> Path:
    """``<root>/.reprotrain/registry/<store>/<key...>``: the store URI is part of the key, so
    two stores that both hold ``NAME`` v1 (or one run id) never share a cached file."""
    store_key = hashlib.sha256(uri.encode("utf-8")).hexdigest()[:16]
    return Path(root) / ".reprotrain" / "registry" / store_key / Path(*key)


def cached_keras(entry: Path) -> Path | None:
    """The ``.keras`` file of a complete cache entry, checked against its record (size and
    sha256); None when there is none. An entry without a valid record, or whose file does
    not match it (a download killed by an older version, a file changed since), is removed
    with a warning, so the caller downloads it again instead of loading half a model."""
    if not entry.exists():
        return None
    try:
        record = json.loads((entry / CACHE_RECORD).read_text(encoding="utf-8"))
        path = entry / record["file"]
        if path.stat().st_size == int(record["size"]) and file_sha256(path) == record["sha256"]:
            return path
        problem = f"{record['file']} does not match its recorded size and sha256"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = f"no complete download record ({type(exc).__name__}: {exc})"
    logger.warning("registry cache %s: %s; downloading it again", entry, problem)
    shutil.rmtree(entry, ignore_errors=True)
    return None


def _remove_stale_downloads(parent: Path) -> None:
    """Delete temporary download directories a killed process left (older than an hour:
    a younger one may be another process's download in progress)."""
    now = datetime.now(UTC).timestamp()
    for tmp in parent.glob(".*.download"):
        try:
            if now - tmp.stat().st_mtime > STALE_DOWNLOAD_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            continue


def _download(artifact_uri: str, store_uri: str, entry: Path, what: str) -> Path:
    """Download from ``store_uri`` (not MLflow's global URIs: the key names that store) into
    a temporary directory beside ``entry``, record the ``.keras`` file's size and sha256 in
    it, then rename it to ``entry``: a kill leaves only a temporary directory, never an
    entry that looks complete. A concurrent download that renamed its own copy first wins;
    ours is discarded."""
    import mlflow
    from mlflow.exceptions import MlflowException

    entry.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_downloads(entry.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".download", dir=entry.parent))
    try:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri, dst_path=str(tmp), tracking_uri=store_uri, registry_uri=store_uri
            )
        except (MlflowException, OSError) as exc:
            raise TrackingError(f"cannot download {what}: {getattr(exc, 'message', exc)}") from None
        keras_file = find_keras(Path(local))
        relative = keras_file.relative_to(tmp).as_posix()
        record = {
            "file": relative,
            "size": keras_file.stat().st_size,
            "sha256": file_sha256(keras_file),
            "source": artifact_uri,
        }
        atomic_write_json(tmp / CACHE_RECORD, record)
        try:
            tmp.rename(entry)
        except OSError:
            found = cached_keras(entry)  # another process got there first
            if found is None:
                raise
            return found
        return entry / relative
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left after the rename


def resolve_model(uri: str, root: Path, store_dir: str = "mlruns") -> Path:
    """A local ``.keras`` file for a ``models:/`` or ``runs:/RUN_ID/PATH`` URI, downloaded
    into ``<root>/.reprotrain/registry/<store>/...`` (:func:`cache_dir`), atomically, and
    reused only when complete and unchanged (:func:`cached_keras`)."""
    _check_scheme(uri)
    store_uri = store.store_uri(Path(root), store_dir)
    client = _registry_client(root, store_dir)
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/") :].strip("/").partition("/")
        entry = cache_dir(root, store_uri, "runs", run_id, path or "_root")
        what = f"{uri}"
    else:
        mv = _model_version(client, uri)
        entry = cache_dir(root, store_uri, mv.name, str(mv.version))
        uri, what = f"models:/{mv.name}/{mv.version}", f"{uri} (v{mv.version})"
    found = cached_keras(entry)
    return found if found is not None else _download(uri, store_uri, entry, what)


def resolve_labels(uri: str, root: Path, store_dir: str = "mlruns") -> list[str] | None:
    """Class names stored with a registered version, or the ``labels.json`` of a run (None
    when there are none)."""
    _check_scheme(uri)
    client = _registry_client(root, store_dir)
    if uri.startswith("runs:/"):
        import mlflow

        run_id = uri[len("runs:/") :].strip("/").partition("/")[0]
        try:
            data = mlflow.artifacts.load_dict(f"runs:/{run_id}/labels.json")
        except Exception as exc:  # an older run without labels.json: the caller falls back
            logger.info("no labels.json in run %s (%s)", run_id, exc)
            return None
        labels = data.get("labels") if isinstance(data, dict) else None
    else:
        raw = _model_version(client, uri).tags.get(VTAG_LABELS)
        try:
            labels = json.loads(raw) if raw else None
        except ValueError:
            return None
    return [str(x) for x in labels] if isinstance(labels, list) else None


def _registry_client(root: Path, store_dir: str) -> Any:
    uri = store.store_uri(Path(root), store_dir)
    store.check_reachable(uri)
    return store.client(uri)
