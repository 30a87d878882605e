"""The paired promotion gate on constructed prediction sets whose right decision is known:
McNemar by hand, the bootstrap interval, per-class recall, the power warning, and the rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reprotrain.evaluation import gate

LABELS = ["ants", "bees"]


def probs_for(y: np.ndarray, correct: np.ndarray, confidence: float = 0.8) -> np.ndarray:
    """Two-class probabilities that are right exactly where ``correct`` says, with the
    given confidence in the predicted class."""
    pred = np.where(correct, y, 1 - y)
    p = np.full((y.size, 2), 1 - confidence)
    p[np.arange(y.size), pred] = confidence
    return p


def pair(n: int, both: int, only_ch: int, only_cp: int) -> tuple[np.ndarray, np.ndarray]:
    """Correctness vectors with the given agreement counts (the rest: both wrong)."""
    ch = np.zeros(n, bool)
    cp = np.zeros(n, bool)
    ch[:both] = cp[:both] = True
    ch[both : both + only_ch] = True
    cp[both + only_ch : both + only_ch + only_cp] = True
    return ch, cp


def test_mcnemar_exact_by_hand() -> None:
    ch, cp = pair(20, 10, 6, 0)
    r = gate.mcnemar_exact(ch, cp)
    assert (r["challenger_only"], r["champion_only"]) == (6, 0)
    assert r["p_value"] == pytest.approx(2 * 0.5**6)  # 0.03125
    assert r["p_better"] == pytest.approx(0.5**6)
    assert r["p_worse"] == pytest.approx(1.0)
    ch, cp = pair(20, 10, 5, 1)
    # P(X <= 1 or X >= 5), X ~ Bin(6, 1/2) = 2 * (1 + 6) / 64
    assert gate.mcnemar_exact(ch, cp)["p_value"] == pytest.approx(14 / 64)
    same = np.ones(5, bool)
    assert gate.mcnemar_exact(same, same)["p_value"] == 1.0


def test_paired_bootstrap_is_seeded_and_brackets_the_difference() -> None:
    ch, cp = pair(100, 70, 12, 4)
    a = gate.paired_bootstrap_ci(ch, cp, n_boot=4000, seed=3)
    assert a == gate.paired_bootstrap_ci(ch, cp, n_boot=4000, seed=3)
    assert a["difference"] == pytest.approx(0.08)
    assert a["low"] < 0.08 < a["high"]
    # Rough check against the normal approximation of the paired difference.
    d = ch.astype(int) - cp.astype(int)
    se = d.std() / np.sqrt(d.size)
    assert a["low"] == pytest.approx(0.08 - 1.96 * se, abs=0.015)
    agree = gate.paired_bootstrap_ci(ch, ch, n_boot=100)
    assert (agree["low"], agree["high"]) == (0.0, 0.0)


def test_class_recall_regression_is_caught() -> None:
    y = np.array([0] * 10 + [1] * 10)
    champion = y.copy()
    challenger = y.copy()
    challenger[10:13] = 0  # bees recall 1.0 → 0.7
    r = gate.class_recall_regressions(y, challenger, champion, LABELS, 0.2)
    assert r["regressed"] == ["bees"]
    assert r["per_class"]["bees"]["change"] == pytest.approx(-0.3)
    assert gate.class_recall_regressions(y, challenger, champion, LABELS, 0.3)["regressed"] == []


def test_power_warning_when_the_test_set_is_too_small() -> None:
    small = gate.power_check(81, 0.05, 0.02)
    assert small["underpowered"] and "81 images" in small["warning"]
    assert small["required_n"] > 81
    big = gate.power_check(small["required_n"], 0.05, 0.02)
    assert not big["underpowered"] and big["warning"] is None
    assert big["minimum_detectable_difference"] <= 0.02 + 1e-9
    # No particular gain asked for: nothing to be underpowered for, but the size is stated.
    none = gate.power_check(81, 0.05, 0.0)
    assert not none["underpowered"] and none["minimum_detectable_difference"] > 0


def test_significantly_better_is_promoted() -> None:
    y = np.arange(200) % 2
    ch, cp = pair(200, 150, 30, 2)
    d = gate.decide_paired(
        y, probs_for(y, ch, 0.999), probs_for(y, cp, 0.6), LABELS, gate.GateRule(min_accuracy=0.5)
    )
    # Promoted although its log loss is worse: the accuracy gain is significant.
    assert d["tie_breaker"]["challenger"] > d["tie_breaker"]["champion"]
    assert d["promoted"] and d["alias"] == gate.CHAMPION
    assert "significantly better" in d["reason"]
    json.dumps(d, allow_nan=False)


def test_significantly_worse_is_not_promoted_even_with_a_lower_loss() -> None:
    y = np.arange(200) % 2
    ch, cp = pair(200, 150, 2, 30)
    d = gate.decide_paired(
        y,
        probs_for(y, ch, 0.55),
        probs_for(y, cp, 0.999),
        LABELS,
        # max_class_regression=1.0: judge the overall difference alone here
        gate.GateRule(min_accuracy=0.5, max_class_regression=1.0),
    )
    assert d["tie_breaker"]["challenger"] < d["tie_breaker"]["champion"]
    assert not d["promoted"] and d["alias"] == gate.CHALLENGER
    assert "significantly worse" in d["reason"]


def test_no_significant_difference_falls_to_the_log_loss() -> None:
    y = np.arange(81) % 2
    ch, cp = pair(81, 70, 3, 2)  # one image apart: noise
    sharper = gate.decide_paired(
        y, probs_for(y, ch, 0.9), probs_for(y, cp, 0.7), LABELS, gate.GateRule(min_accuracy=0.5)
    )
    assert sharper["promoted"] and "lower or equal log loss" in sharper["reason"]
    blunter = gate.decide_paired(
        y, probs_for(y, ch, 0.7), probs_for(y, cp, 0.9), LABELS, gate.GateRule(min_accuracy=0.5)
    )
    assert not blunter["promoted"] and "higher log loss" in blunter["reason"]
    # The old rule would have promoted on the 1-image gain, without a word of doubt.
    assert gate.decide(
        blunter["challenger_accuracy"], blunter["champion_accuracy"], 0.5, 0
    ).promoted
    weak = gate.decide_paired(
        y,
        probs_for(y, ch),
        probs_for(y, cp),
        LABELS,
        gate.GateRule(min_accuracy=0.5, min_improvement=0.02),
    )
    assert weak["power"]["underpowered"]


def test_a_class_regression_blocks_a_better_model() -> None:
    y = np.array([0] * 150 + [1] * 50)
    ch = np.ones(200, bool)
    cp = np.ones(200, bool)
    cp[:60] = False  # the champion misses 60 ants
    ch[150:165] = False  # the challenger misses 15 bees: bees recall 1.0 → 0.7
    d = gate.decide_paired(
        y,
        probs_for(y, ch),
        probs_for(y, cp),
        LABELS,
        gate.GateRule(min_accuracy=0.5, max_class_regression=0.1),
    )
    assert d["mcnemar"]["p_value"] < 0.05 and d["challenger_accuracy"] > d["champion_accuracy"]
    assert not d["promoted"] and "recall of bees" in d["reason"]


def test_floor_and_first_model() -> None:
    y = np.arange(10) % 2
    good = probs_for(y, np.ones(10, bool))
    first = gate.decide_paired(y, good, None, LABELS, gate.GateRule(min_accuracy=0.9))
    assert first["promoted"] and "no champion" in first["reason"]
    low = gate.decide_paired(
        y, probs_for(y, np.arange(10) < 5), good, LABELS, gate.GateRule(min_accuracy=0.9)
    )
    assert not low["promoted"] and "below the floor" in low["reason"]
