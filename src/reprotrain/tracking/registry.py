"""The model registry: register versions, apply the promotion gate, explicit (audited)
promotion and rollback, and resolve ``models:/`` and ``runs:/`` URIs to local files.

Failure guarantees (what a user can rely on):

- an error never promotes: only MLflow's own "alias not found" answer means "no champion";
  any other failure while looking up or re-scoring the champion fails ``evaluate`` with one
  line, before the new version is registered, and leaves every alias where it was;
- a champion trained on other classes or another input size is not comparable: the new
  version is registered without an alias and the reason (and what to do) is one line in
  ``metrics/promotion.json``, the run and the log;
- every move of ``champion`` (gate, ``promote``, ``--rollback``) records who, when, why and
  the previous champion as version tags, and appends a line to the registered model's
  ``reprotrain.promotions`` tag;
- a move is a compare-and-set: the decision names the champion it was made against, the
  alias is re-read right before it is set, and a champion that moved in between is never
  replaced (:class:`ChampionMoved`, one line);
- the download cache (``resolve_model``) is keyed by the store URI as well as the version,
  fills a temporary directory that is renamed into place only once complete, and reuses a
  file only when its size and sha256 match the record written with it.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from reprotrain.errors import ModelError, TrackingError
from reprotrain.evaluation import gate as promotion
from reprotrain.fsio import atomic_write_json, file_sha256
from reprotrain.tracking import lineage, store
from reprotrain.tracking.tags import (
    MTAG_HISTORY,
    VTAG_LABELS,
    VTAG_PREVIOUS,
    VTAG_PROMOTED_AT,
    VTAG_PROMOTED_BY,
    VTAG_REASON,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- helpers


def find_keras(directory: Path) -> Path:
    directory = Path(directory)
    if directory.is_file() and directory.suffix == ".keras":
        return directory
    found = sorted(directory.rglob("*.keras"))
    if not found:
        raise ModelError(f"no .keras file in the downloaded MLflow artifact {directory}")
    return found[0]


def is_missing_alias(exc: Exception) -> bool:
    """True only for MLflow's answer "this alias (or model) does not exist".

    Verified against MLflow 3.17 on SQLite: a missing alias raises INVALID_PARAMETER_VALUE
    ("Registered model alias champion not found."), a missing model RESOURCE_DOES_NOT_EXIST;
    a server forwards the same codes. Everything else (a locked or broken store, a server
    that stopped) is a failure, never "no champion".
    """
    code = getattr(exc, "error_code", "")
    message = str(getattr(exc, "message", exc)).lower()
    if code == "RESOURCE_DOES_NOT_EXIST":
        return True
    return code == "INVALID_PARAMETER_VALUE" and "alias" in message and "not found" in message


def current_user(root: Path | None = None) -> str:
    """Who acts: git's ``user.name`` <``user.email``>, else ``$USER``, else the login name."""
    name = lineage.git(root or Path.cwd(), "config", "user.name")
    if name:
        email = lineage.git(root or Path.cwd(), "config", "user.email")
        return f"{name} <{email}>" if email else name
    return os.environ.get("USER") or getpass.getuser()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _audit(client: Any, name: str, line: str) -> None:
    """Prepend one line to the registered model's promotion history (newest first, trimmed
    to fit MLflow's tag size)."""
    model = client.get_registered_model(name)
    old = (model.tags or {}).get(MTAG_HISTORY, "")
    text = (line + "\n" + old).strip()
    while len(text) > 4500 and "\n" in text:
        text = text.rsplit("\n", 1)[0]
    client.set_registered_model_tag(name, MTAG_HISTORY, text)


def get_champion(client: Any, name: str, uri: str, consequence: str) -> Any | None:
    """The champion's ModelVersion, None when there is none; any other error: TrackingError."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, promotion.CHAMPION)
    except MlflowException as exc:
        if is_missing_alias(exc):
            return None
        raise TrackingError(
            f"could not look up {name}@{promotion.CHAMPION} in {uri} ({exc.error_code}: "
            f"{' '.join(str(exc.message).split())[:300]}); {consequence}"
        ) from None


class ChampionMoved(TrackingError):
    """``champion`` is not the version a promotion was decided against: someone (another
    merge, a hand promotion, a rollback) moved it in between. Nothing was changed."""

    def __init__(self, name: str, version: int, expected: int | None, now: int | None) -> None:
        self.expected, self.now = expected, now
        super().__init__(
            f"{name}: champion is {_v(now)}, but the promotion of v{version} was decided "
            f"against {_v(expected)}: champion not moved. Re-run the gate against {_v(now)} "
            "(scripts/retrain.sh, or dvc repro -f -s evaluate), or promote by hand: "
            f"python -m reprotrain promote {name} {version} --reason '...'"
        )


def _v(version: int | None) -> str:
    return f"v{version}" if version is not None else "no champion"


def champion_version(client: Any, name: str, uri: str, consequence: str) -> int | None:
    """The champion's version number, None when there is none (errors: TrackingError)."""
    current = get_champion(client, name, uri, consequence)
    return int(current.version) if current is not None else None


def set_champion(
    client: Any,
    name: str,
    version: int,
    previous: int | None,
    by: str,
    reason: str,
    uri: str = "the registry",
) -> None:
    """Move ``champion`` to ``version`` with the audit tags, as a compare-and-set.

    ``previous`` is the champion the decision was made against (None: there was none).
    MLflow has no conditional alias update, so the alias is re-read immediately before it
    is set: if it moved since the decision, :class:`ChampionMoved` is raised and nothing is
    written. The window left is one registry round trip; the workflows that promote run
    one at a time (their concurrency group) to close it in CI.
    """
    now = champion_version(client, name, uri, "champion not moved")
    if now != previous:
        raise ChampionMoved(name, version, previous, now)
    client.set_registered_model_alias(name, promotion.CHAMPION, str(version))
    tags = {
        VTAG_PROMOTED_BY: by,
        VTAG_PROMOTED_AT: _now(),
        VTAG_REASON: reason,
        VTAG_PREVIOUS: str(previous) if previous is not None else "none",
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), k, v)
    was = f"v{previous}" if previous is not None else "none"
    _audit(client, name, f"{tags[VTAG_PROMOTED_AT]} champion {was} → v{version} by {by}: {reason}")


# --------------------------------------------------------------------------- explicit moves


#: ``expected`` of :func:`promote`: compare with the champion read when the command starts.
CURRENT: Literal["current"] = "current"


def promote(
    uri: str,
    name: str,
    version: int,
    reason: str,
    by: str | None = None,
    expected: int | Literal["current"] | None = CURRENT,
) -> dict[str, Any]:
    """Move ``champion`` of ``name`` to ``version`` by hand (audited); returns what moved.

    ``expected`` is the champion the decision was made against (a version, or None for "no
    champion"): the merge job passes the one ``metrics/promotion.json`` recorded, so a
    champion that moved since the gate ran is refused (:class:`ChampionMoved`), never
    replaced. The default compares with the champion read at the start of the call.
    """
    from mlflow.exceptions import MlflowException

    client = store.client(uri)
    try:
        client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise TrackingError(f"{name} v{version} not found in {uri}: {exc.message}") from None
    previous = champion_version(client, name, uri, "champion not moved")
    if previous == int(version):
        raise TrackingError(f"{name} v{version} is already the champion: nothing to do")
    if expected != CURRENT and previous != expected:
        raise ChampionMoved(name, int(version), expected, previous)
    by = by or current_user()
    set_champion(client, name, int(version), previous, by, f"explicit promotion: {reason}", uri)
    logger.info(
        "%s champion: %s → v%s by %s (%s)",
        name,
        f"v{previous}" if previous else "none",
        version,
        by,
        reason,
    )
    return {
        "registered_model": name,
        "champion": int(version),
        "previous": previous,
        "by": by,
        "reason": reason,
    }


def rollback(uri: str, name: str, reason: str, by: str | None = None) -> dict[str, Any]:
    """Move ``champion`` back to the version recorded as the previous champion (audited).
    The target keeps its own ``previous_champion`` tag, so repeated rollbacks walk back."""
    client = store.client(uri)
    current = get_champion(client, name, uri, "champion not moved")
    if current is None:
        raise TrackingError(f"{name} has no champion in {uri}: nothing to roll back")
    prev = current.tags.get(VTAG_PREVIOUS, "")
    if not prev.isdigit():
        raise TrackingError(
            f"{name} v{current.version} records no previous champion: promote a version "
            f"explicitly (python -m reprotrain promote {name} VERSION)"
        )
    by = by or current_user()
    when = _now()
    for k, v in {
        "reprotrain.rolled_back_by": by,
        "reprotrain.rolled_back_at": when,
        "reprotrain.rollback_reason": reason,
    }.items():
        client.set_model_version_tag(name, str(current.version), k, v)
    client.set_model_version_tag(
        name, prev, VTAG_REASON, f"rollback from v{current.version}: {reason}"
    )
    now = champion_version(client, name, uri, "champion not moved")
    if now != int(current.version):
        raise ChampionMoved(name, int(prev), int(current.version), now)
    client.set_registered_model_alias(name, promotion.CHAMPION, prev)
    _audit(
        client, name, f"{when} champion v{current.version} → v{prev} (rollback) by {by}: {reason}"
    )
    logger.info(
        "%s champion rolled back: v%s → v%s by %s (%s)", name, current.version, prev, by, reason
    )
    return {
        "registered_model": name,
        "champion": int(prev),
        "previous": int(current.version),
        "by": by,
        "reason": reason,
    }


# --------------------------------------------------------------------------- resolving URIs


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
