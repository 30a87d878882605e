"""The image kind's promotion: snapshot the champion, score it where the decision needs it,
decide (:func:`reprotrain.evaluation.decision.decide_promotion`, pure), register the
photo-taking model, apply the decision with one registry call.

The counterpart of ``tables.promotion`` and ``series.promotion``. It lives here, beside the
scorer it re-scores the champion with (:mod:`reprotrain.evaluation.scoring`), and not in
``tracking``, because it packages the served model (``serving.packaging``), which tracking
must not import. Anything that fails before the registration leaves the registry as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reprotrain import paths
from reprotrain.config import Params
from reprotrain.evaluation import decision, gate
from reprotrain.evaluation.scoring import ModelScorer
from reprotrain.evaluation.testset import TestSet
from reprotrain.serving import packaging, pyfunc
from reprotrain.tracking import registration
from reprotrain.tracking.handle import StageRun

#: Why a champion that cannot be scored stops the stage.
HINT = "it cannot be scored on this test set"


@dataclass(frozen=True)
class Candidate:
    """The fine-tuned model's test set and the scorer that scored it: the champion is
    scored by the same scorer, on the same decoded split."""

    test: TestSet
    scorer: ModelScorer


def promote(run: StageRun, params: Params, candidate: Candidate, mode: str) -> dict[str, Any]:
    """Snapshot → score → decide → register → apply; the ``promotion.json`` record."""
    cfg, name = params.evaluate, params.tracking.registered_model
    test, scorer = candidate.test, candidate.scorer
    preds = scorer.predictions(paths.FINETUNED_MODEL)
    challenger = decision.Challenger(
        preds.y_true, preds.probs, tuple(test.labels), params.model.image_size, test.digest
    )
    rule = gate.GateRule(
        cfg.min_accuracy, cfg.min_improvement, cfg.alpha, cfg.max_class_regression, seed=params.seed
    )
    policy = registration.run_policy(run, cfg.gate, rule, name, mode)
    champion = registration.scored_champion(
        run, name, challenger, policy, lambda file: scorer.predictions(file, hint=HINT).probs
    )
    verdict = decision.decide_promotion(challenger, champion, policy)
    # The registered model takes photos, normalised exactly as prepare normalised the
    # training images (stats.json records how).
    norm = test.stats["normalization"]
    photo = pyfunc.PhotoInput(params.model.image_size, norm["max_side"], norm["jpeg_quality"])
    version = registration.register_version(
        run,
        name,
        challenger,
        lambda: packaging.log_photo_model(run, paths.FINETUNED_MODEL, test.labels, photo),
    )
    return registration.apply_decision(run, name, version, verdict, challenger.accuracy)
