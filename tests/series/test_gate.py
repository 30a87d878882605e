"""The series gate: MASE ≥ 1 never promotes; DM-HLN on paired window errors."""

from __future__ import annotations

import numpy as np
import pytest

from reprotrain.series import gate


def test_mase_of_one_or_more_never_promotes() -> None:
    v = gate.decide(1.0, np.ones(10), None, horizon=4, alpha=0.05)
    assert not v["promoted"] and "not below 1" in v["reason"]
    v = gate.decide(0.7, np.ones(10), None, horizon=4, alpha=0.05)
    assert v["promoted"] and v["alias"] == "champion"


def test_significantly_better_worse_and_ties() -> None:
    rng = np.random.default_rng(1)
    champ = 1.0 + rng.random(60)
    better = gate.decide(0.5, champ - 0.3, champ, horizon=4, alpha=0.05, champion_version=3)
    assert better["promoted"] and "significantly better than champion v3" in better["reason"]
    assert better["paired_test"]["p_value"] < 0.05
    worse = gate.decide(0.5, champ + 0.3, champ, horizon=4, alpha=0.05)
    assert not worse["promoted"] and "significantly worse" in worse["reason"]
    same = gate.decide(0.5, champ, champ, horizon=4, alpha=0.05)
    assert same["promoted"] and same["paired_test"]["p_value"] == 1.0
    noisy = champ + rng.normal(scale=0.5, size=60) + 0.01
    v = gate.decide(0.5, noisy, champ, horizon=4, alpha=0.05)
    assert v["paired_test"]["p_value"] > 0.05
    assert v["promoted"] == (noisy.mean() <= champ.mean())


def test_dm_hln_matches_a_hand_computation() -> None:
    d_a = np.array([1.0, 2.0, 0.5, 1.5, 3.0, 0.0, 1.0, 2.5])
    d_b = np.zeros(8)
    out = gate.diebold_mariano(d_a, d_b, horizon=2)
    d = d_a - d_b
    n, h = 8, 2
    c = d - d.mean()
    g0, g1 = c @ c / n, c[1:] @ c[:-1] / n
    dm = d.mean() / np.sqrt((g0 + 2 * g1) / n)
    hln = dm * np.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)
    assert out["statistic"] == pytest.approx(hln)
    from scipy import stats

    assert out["p_value"] == pytest.approx(2 * stats.t.sf(abs(hln), n - 1))


def _forecaster(errors: np.ndarray, mase: float = 0.5, inputs: str = "w4h3") -> gate.Forecaster:
    return gate.Forecaster(mase, 2.0, errors, inputs, horizon=3)


def test_decide_promotion_from_the_snapshot_and_the_errors() -> None:
    """The whole series decision, pure: not comparable, no champion, a champion beaten on
    the same windows (its MASE from the challenger's scale), and the shared policy."""
    from reprotrain.evaluation import decision
    from reprotrain.evaluation.gate import GateRule

    rng = np.random.default_rng(0)
    theirs = 1 + rng.random(40)
    ours = _forecaster(theirs - 0.5 + 0.05 * rng.random(40))
    policy = decision.Policy("series_paired", GateRule(0.0, alpha=0.05), "demand")
    other = decision.ChampionSnapshot(2, kind="series", inputs="w8h3")
    d = gate.decide_promotion(ours, other, None, policy)
    assert not d.comparable and d.alias is None and "other inputs" in d.reason
    assert d.champion_accuracy is None and gate.champion_problem(other, ours) is not None
    first = gate.decide_promotion(ours, None, None, policy)
    assert first.promote and first.alias == "champion" and first.champion_version is None
    champion = decision.ChampionSnapshot(3, kind="series", inputs="w4h3")
    assert gate.champion_problem(champion, ours) is None
    with pytest.raises(ValueError, match="scored on the same test windows"):
        gate.decide_promotion(ours, champion, None, policy)
    beaten = gate.decide_promotion(ours, champion, theirs, policy)
    assert beaten.promote and "significantly better than champion v3" in beaten.reason
    assert beaten.champion_accuracy == pytest.approx(theirs.mean() / 2.0)
    assert beaten.gate["champion_mase"] == beaten.champion_accuracy
    not_below_one = gate.decide_promotion(
        _forecaster(theirs - 0.5, mase=1.2), champion, theirs, policy
    )
    assert not not_below_one.promote and not_below_one.alias == "challenger"
    replay = decision.Policy("series_paired", GateRule(0.0), "demand", reproduces="run1")
    assert gate.decide_promotion(ours, champion, theirs, replay).alias is None
