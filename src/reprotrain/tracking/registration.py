"""The registry side of a promotion: a snapshot of the champion before deciding, the new
version registered after, and one call that applies the decision.

The decision itself is :func:`reprotrain.evaluation.decision.decide_promotion`, pure; the
evaluate stage runs the three steps in order, so a failure while looking up or scoring the
champion stops the stage before anything is registered (every alias stays where it was). The
move of ``champion`` is a compare-and-set against the champion the decision was made against
(:func:`reprotrain.tracking.registry.set_champion`): one that moved in between is never
replaced, and the new version stays the challenger with the reason.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from reprotrain.errors import ConfigError, ModelError, ReprotrainError, TrackingError
from reprotrain.evaluation.decision import (
    MODES,
    PROMOTE_ENV,
    Challenger,
    ChampionSnapshot,
    Policy,
    PromotionDecision,
    needs_champion_scores,
)
from reprotrain.evaluation.gate import CHALLENGER, CHAMPION, GateRule
from reprotrain.timing import timed
from reprotrain.tracking import store
from reprotrain.tracking.handle import StageRun, store_errors
from reprotrain.tracking.registry import ChampionMoved, find_keras, get_champion, set_champion
from reprotrain.tracking.tags import (
    VTAG_ACCURACY,
    VTAG_DIGEST,
    VTAG_IMAGE_SIZE,
    VTAG_INPUTS,
    VTAG_KIND,
    VTAG_LABELS,
    VTAG_REASON,
    VTAG_RUN,
)

logger = logging.getLogger(__name__)

#: Version tag: the champion a decision was made against ("none": there was none).
VTAG_DECIDED_AGAINST = "reprotrain.decided_against"


def promotion_mode(value: str | None = None) -> str:
    """What a passing gate does: ``champion`` (move the alias now; the default, so a local
    ``dvc repro`` promotes as it always did) or ``challenger`` (register the version as the
    challenger and let a review promote it). ``value`` defaults to ``$REPROTRAIN_PROMOTE``;
    an unknown value is a one-line ConfigError, raised before anything slow runs."""
    raw = os.environ.get(PROMOTE_ENV, "") if value is None else value
    mode = raw.strip() or CHAMPION
    if mode not in MODES:
        raise ConfigError(
            f"{PROMOTE_ENV}={raw!r}: expected 'champion' (a passing gate moves the champion "
            "alias, the default) or 'challenger' (it only proposes the version; merging the "
            "retraining pull request or `python -m reprotrain promote` moves champion)"
        )
    return mode


def run_policy(run: StageRun, gate: str, rule: GateRule, name: str, mode: str) -> Policy:
    """The decision's policy for this evaluate run: the gate and its thresholds, the mode
    (:func:`promotion_mode`), and what forbids a move: the run reproduces another
    (``run.reproduces``), or it is a DVC experiment (``$DVC_EXP_NAME``)."""
    return Policy(gate, rule, name, mode, run.reproduces, os.environ.get("DVC_EXP_NAME"))


def _cause(exc: BaseException) -> str:
    """``Type: message`` on one line, cut at 300 characters (for the one-line errors)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def champion_snapshot(uri: str, name: str) -> ChampionSnapshot | None:
    """What the registry says about ``name``'s champion (None: there is none). Any failure
    other than MLflow's "no such alias" is a one-line TrackingError: an error never promotes."""
    champion = get_champion(
        store.client(uri), name, uri, "nothing was registered or promoted; rerun evaluate"
    )
    if champion is None:
        return None
    tags = champion.tags or {}
    try:
        labels = tuple(str(x) for x in json.loads(tags[VTAG_LABELS]))
    except (KeyError, ValueError, TypeError):
        labels = None
    size = tags.get(VTAG_IMAGE_SIZE, "")
    try:
        accuracy = float(tags[VTAG_ACCURACY])
    except (KeyError, ValueError, TypeError):
        accuracy = None
    return ChampionSnapshot(
        int(champion.version),
        labels=labels,
        image_size=int(size) if size.isdigit() else None,
        accuracy=accuracy,
        test_digest=tags.get(VTAG_DIGEST),
        kind=tags.get(VTAG_KIND) or "images",
        inputs=tags.get(VTAG_INPUTS),
        tags=dict(tags),
    )


def champion_file(name: str, champion: ChampionSnapshot) -> Path:
    """The champion's ``.keras`` file, downloaded; a TrackingError (aliases unchanged) if not."""
    import mlflow
    from mlflow.exceptions import MlflowException

    v = champion.version
    try:
        return find_keras(Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{v}")))
    except (MlflowException, OSError, ReprotrainError) as exc:
        raise TrackingError(
            f"champion v{v} of {name} could not be re-scored on the current test set: its model "
            f"cannot be downloaded ({_cause(exc)}); no version was registered and the aliases "
            f"are unchanged. Restore its artifacts or promote a version explicitly "
            f"(python -m reprotrain promote {name} VERSION)"
        ) from None


def record_rescore(uri: str, name: str, before: ChampionSnapshot, after: ChampionSnapshot) -> None:
    """Tag the champion with its accuracy on the current test set, keeping the old figure:
    the next evaluate on the same test set reads it instead of scoring again."""
    if before.test_digest == after.test_digest and before.accuracy == after.accuracy:
        return
    client = store.client(uri)
    v = str(after.version)
    with store_errors(uri, f"recording champion v{v}'s accuracy on the current test set"):
        client.set_model_version_tag(name, v, VTAG_ACCURACY, repr(after.accuracy))
        client.set_model_version_tag(name, v, VTAG_DIGEST, str(after.test_digest))
        client.set_model_version_tag(
            name, v, "reprotrain.rescored_from", f"{before.test_digest}:{before.accuracy}"
        )
    logger.info("champion v%s scored on the current test set: %.4f", v, after.accuracy)


def scored_champion(
    run: StageRun,
    name: str,
    challenger: Challenger,
    policy: Policy,
    probs_of: Callable[[Path], Any],
) -> ChampionSnapshot | None:
    """The champion's snapshot, scored on the current test set where the decision needs it
    (``probs_of(file)`` predicts the downloaded champion; the accuracy gate records the
    figure on the version). A champion that cannot be scored stops the stage before anything
    is registered: every alias stays where it was."""
    champion = champion_snapshot(run.uri, name)
    if champion is None or not needs_champion_scores(champion, challenger, policy):
        return champion
    file = champion_file(name, champion)
    try:
        probs = probs_of(file)
    except ReprotrainError:
        raise
    except Exception as exc:
        raise ModelError(
            f"the promotion gate could not compare with champion v{champion.version} of "
            f"{name} ({type(exc).__name__}: {exc}); no version was registered and the "
            "aliases are unchanged"
        ) from exc
    scored = champion.scored(probs, challenger.y_true, challenger.test_digest)
    if policy.gate == "accuracy":
        record_rescore(run.uri, name, champion, scored)
    return scored


@timed("logging")
def register_version(
    run: StageRun,
    name: str,
    challenger: Challenger | None,
    log_model: Callable[[], str],
    *,
    tags: Mapping[str, str] | None = None,
) -> int:
    """Log the model (``log_model`` returns its URI) and register it as a new version of
    ``name``, tagged with what later comparisons need: its accuracy on this test set, the
    test set's digest, its kind, classes and inputs, and the run. A kind that is not a
    classifier (series) passes no ``challenger`` and its own ``tags`` (which must name its
    kind, ``reprotrain.kind``); extra ``tags`` are added either way."""
    import mlflow

    version_tags = {VTAG_RUN: run.run_id}
    if challenger is not None:
        version_tags |= {
            VTAG_ACCURACY: repr(challenger.accuracy),
            VTAG_DIGEST: challenger.test_digest,
            VTAG_LABELS: json.dumps(list(challenger.labels)),
            VTAG_IMAGE_SIZE: str(challenger.image_size),
            VTAG_KIND: challenger.kind,
        }
        if challenger.inputs is not None:
            version_tags[VTAG_INPUTS] = challenger.inputs
    version_tags |= dict(tags or {})
    with store_errors(run.uri, f"registering a new version of {name} (aliases unchanged)"):
        version = int(mlflow.register_model(log_model(), name, tags=version_tags).version)
    if challenger is not None:
        run.log_dict({"labels": list(challenger.labels)}, "labels.json")
    return version


@timed("logging")
def apply_decision(
    run: StageRun,
    name: str,
    version: int,
    decision: PromotionDecision,
    score: float,
    *,
    score_name: str = "accuracy",
) -> dict[str, Any]:
    """Move the aliases as ``decision`` says (champion by compare-and-set), tag the version
    with the reason and the gate's statistics, and return the ``promotion.json`` record
    (the challenger's ``score`` under ``score_name``: accuracy, or mase for a series)."""
    client = store.client(run.uri)
    alias, promoted, reason = decision.alias, decision.promote, decision.reason_for(version)
    if promoted:
        try:
            by = f"gate (evaluate run {run.run_id})"
            set_champion(client, name, version, decision.champion_version, by, reason, run.uri)
        except ChampionMoved as exc:
            alias, promoted = CHALLENGER, False
            reason = (
                f"not promoted: the champion changed to {_v(exc.now)} while evaluate compared "
                f"with {_v(decision.champion_version)} ({reason}); rerun evaluate (dvc repro -f "
                f"-s evaluate) to compare with {_v(exc.now)}"
            )
    if alias is not None and not promoted:
        client.set_registered_model_alias(name, alias, str(version))
    against = decision.champion_version
    version_tags = {
        VTAG_REASON: reason,
        VTAG_DECIDED_AGAINST: str(against) if against is not None else "none",
        **(_scalars(decision.gate, "reprotrain.gate") if decision.gate is not None else {}),
    }
    for key, value in version_tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    result = {
        "promoted": promoted,
        "proposed": decision.proposed,
        "mode": decision.mode,
        "alias": alias,
        "version": version,
        "reason": reason,
        "comparable": decision.comparable,
        "champion_version": against,
        "champion_accuracy": decision.champion_accuracy,
        score_name: float(score),
        "registered_model": name,
        "model_uri": f"models:/{name}/{version}",
    }
    if decision.gate is not None:
        result["gate"] = {k: v for k, v in decision.gate.items() if k != "alias"}
        if warning := (decision.gate.get("power") or {}).get("warning"):
            logger.warning("promotion gate: %s", warning)
    _summarise(run, client, result)
    log = logger.info if decision.comparable else logger.warning
    log("registry: %s v%d → %s (%s)", name, version, alias or "no alias", reason)
    return result


def log_keras_model(model_path: Path, image_size: int, num_classes: int) -> str:
    """Log a ``.keras`` file as an MLflow Keras-flavour model on the active run; its URI.

    The evaluate stage registers the photo-taking pyfunc instead (``serving.pyfunc``, which
    tracking must not import); this is the plain model for callers without it. Why a
    signature and no input example: with MLflow 3.17, ``log_model(..., input_example=...)``
    fails with FileNotFoundError while saving the example; the signature documents the input
    the same way (and is what ``mlflow models serve`` validates against). Pinned requirements
    skip MLflow's inference, which loads the model in a subprocess (a TensorFlow import).
    """
    import importlib.metadata as md

    import keras
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    size = (-1, image_size, image_size, 3)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype("float32"), size, "image")]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, num_classes), "probabilities")]),
    )
    requirements = []
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "mlflow", "numpy"):
        try:
            requirements.append(f"{dist}=={md.version(dist)}")
        except md.PackageNotFoundError:
            continue
    model = keras.saving.load_model(model_path, compile=False)
    info = mlflow.keras.log_model(
        model, name="model", signature=signature, pip_requirements=requirements
    )
    return info.model_uri


def _v(version: int | None) -> str:
    return f"v{version}" if version is not None else "no champion"


def _summarise(run: StageRun, client: Any, result: Mapping[str, Any]) -> None:
    """The decision as tags on the run and on its pipeline row (the UI's columns)."""
    summary = {
        "reprotrain.registry.model": result["registered_model"],
        "reprotrain.registry.version": str(result["version"]),
        "reprotrain.registry.alias": result["alias"] or "none",
        "reprotrain.promotion.promoted": str(result["promoted"]).lower(),
        "reprotrain.promotion.proposed": str(result["proposed"]).lower(),
        "reprotrain.promotion.mode": result["mode"],
        "reprotrain.promotion.reason": result["reason"],
    }
    run.set_tags(summary)
    if run.parent_run_id:
        for key, value in summary.items():
            client.set_tag(run.parent_run_id, key, value)


def _scalars(data: Any, prefix: str) -> dict[str, str]:
    """Scalar leaves of a nested dict as ``prefix.a.b`` → str (version tags)."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(_scalars(v, f"{prefix}.{k}"))
    elif isinstance(data, str | int | float | bool) or data is None:
        out[prefix] = str(data)[:500]
    return out


def describe_version(run: StageRun, name: str, version: int, card: Path) -> None:
    """Show the model card on the registered version: as its description (the registry UI
    renders Markdown) and as a tag pointing at the card logged on ``run``."""
    client = store.client(run.uri)
    text = Path(card).read_text(encoding="utf-8")
    with store_errors(run.uri, f"describing {name} v{version}"):
        client.update_model_version(name, str(version), description=text[:60000])
        client.set_model_version_tag(
            name, str(version), "reprotrain.model_card", f"runs:/{run.run_id}/reports/{card.name}"
        )
