"""The table kind's promotion: the image kind's order (snapshot the champion, score it where
the decision needs it, decide with :func:`reprotrain.evaluation.decision.decide_promotion`,
register, apply with one registry call), the champion compared only when it is a table
model on the same inputs (a champion of another kind is "not comparable"). Anything that
fails before the registration leaves the registry as it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from reprotrain import paths
from reprotrain.config import Params
from reprotrain.evaluation import decision, gate
from reprotrain.tables import evaluation, inference, packaging
from reprotrain.tables.features import InputSpec
from reprotrain.tables.schema import Schema
from reprotrain.tables.training import Split
from reprotrain.tracking import registration
from reprotrain.tracking.handle import StageRun

#: Why a champion that cannot be scored stops the stage.
HINT = "it cannot be scored on this test set"


@dataclass(frozen=True)
class Candidate:
    """The network evaluate just scored: its test rows, their schema, its probabilities on
    them and the gate's accuracy floor (``evaluation.accuracy_floor``)."""

    test: Split
    schema: Schema
    probs: np.ndarray
    floor: tuple[float, str]


def promote(run: StageRun, params: Params, candidate: Candidate, mode: str) -> dict[str, Any]:
    """Snapshot → score → decide → register → apply; the ``promotion.json`` record."""
    cfg, name = params.evaluate, params.tracking.registered_model
    test, floor = candidate.test, candidate.floor
    spec, labels = InputSpec.from_schema(candidate.schema), list(candidate.schema.labels)
    challenger = decision.Challenger(
        test.y,
        candidate.probs,
        tuple(labels),
        0,
        evaluation.test_digest(test.frame, test.y),
        kind="table",
        inputs=json.dumps(spec.to_dict(), sort_keys=True),
    )
    rule = gate.GateRule(
        floor[0],
        cfg.min_improvement,
        cfg.alpha,
        cfg.max_class_regression,
        seed=params.seed,
        floor_name=floor[1],
    )
    policy = registration.run_policy(run, cfg.gate, rule, name, mode)
    champion = registration.scored_champion(
        run,
        name,
        challenger,
        policy,
        lambda file: inference.predict_probs(
            inference.load(file, num_classes=len(labels), hint=HINT), test.inputs, spec
        ),
    )
    verdict = decision.decide_promotion(challenger, champion, policy)
    version = registration.register_version(
        run,
        name,
        challenger,
        lambda: packaging.log_table_model(run, paths.TABLE_MODEL, labels, spec),
    )
    return registration.apply_decision(run, name, version, verdict, challenger.accuracy)
