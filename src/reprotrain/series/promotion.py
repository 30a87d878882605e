"""The series kind's promotion: snapshot the champion, forecast the same test windows with it
when it is comparable, decide (:func:`reprotrain.series.gate.decide_promotion`, pure: MASE
below 1, Diebold–Mariano against the champion, the policy every kind shares), register the
forecaster and apply the decision with one registry call. Anything that fails before the
registration leaves the registry as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain import paths
from reprotrain.config import Params
from reprotrain.errors import ModelError, ReprotrainError
from reprotrain.evaluation.decision import ChampionSnapshot
from reprotrain.evaluation.gate import GateRule
from reprotrain.series import evaluation, gate, metrics, packaging, windows
from reprotrain.series import model as series_model
from reprotrain.series.serving import ForecastConfig
from reprotrain.series.training import predict
from reprotrain.tracking import registration
from reprotrain.tracking.handle import StageRun
from reprotrain.tracking.tags import VTAG_DIGEST, VTAG_INPUTS, VTAG_KIND

#: Version tag: the version's test MASE.
VTAG_MASE = "reprotrain.test_mase"


@dataclass(frozen=True)
class Candidate:
    """The forecaster evaluate just scored: the windows' shape, its forecasts of the test
    windows kept for scoring, the report (``mase``, ``mase_scale``), its forecast config
    (packaged with it) and the kept windows' inputs (the champion forecasts the same ones)."""

    meta: windows.SeriesMeta
    scored: evaluation.TestForecasts
    report: Mapping[str, Any]
    config: ForecastConfig
    x: np.ndarray  # [n, window, channels]: test.x[scored.keep]

    def forecaster(self) -> gate.Forecaster:
        """The challenger as the pure decision sees it."""
        return gate.Forecaster(
            self.report["mase"],
            self.report["mase_scale"],
            metrics.window_errors(self.scored.y, self.scored.model),
            evaluation.inputs_tag(self.meta),
            int(self.meta.horizon),
        )


def promote(run: StageRun, params: Params, candidate: Candidate, mode: str) -> dict[str, Any]:
    """Snapshot → forecast with the champion → decide → register → apply; the
    ``promotion.json`` record (with the champion's MASE on the same windows)."""
    name, cfg = params.tracking.registered_model, params.evaluate
    rule = GateRule(cfg.min_accuracy, cfg.min_improvement, cfg.alpha, seed=params.seed)
    policy = registration.run_policy(run, "series_paired", rule, name, mode)
    challenger = candidate.forecaster()
    champion = registration.champion_snapshot(run.uri, name)
    theirs = None
    if champion is not None and gate.champion_problem(champion, challenger) is None:
        forecasts = _champion_forecasts(name, champion, candidate.meta, candidate.x)
        theirs = metrics.window_errors(candidate.scored.y, forecasts)
    verdict = gate.decide_promotion(challenger, champion, theirs, policy)
    tags = {
        VTAG_KIND: "series",
        VTAG_INPUTS: challenger.inputs,
        VTAG_MASE: repr(candidate.report["mase"]),
        VTAG_DIGEST: evaluation.windows_digest(candidate.scored),
    }
    version = registration.register_version(
        run,
        name,
        None,
        lambda: packaging.log_forecaster(run, paths.SERIES_MODEL, candidate.config),
        tags=tags,
    )
    mase = candidate.report["mase"]
    result = registration.apply_decision(run, name, version, verdict, mase, score_name="mase")
    return {**result, "champion_mase": verdict.champion_accuracy}


def _champion_forecasts(
    name: str, champion: ChampionSnapshot, meta: windows.SeriesMeta, x: np.ndarray
) -> np.ndarray:
    """The champion's forecasts of the same test windows (its downloaded ``.keras``)."""
    file: Path = registration.champion_file(name, champion)
    try:
        model = series_model.load(file, hint="it cannot be scored on these test windows")
        series_model.check_shape(model, meta.window, len(meta.channels), meta.horizon)
        return predict(model, x)
    except ReprotrainError as exc:
        raise ModelError(
            f"the promotion gate could not compare with champion v{champion.version} of "
            f"{name} ({exc}); no version was registered and the aliases are unchanged"
        ) from exc
