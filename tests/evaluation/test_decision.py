"""The promotion decision, pure: a champion snapshot and the challenger's predictions in, what
the registry should do out (no tracking store involved)."""

from __future__ import annotations

import numpy as np
import pytest

from reprotrain.evaluation import decision as d
from reprotrain.evaluation.gate import CHALLENGER, CHAMPION, GateRule

LABELS = ("ants", "bees")
Y = np.arange(100) % 2


def probs(correct: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    """Two-class probabilities right where ``correct`` is True."""
    pred = np.where(correct, Y, 1 - Y)
    out = np.full((Y.size, 2), 1 - confidence)
    out[np.arange(Y.size), pred] = confidence
    return out


GOOD = probs(np.ones(100, bool))  # 1.00
WEAK = probs(np.arange(100) >= 20)  # 0.80


def challenger(p: np.ndarray = GOOD, digest: str = "t1") -> d.Challenger:
    return d.Challenger(Y, p, LABELS, 224, digest)


def policy(gate: str = "paired", **kw) -> d.Policy:
    return d.Policy(gate, GateRule(min_accuracy=0.9), registered_model="clf", **kw)


def champion(**kw) -> d.ChampionSnapshot:
    return d.ChampionSnapshot(3, labels=LABELS, image_size=224, **kw)


def test_no_champion_the_floor_decides() -> None:
    first = d.decide_promotion(challenger(), None, policy())
    assert (first.alias, first.promote, first.comparable) == (CHAMPION, True, True)
    assert first.champion_version is None and "no champion" in first.reason
    low = d.decide_promotion(challenger(WEAK), None, policy())
    assert (low.alias, low.promote) == (CHALLENGER, False) and "below the floor" in low.reason


def test_a_champion_of_another_task_is_not_comparable_and_never_scored() -> None:
    for other, words in (
        (d.ChampionSnapshot(3, labels=("cats", "dogs"), image_size=224), "2 other classes"),
        (d.ChampionSnapshot(3, labels=("bees", "ants"), image_size=224), "orders its classes"),
        (d.ChampionSnapshot(3, labels=LABELS, image_size=160), "takes 160×160 images"),
    ):
        assert not d.needs_champion_scores(other, challenger(), policy())
        out = d.decide_promotion(challenger(), other, policy())
        assert out.alias is None and not out.promote and not out.comparable, out
        assert words in out.reason and "champion v3" in out.reason
        assert out.reason_for(4).endswith(
            "v4 is registered without an alias. Use a new tracking.registered_model for the "
            "new task, or promote it explicitly: python -m reprotrain promote clf 4 --reason '...'"
        )
    # A champion from before the tags existed is compared (nothing says it differs).
    assert d.needs_champion_scores(d.ChampionSnapshot(3), challenger(), policy())


def test_a_champion_of_another_kind_or_other_inputs_is_not_comparable() -> None:
    """Switching data.kind under one registered model: the gate says why, never crashes."""
    table = d.Challenger(Y, GOOD, LABELS, 0, "t1", kind="table", inputs='["age","text"]')
    image_champion = champion()  # kind images (also what a version without the tag means)
    out = d.decide_promotion(table, image_champion, policy())
    assert not out.comparable and out.alias is None
    assert "champion v3 is of data.kind images; this model is of data.kind table" in out.reason
    other = d.ChampionSnapshot(3, labels=LABELS, kind="table", inputs='["age"]')
    out = d.decide_promotion(table, other, policy())
    assert not out.comparable and "takes other inputs" in out.reason
    same = d.ChampionSnapshot(3, labels=LABELS, image_size=0, kind="table", inputs=table.inputs)
    assert d.needs_champion_scores(same, table, policy())


def test_the_policy_rules_hold_for_any_gate() -> None:
    """A kind with its own gate (series) gets the same reproduction / experiment / review
    rules from apply_policy."""
    assert d.apply_policy(None, True, "ok", None, None, policy()).alias == CHAMPION
    rep = d.apply_policy(None, True, "ok", 2, 0.5, policy(reproduces="abc"))
    assert rep.alias is None and not rep.promote and "reproduction of run abc" in rep.reason
    exp = d.apply_policy(None, True, "ok", 2, 0.5, policy(experiment="exp-1"))
    assert (exp.alias, exp.promote) == (CHALLENGER, False)
    review = d.apply_policy(None, True, "ok", 2, 0.5, policy(mode=CHALLENGER))
    assert review.proposed and review.alias == CHALLENGER and "decided against v2" in review.reason
    nc = d.not_comparable("champion v2 forecasts 4 steps", 2, policy())
    assert not nc.comparable and nc.alias is None and "forecasts 4 steps" in nc.reason


def test_what_must_be_scored_before_deciding() -> None:
    recorded = champion(accuracy=0.95, test_digest="t1")
    assert d.needs_champion_scores(recorded, challenger(), policy("paired"))  # always predictions
    assert not d.needs_champion_scores(recorded, challenger(), policy("accuracy"))
    assert d.needs_champion_scores(recorded, challenger(digest="t2"), policy("accuracy"))
    with pytest.raises(ValueError, match="scored on the current test set first"):
        d.decide_promotion(challenger(), recorded, policy("paired"))
    scored = recorded.scored(WEAK, Y, "t1")
    assert scored.accuracy == pytest.approx(0.8) and not d.needs_champion_scores(
        scored, challenger(), policy()
    )


def test_the_paired_gate_compares_on_the_same_images() -> None:
    better = d.decide_promotion(challenger(), champion().scored(WEAK, Y, "t1"), policy())
    assert better.promote and better.alias == CHAMPION and better.champion_version == 3
    assert better.gate["mcnemar"]["challenger_only"] == 20
    assert better.champion_accuracy == pytest.approx(0.8)
    worse = d.decide_promotion(
        challenger(probs(np.arange(100) >= 8)), champion().scored(GOOD, Y, "t1"), policy()
    )
    assert not worse.promote and worse.alias == CHALLENGER and "recall of" in worse.reason


def test_the_accuracy_gate_uses_the_recorded_accuracy_on_the_same_test_set() -> None:
    out = d.decide_promotion(
        challenger(), champion(accuracy=0.99, test_digest="t1"), policy("accuracy")
    )
    assert out.promote and out.gate is None and "beats the champion's 0.9900" in out.reason


def test_reproductions_experiments_and_review_mode_never_move_champion() -> None:
    scored = champion().scored(WEAK, Y, "t1")
    rerun = d.decide_promotion(challenger(), scored, policy(reproduces="abc"))
    assert (rerun.alias, rerun.promote, rerun.proposed) == (None, False, False)
    assert rerun.reason == "reproduction of run abc: registry aliases left unchanged"
    exp = d.decide_promotion(challenger(), scored, policy(experiment="lucky-lion"))
    assert (exp.alias, exp.promote) == (CHALLENGER, False)
    assert exp.reason.startswith("DVC experiment lucky-lion: the gate would promote")
    review = d.decide_promotion(challenger(), scored, policy(mode=CHALLENGER))
    assert (review.alias, review.promote, review.proposed) == (CHALLENGER, False, True)
    assert "decided against v3" in review.reason and review.mode == CHALLENGER
    assert "v7 is the challenger" in review.reason_for(7)
    # A gate that fails is a plain challenger in every mode: nothing to propose.
    failed = d.decide_promotion(challenger(WEAK), scored, policy(mode=CHALLENGER))
    assert (failed.alias, failed.promote, failed.proposed) == (CHALLENGER, False, False)
