"""Register a candidate model version and apply the promotion gate to it.

The rule itself is the pure :func:`reprotrain.evaluation.gate.decide`; this module feeds it
numbers measured on the same test set (re-scoring the champion first when it was scored on
another one) and moves the aliases. See :mod:`.registry` for the failure guarantees.

What a passing gate does is the promotion mode (:func:`promotion_mode`,
``REPROTRAIN_PROMOTE``): ``champion`` moves the alias now (a local ``dvc repro``, the
default); ``challenger`` only proposes (``scripts/retrain.sh``, the scheduled job): the
version becomes the ``challenger``, ``metrics/promotion.json`` records ``proposed: true`` and
the champion it was decided against, and merging the pull request moves ``champion``
(``scripts/retrain.sh promote``, a compare-and-set against that recorded champion).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from reprotrain.errors import ConfigError, ModelError, ReprotrainError, TrackingError
from reprotrain.evaluation import gate as promotion
from reprotrain.timing import timed
from reprotrain.tracking import store
from reprotrain.tracking.handle import StageRun, store_errors
from reprotrain.tracking.registry import ChampionMoved, find_keras, get_champion, set_champion
from reprotrain.tracking.tags import (
    VTAG_ACCURACY,
    VTAG_DIGEST,
    VTAG_IMAGE_SIZE,
    VTAG_LABELS,
    VTAG_REASON,
    VTAG_RUN,
)

logger = logging.getLogger(__name__)

#: The environment variable that sets the promotion mode, and its values.
PROMOTE_ENV = "REPROTRAIN_PROMOTE"
MODES = (promotion.CHAMPION, promotion.CHALLENGER)
#: Version tag: the champion a proposal was decided against ("none": there was none).
VTAG_DECIDED_AGAINST = "reprotrain.decided_against"


def promotion_mode(value: str | None = None) -> str:
    """What a passing gate does: ``champion`` (move the alias now; the default, so a local
    ``dvc repro`` promotes as it always did) or ``challenger`` (register the version as the
    challenger and let a review promote it). ``value`` defaults to ``$REPROTRAIN_PROMOTE``;
    an unknown value is a one-line ConfigError, raised before anything slow runs."""
    raw = os.environ.get(PROMOTE_ENV, "") if value is None else value
    mode = raw.strip() or promotion.CHAMPION
    if mode not in MODES:
        raise ConfigError(
            f"{PROMOTE_ENV}={raw!r}: expected 'champion' (a passing gate moves the champion "
            "alias, the default) or 'challenger' (it only proposes the version; merging the "
            "retraining pull request or `python -m reprotrain promote` moves champion)"
        )
    return mode


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


def _describe(labels: Sequence[str]) -> str:
    shown = ", ".join(labels[:6]) + (", …" if len(labels) > 6 else "")
    return f"[{shown}]"


def comparability_problem(champion: Any, labels: Sequence[str], image_size: int) -> str | None:
    """Why the champion cannot be re-scored against this model's test set (other classes,
    other input size), from its ``reprotrain.labels``/``reprotrain.image_size`` tags; None
    when they match or the champion predates the tags."""
    v = champion.version
    raw = champion.tags.get(VTAG_LABELS)
    try:
        theirs = [str(x) for x in json.loads(raw)] if raw else None
    except ValueError:
        theirs = None
    if theirs is not None and theirs != list(labels):
        if len(theirs) != len(labels) or set(theirs) != set(labels):
            ours = (
                f"{len(labels)} other classes"
                if not set(theirs) & set(labels)
                else f"{len(labels)} classes {_describe(labels)}"
            )
            return f"champion v{v} has classes {_describe(theirs)}; this model has {ours}"
        return (
            f"champion v{v} orders its classes {_describe(theirs)}; this model {_describe(labels)}"
        )
    size = champion.tags.get(VTAG_IMAGE_SIZE)
    if size and size.isdigit() and int(size) != int(image_size):
        return (
            f"champion v{v} takes {size}×{size} images; this model takes {image_size}×{image_size}"
        )
    return None


def _champion_file(name: str, champion: Any) -> Path:
    """The champion's ``.keras`` file, downloaded; a TrackingError (aliases unchanged) if not."""
    import mlflow
    from mlflow.exceptions import MlflowException

    v = int(champion.version)
    try:
        return find_keras(Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{v}")))
    except (MlflowException, OSError, ReprotrainError) as exc:
        raise TrackingError(
            f"champion v{v} of {name} could not be re-scored on the current test set: its model "
            f"cannot be downloaded ({_cause(exc)}); no version was registered and the aliases "
            "are unchanged. Restore its artifacts or promote a version explicitly "
            f"(python -m reprotrain promote {name} VERSION)"
        ) from None


def _cause(exc: BaseException) -> str:
    """``Type: message`` on one line, cut at 300 characters (for the one-line errors)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def _scalars(data: Any, prefix: str) -> dict[str, str]:
    """Scalar leaves of a nested dict as ``prefix.a.b`` → str (version tags)."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(_scalars(v, f"{prefix}.{k}"))
    elif isinstance(data, str | int | float | bool) or data is None:
        out[prefix] = str(data)[:500]
    return out


def _rescore_champion(
    client: Any, name: str, champion: Any, test_digest: str, rescore: Callable[[Path], float]
) -> float:
    """The champion's accuracy on the current test set (downloaded and re-scored when it was
    scored on another one); a failure is a ModelError/TrackingError naming the cause."""
    v = int(champion.version)
    known = _version_accuracy(champion)
    if champion.tags.get(VTAG_DIGEST) == test_digest and known is not None:
        return known
    keras_file = _champion_file(name, champion)
    try:
        accuracy = float(rescore(keras_file))
    except Exception as exc:
        raise ModelError(
            f"champion v{v} of {name} could not be re-scored on the current test "
            f"set ({_cause(exc)}); no version was registered and the aliases are unchanged"
        ) from None
    old = f"{champion.tags.get(VTAG_DIGEST)}:{champion.tags.get(VTAG_ACCURACY)}"
    for k, val in {
        VTAG_ACCURACY: repr(accuracy),
        VTAG_DIGEST: test_digest,
        "reprotrain.rescored_from": old,
    }.items():
        client.set_model_version_tag(name, str(v), k, val)
    logger.info("champion v%d re-scored on the current test set: %.4f", v, accuracy)
    return accuracy


@timed("logging")
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
    log_model: Callable[[], str] | None = None,
    paired: Callable[[Path | None], dict[str, Any]] | None = None,
    mode: str = promotion.CHAMPION,
) -> dict[str, Any]:
    """Log ``model_path`` as an MLflow Keras model on ``run``, register a new version of
    ``name`` and move ``champion`` to it if it passes the gate, else ``challenger``.

    ``mode`` (:func:`promotion_mode`): with ``challenger`` a passing version is only
    proposed (alias ``challenger``, ``proposed: true``). With ``champion`` the move is a
    compare-and-set against the champion the decision was made against: if it moved while
    this ran, the version stays the challenger and the reason says so.

    Order matters: the champion is looked up (and re-scored when it was scored on another
    test set, ``test_digest``) *before* the new version is registered, so a failure there
    leaves the registry exactly as it was. A champion with other classes or another input
    size is not comparable: the version is registered without an alias.

    ``paired``, when given, is the stage's paired gate (``evaluation.gate.decide_paired``
    bound to the candidate's predictions): it receives the champion's downloaded ``.keras``
    file (None without a comparable champion) and returns the decision with its statistics,
    which replace the accuracy-only rule and are stored in the result (``gate``) and as
    version tags (``reprotrain.gate.*``).

    ``log_model``, when given, logs the model to register and returns its URI (the evaluate
    stage passes the photo-taking pyfunc of ``reprotrain.serving``, which tracking must not
    import); without it the ``.keras`` file is logged as a Keras-flavour model.

    Why a signature and no input example: with MLflow 3.17, ``mlflow.keras.log_model(...,
    input_example=...)`` fails with FileNotFoundError while saving the example; the signature
    documents the input the same way (and is what ``mlflow models serve`` validates against).
    """
    import keras
    import mlflow

    uri = run.uri or mlflow.get_tracking_uri()
    client = store.client(uri)
    champion = get_champion(client, name, uri, "nothing was registered or promoted; rerun evaluate")
    champion_version = int(champion.version) if champion is not None else None
    champion_accuracy: float | None = None
    problem = comparability_problem(champion, labels, image_size) if champion else None
    paired_result: dict[str, Any] | None = None
    if paired is not None and problem is None:
        keras_file = _champion_file(name, champion) if champion is not None else None
        try:
            paired_result = paired(keras_file)
        except ReprotrainError:
            raise
        except Exception as exc:
            raise ModelError(
                f"the promotion gate could not compare with champion v{champion_version} of "
                f"{name} ({_cause(exc)}); no version was registered and the aliases are unchanged"
            ) from exc
        champion_accuracy = paired_result.get("champion_accuracy")
    elif champion is not None and problem is None:
        champion_accuracy = _rescore_champion(client, name, champion, test_digest, rescore)

    tags = {
        VTAG_ACCURACY: repr(float(accuracy)),
        VTAG_DIGEST: test_digest,
        VTAG_LABELS: json.dumps(list(labels)),
        VTAG_IMAGE_SIZE: str(image_size),
        VTAG_RUN: run.run_id,
    }
    with store_errors(uri, f"registering a new version of {name} (aliases unchanged)"):
        if log_model is not None:
            model_uri = log_model()
        else:
            model = keras.saving.load_model(model_path, compile=False)
            model_uri = mlflow.keras.log_model(
                model,
                name=artifact_name,
                signature=_signature(image_size, len(labels)),
                pip_requirements=_requirements(),
            ).model_uri
        version = int(mlflow.register_model(model_uri, name, tags=tags).version)
    run.log_dict({"labels": list(labels)}, "labels.json")

    alias: str | None
    proposed = False
    if problem is not None:
        alias, promoted = None, False
        reason = (
            f"not comparable: {problem}; v{version} is registered without an alias. Use a new "
            f"tracking.registered_model for the new task, or promote it explicitly: "
            f"python -m reprotrain promote {name} {version} --reason '...'"
        )
    else:
        if paired_result is not None:
            decision = promotion.Decision(
                bool(paired_result["promoted"]), paired_result["alias"], paired_result["reason"]
            )
        else:
            decision = promotion.decide(accuracy, champion_accuracy, min_accuracy, min_improvement)
        alias, promoted, reason = decision.alias, decision.promoted, decision.reason
        exp_name = os.environ.get("DVC_EXP_NAME")
        if run.reproduces:
            alias, promoted = None, False
            reason = f"reproduction of run {run.reproduces}: registry aliases left unchanged"
        elif exp_name and decision.promoted:
            # A DVC experiment is not on any branch, and queued experiments run in parallel:
            # letting them race for `champion` would serve a model nobody committed.
            alias, promoted = promotion.CHALLENGER, False
            reason = (
                f"DVC experiment {exp_name}: the gate would promote ({decision.reason}), but "
                "experiments never take the champion alias; apply and commit it, then run "
                "`dvc repro --force -s evaluate`"
            )
        elif mode == promotion.CHALLENGER and decision.promoted:
            alias, promoted, proposed = promotion.CHALLENGER, False, True
            against = f"v{champion_version}" if champion_version is not None else "no champion"
            reason = (
                f"proposed: {decision.reason}; review mode ({PROMOTE_ENV}=challenger): "
                f"v{version} is the challenger, decided against {against}; merging its pull "
                "request promotes it (scripts/retrain.sh promote)"
            )
    if promoted:
        try:
            set_champion(
                client,
                name,
                version,
                champion_version,
                f"gate (evaluate run {run.run_id})",
                reason,
                uri,
            )
        except ChampionMoved as exc:
            alias, promoted = promotion.CHALLENGER, False
            now = f"v{exc.now}" if exc.now is not None else "no champion"
            was = f"v{champion_version}" if champion_version is not None else "no champion"
            reason = (
                f"not promoted: the champion changed to {now} while evaluate compared with "
                f"{was} ({reason}); rerun evaluate (dvc repro -f -s evaluate) to compare "
                f"with {now}"
            )
    if alias is not None and not promoted:
        client.set_registered_model_alias(name, alias, str(version))
    client.set_model_version_tag(name, str(version), VTAG_REASON, reason)
    client.set_model_version_tag(
        name,
        str(version),
        VTAG_DECIDED_AGAINST,
        str(champion_version) if champion_version is not None else "none",
    )
    if paired_result is not None:
        for key, value in _scalars(paired_result, "reprotrain.gate").items():
            client.set_model_version_tag(name, str(version), key, value)
    result = {
        "promoted": promoted,
        "proposed": proposed,
        "mode": mode,
        "alias": alias,
        "version": version,
        "reason": reason,
        "comparable": problem is None,
        "champion_version": champion_version,
        "champion_accuracy": champion_accuracy,
        "accuracy": float(accuracy),
        "registered_model": name,
        "model_uri": f"models:/{name}/{version}",
    }
    if paired_result is not None:
        result["gate"] = {k: v for k, v in paired_result.items() if k not in ("alias",)}
        warning = (paired_result.get("power") or {}).get("warning")
        if warning:
            logger.warning("promotion gate: %s", warning)
    summary = {
        "reprotrain.registry.model": name,
        "reprotrain.registry.version": str(version),
        "reprotrain.registry.alias": alias or "none",
        "reprotrain.promotion.promoted": str(promoted).lower(),
        "reprotrain.promotion.proposed": str(proposed).lower(),
        "reprotrain.promotion.mode": mode,
        "reprotrain.promotion.reason": reason,
    }
    run.set_tags(summary)
    if run.parent_run_id:
        for key, value in summary.items():
            client.set_tag(run.parent_run_id, key, value)
    log = logger.warning if problem else logger.info
    log("registry: %s v%d → %s (%s)", name, version, alias or "no alias", reason)
    return result


def describe_version(run: StageRun, name: str, version: int, card: Path) -> None:
    """Show the model card on the registered version: as its description (the registry UI
    renders Markdown) and as a tag pointing at the card logged on ``run``."""
    import mlflow

    uri = run.uri or mlflow.get_tracking_uri()
    client = store.client(uri)
    text = Path(card).read_text(encoding="utf-8")
    with store_errors(uri, f"describing {name} v{version}"):
        client.update_model_version(name, str(version), description=text[:60000])
        client.set_model_version_tag(
            name, str(version), "reprotrain.model_card", f"runs:/{run.run_id}/reports/{card.name}"
        )
