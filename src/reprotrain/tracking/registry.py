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

Resolving URIs to files is :mod:`reprotrain.tracking.resolve` (its names are re-exported
here): this module is the rules about who moves ``champion``, when, and with what record.
"""

from __future__ import annotations

import getpass
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from reprotrain.errors import TrackingError
from reprotrain.evaluation.gate import CHAMPION
from reprotrain.tracking import lineage, store
from reprotrain.tracking.resolve import (
    CACHE_RECORD,
    STALE_DOWNLOAD_S,
    cache_dir,
    cached_keras,
    find_keras,
    resolve_labels,
    resolve_model,
)
from reprotrain.tracking.tags import (
    MTAG_HISTORY,
    VTAG_PREVIOUS,
    VTAG_PROMOTED_AT,
    VTAG_PROMOTED_BY,
    VTAG_REASON,
)

# Resolving URIs to files lives in ``resolve``; these names stay importable from here.
__all__ = [
    "CACHE_RECORD",
    "CURRENT",
    "STALE_DOWNLOAD_S",
    "ChampionMoved",
    "cache_dir",
    "cached_keras",
    "champion_version",
    "current_user",
    "find_keras",
    "get_champion",
    "is_missing_alias",
    "promote",
    "resolve_labels",
    "resolve_model",
    "rollback",
    "set_champion",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- helpers


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
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if is_missing_alias(exc):
            return None
        raise TrackingError(
            f"could not look up {name}@{CHAMPION} in {uri} ({exc.error_code}: "
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
    client.set_registered_model_alias(name, CHAMPION, str(version))
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
    client.set_registered_model_alias(name, CHAMPION, prev)
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
