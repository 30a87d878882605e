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
  ``reprotrain.promotions`` tag.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reprotrain.errors import ModelError, TrackingError
from reprotrain.evaluation import gate as promotion
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


def set_champion(
    client: Any, name: str, version: int, previous: int | None, by: str, reason: str
) -> None:
    """Move ``champion`` to ``version`` with the audit tags."""
    tags = {
        VTAG_PROMOTED_BY: by,
        VTAG_PROMOTED_AT: _now(),
        VTAG_REASON: reason,
        VTAG_PREVIOUS: str(previous) if previous is not None else "none",
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), k, v)
    client.set_registered_model_alias(name, promotion.CHAMPION, str(version))
    was = f"v{previous}" if previous is not None else "none"
    _audit(client, name, f"{tags[VTAG_PROMOTED_AT]} champion {was} → v{version} by {by}: {reason}")


# --------------------------------------------------------------------------- explicit moves


def promote(
    uri: str, name: str, version: int, reason: str, by: str | None = None
) -> dict[str, Any]:
    """Move ``champion`` of ``name`` to ``version`` by hand (audited); returns what moved."""
    from mlflow.exceptions import MlflowException

    client = store.client(uri)
    try:
        client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise TrackingError(f"{name} v{version} not found in {uri}: {exc.message}") from None
    current = get_champion(client, name, uri, "champion not moved")
    previous = int(current.version) if current is not None else None
    if previous == int(version):
        raise TrackingError(f"{name} v{version} is already the champion: nothing to do")
    by = by or current_user()
    set_champion(client, name, int(version), previous, by, f"explicit promotion: {reason}")
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


def resolve_model(uri: str, root: Path, store_dir: str = "mlruns") -> Path:
    """A local ``.keras`` file for a ``models:/`` or ``runs:/RUN_ID/PATH`` URI, downloaded into
    ``<root>/.reprotrain/registry/...`` (reused when already there)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    _check_scheme(uri)
    client = _registry_client(root, store_dir)
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/") :].strip("/").partition("/")
        dest = Path(root) / ".reprotrain" / "registry" / "runs" / run_id / (path or "_root")
        what = f"{uri}"
    else:
        mv = _model_version(client, uri)
        dest = Path(root) / ".reprotrain" / "registry" / mv.name / str(mv.version)
        uri, what = f"models:/{mv.name}/{mv.version}", f"{uri} (v{mv.version})"
    existing = sorted(dest.rglob("*.keras")) if dest.is_dir() else []
    if existing:
        return existing[0]
    dest.mkdir(parents=True, exist_ok=True)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest))
    except (MlflowException, OSError) as exc:
        raise TrackingError(f"cannot download {what}: {getattr(exc, 'message', exc)}") from None
    return find_keras(Path(local))


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
