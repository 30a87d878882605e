"""Which class names a model's outputs have: only names shown to belong to the model.

Why a module of its own: a model file carries no class names, and the obvious guess (the
project's ``data/prepared/labels.json``) is the *current* data's, which may have other
classes, or the same number of classes in another order, than the data the model was
trained on: same count, wrong names. :func:`class_names` takes names only from where they
belong to the model (``--labels``, the registry, the file beside the model, or the project's
file when ``dvc.lock`` and DVC's cache prove the model trained on it), and says so otherwise.
``predict`` (the command) and ``reprotrain.api`` both call it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from reprotrain import paths
from reprotrain.errors import ModelError

logger = logging.getLogger(__name__)


def _read_labels(path: Path) -> list[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read class names: {exc}") from None
    if not isinstance(data, list) or not data:
        raise ModelError(f"{path}: expected a JSON list of class names")
    return [str(x) for x in data]


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _trained_on_labels_md5(root: Path, model_path: Path) -> str | None:
    """The md5 that the ``labels.json`` of the data ``model_path`` was trained on had, by the
    project's own records, or None when they do not show it.

    ``dvc.lock`` must list the model file, with its current md5, as an output of a stage that
    read ``data/prepared``; that dependency's ``.dir`` hash names the directory listing in
    DVC's cache, which holds the md5 of every file the stage read, ``labels.json`` included.
    """
    from reprotrain.config import parse_yaml

    try:
        rel = model_path.resolve().relative_to(root.resolve()).as_posix()
        lock = parse_yaml((root / "dvc.lock").read_text(encoding="utf-8")) or {}
        md5 = _md5(model_path)
    except (OSError, ValueError):
        return None
    prepared = paths.PREPARED_DIR.as_posix()
    for stage in (lock.get("stages") or {}).values():
        outs = (stage or {}).get("outs") or []
        if not any(o.get("path") == rel and o.get("md5") == md5 for o in outs):
            continue
        deps = [d for d in stage.get("deps") or [] if str(d.get("path")).rstrip("/") == prepared]
        listing = str(deps[0].get("md5", "")) if deps else ""
        return _listed_md5(root, listing, "labels.json") if listing.endswith(".dir") else None
    return None


def _listed_md5(root: Path, dir_hash: str, relpath: str) -> str | None:
    """md5 of ``relpath`` in the directory listing ``dir_hash`` of the project's DVC cache."""
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            listing = json.loads(Path(repo.cache.local.oid_to_path(dir_hash)).read_text())
    except Exception as exc:  # no DVC repo, no cache, a listing DVC no longer has
        logger.debug("no DVC listing %s in %s: %s", dir_hash, root, exc)
        return None
    found = [e.get("md5") for e in listing if isinstance(e, dict) and e.get("relpath") == relpath]
    return str(found[0]) if found else None


def _project_labels(model_path: Path, num_classes: int) -> tuple[list[str] | None, list[Path]]:
    """The labels of the project data the model was trained on, and the ``labels.json``
    files seen that cannot be shown to belong to it.

    Why the proof: a project's ``data/prepared/labels.json`` is the current data's, which
    may have other classes, or the same number of classes in another order, than the data
    an older (or another project's) model was trained on: same count, wrong names.
    """
    unproven: list[Path] = []
    for root in dict.fromkeys((paths.project_root(model_path.parent), paths.project_root())):
        candidate = root / paths.PREPARED_DIR / "labels.json"
        if not candidate.is_file():
            continue
        expected = _trained_on_labels_md5(root, model_path)
        if expected is not None and expected == _md5(candidate):
            labels = _read_labels(candidate)
            if len(labels) == num_classes:
                logger.info("class names from %s (the data dvc.lock trained it on)", candidate)
                return labels, []
        unproven.append(candidate)
    return None, unproven


def class_names(
    explicit: Path | None,
    model_path: Path,
    num_classes: int,
    registered: Sequence[str] | None = None,
) -> list[str]:
    """Class names for the model's outputs: only names that belong to the model.

    ``--labels`` wins; then the names registered with a ``models:/`` version (or logged with a
    ``runs:/`` run); then ``labels.json`` next to the model file (a registry download has it
    there); then the project's ``data/prepared/labels.json``, only when ``dvc.lock`` and
    DVC's cache show the model was trained on that very file (:func:`_project_labels`). A
    project labels file that cannot be shown to belong is a ModelError asking for
    ``--labels``, never a guess; with no labels file anywhere, the class indices (warned).
    """
    if registered is not None and explicit is None:
        if len(registered) == num_classes:
            return list(registered)
        logger.warning(
            "the registered labels list %d classes, the model %d: not using them",
            len(registered),
            num_classes,
        )
    if explicit is not None:
        labels = _read_labels(explicit)
        if len(labels) != num_classes:
            raise ModelError(
                f"{explicit} lists {len(labels)} classes but the model predicts "
                f"{num_classes}: pass the labels.json of the data the model was trained on"
            )
        return labels
    beside = model_path.parent / "labels.json"
    if beside.is_file():
        labels = _read_labels(beside)
        if len(labels) == num_classes:
            logger.info("class names from %s", beside)
            return labels
        raise ModelError(
            f"{beside} lists {len(labels)} classes but {model_path} predicts {num_classes}: "
            "pass --labels with the labels.json of the data the model was trained on"
        )
    labels, unproven = _project_labels(model_path, num_classes)
    if labels is not None:
        return labels
    if unproven:
        raise ModelError(
            f"cannot tell whether {', '.join(map(str, unproven))} belongs to {model_path} "
            "(dvc.lock does not record that model trained on that file): pass --labels "
            "with the labels.json of the data the model was trained on"
        )
    logger.warning("no labels.json found for the model: reporting class indices (use --labels)")
    return [str(i) for i in range(num_classes)]
