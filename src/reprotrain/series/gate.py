"""The series promotion gate: beat seasonal naive, then do not lose to the champion.

Rule, in order (the image gate's shape, ``evaluation.gate.decide_paired``):

1. ``mase ≥ 1`` never promotes: the model does not beat the seasonal-naive forecast;
2. no champion: rule 1 alone decides;
3. against a champion, both scored on the same test windows: promote if the challenger is
   **significantly better** on the per-window errors (two-sided ``p < alpha``), never if
   significantly worse; otherwise promote iff its mean window error is lower or equal
   (equal promotes the newer model, as the image gate does).

Why Diebold–Mariano with the Harvey–Leybourne–Newbold correction rather than a Wilcoxon
signed-rank test: consecutive test windows overlap (a window's ``horizon`` targets are the
next windows' too), so the paired error differences are autocorrelated up to lag
``horizon − 1``. Wilcoxon assumes independent pairs and would be overconfident; DM's variance
sums those autocovariances, and HLN's factor with a Student-t reference keeps the test's size
right on the few dozen windows a test period holds.

:func:`decide_promotion` is the whole series decision, pure (numpy, scipy and the shared
policy of :mod:`reprotrain.evaluation.decision`; no tracking): a champion of another kind,
window or horizon is not comparable; otherwise the rule above gives a verdict and the policy
every kind shares (reproduction, DVC experiment, review mode) turns it into the registry's
move. ``series.promotion`` snapshots the champion, forecasts with it, calls this and applies
the result with one registry call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from reprotrain.evaluation.decision import (
    ChampionSnapshot,
    Policy,
    PromotionDecision,
    apply_policy,
    comparability_problem,
    not_comparable,
)

CHAMPION, CHALLENGER = "champion", "challenger"


def diebold_mariano(
    challenger_errors: np.ndarray, champion_errors: np.ndarray, horizon: int
) -> dict[str, Any]:
    """DM-HLN on the loss differential ``d = challenger − champion`` (negative: the
    challenger errs less). Returns the statistic, its two-sided p-value (t with n − 1
    degrees of freedom) and the mean difference."""
    from scipy import stats

    a = np.asarray(challenger_errors, np.float64)
    b = np.asarray(champion_errors, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired errors of shapes {a.shape} and {b.shape}: expected equal [n]")
    d = a - b
    n = int(d.size)
    h = max(1, int(horizon))
    out: dict[str, Any] = {"test": "diebold_mariano_hln", "n": n, "mean_difference": None}
    if n < 2:
        return {**out, "statistic": None, "p_value": 1.0, "note": "fewer than 2 windows"}
    mean = float(d.mean())
    out["mean_difference"] = mean
    centred = d - mean
    gamma = [float(centred[k:] @ centred[: n - k]) / n for k in range(min(h, n))]
    variance = (gamma[0] + 2.0 * sum(gamma[1:])) / n
    if variance <= 0:  # the HAC sum can go negative on short samples: lag 0 alone
        variance = gamma[0] / n
    if variance <= 0:  # identical errors on every window
        return {**out, "statistic": 0.0, "p_value": 1.0, "note": "identical errors"}
    dm = mean / math.sqrt(variance)
    factor = (n + 1 - 2 * h + h * (h - 1) / n) / n
    hln = dm * math.sqrt(factor) if factor > 0 else dm
    p = float(2.0 * stats.t.sf(abs(hln), df=n - 1))
    return {**out, "statistic": float(hln), "p_value": p}


def decide(
    mase: float,
    challenger_errors: np.ndarray,
    champion_errors: np.ndarray | None,
    *,
    horizon: int,
    alpha: float,
    champion_version: int | None = None,
) -> dict[str, Any]:
    """The verdict (see the module docstring): ``promoted``, ``alias``, ``reason`` and the
    statistics, JSON-able."""
    ours = np.asarray(challenger_errors, np.float64)
    out: dict[str, Any] = {
        "rule": "series_paired",
        "alpha": float(alpha),
        "mase": float(mase),
        "challenger_mean_error": float(ours.mean()) if ours.size else None,
        "champion_mean_error": None,
    }
    if not mase < 1:
        promoted = False
        reason = (
            f"test MASE {mase:.4f} is not below 1: the model does not beat the seasonal-naive "
            "forecast"
        )
    elif champion_errors is None:
        promoted, reason = True, f"no champion yet and test MASE {mase:.4f} is below 1"
    else:
        theirs = np.asarray(champion_errors, np.float64)
        test = diebold_mariano(ours, theirs, horizon)
        out["champion_mean_error"] = float(theirs.mean())
        out["paired_test"] = test
        promoted, reason = _paired_verdict(out, test, alpha, champion_version)
    out.update(promoted=promoted, alias=CHAMPION if promoted else CHALLENGER, reason=reason)
    return out


def _paired_verdict(
    out: dict[str, Any], test: dict[str, Any], alpha: float, champion_version: int | None
) -> tuple[bool, str]:
    ours, theirs = out["challenger_mean_error"], out["champion_mean_error"]
    who = f"champion v{champion_version}" if champion_version is not None else "the champion"
    p = float(test["p_value"])
    figures = f"mean window MAE {ours:.4g} vs {theirs:.4g}, DM-HLN p = {p:.3g}, n = {test['n']}"
    if p < alpha and ours < theirs:
        return True, f"significantly better than {who} ({figures})"
    if p < alpha and ours > theirs:
        return False, f"significantly worse than {who} ({figures})"
    if ours <= theirs:
        return True, f"no significant difference from {who}; lower or equal error ({figures})"
    return False, f"no significant difference from {who}; higher error ({figures})"


@dataclass(frozen=True)
class Forecaster:
    """The challenger as the series decision sees it: its test MASE, the scale MASE divides
    by (so that the champion's errors on the same windows give its MASE), its per-window
    errors, what it takes (``series.evaluation.inputs_tag``) and its horizon."""

    mase: float
    mase_scale: float
    errors: np.ndarray  # [n] mean absolute error per test window
    inputs: str
    horizon: int


def champion_problem(champion: ChampionSnapshot, challenger: Forecaster) -> str | None:
    """Why ``champion`` cannot be compared with ``challenger`` (another kind, window or
    horizon); None when it can, and its forecasts of the same windows are needed."""
    return comparability_problem(champion, (), 0, "series", challenger.inputs)


def decide_promotion(
    challenger: Forecaster,
    champion: ChampionSnapshot | None,
    champion_errors: np.ndarray | None,
    policy: Policy,
) -> PromotionDecision:
    """The registry's next move for the new forecaster. ``champion_errors``: the champion's
    per-window errors on the challenger's windows, required when it is comparable. The
    decision's ``champion_accuracy`` is the champion's MASE on those windows."""
    version = champion.version if champion is not None else None
    problem = champion_problem(champion, challenger) if champion is not None else None
    if problem is not None:
        return not_comparable(problem, version, policy)
    if champion is not None and champion_errors is None:
        raise ValueError("the champion must be scored on the same test windows first")
    champion_mase = None
    if champion_errors is not None:
        champion_mase = float(np.asarray(champion_errors).mean() / challenger.mase_scale)
    stats = decide(
        challenger.mase,
        challenger.errors,
        champion_errors,
        horizon=challenger.horizon,
        alpha=policy.rule.alpha,
        champion_version=version,
    )
    stats["champion_mase"] = champion_mase
    promoted, reason = bool(stats["promoted"]), str(stats["reason"])
    return apply_policy(stats, promoted, reason, version, champion_mase, policy)
