"""The table evaluate's pure parts: baseline gain, the accuracy floor, worst rows, the test
digest, the card, and the gate across kinds (real decision functions, no store)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from reprotrain.evaluation import decision
from reprotrain.evaluation.gate import GateRule
from reprotrain.tables import card, evaluation
from reprotrain.tables.features import InputSpec

LABELS = ["no", "yes"]


def test_baseline_gain_is_paired_and_says_so() -> None:
    y = np.array([0, 1] * 50)
    base = y.copy()
    base[:30] = 1 - base[:30]  # 30 wrong
    net = y.copy()  # all right: 30 fixed, 0 broken
    gain = evaluation.baseline_gain(y, base, net, alpha=0.05)
    assert gain["verdict"] == "better" and gain["delta"] == pytest.approx(0.3)
    assert gain["mcnemar"]["challenger_only"] == 30 and gain["mcnemar"]["champion_only"] == 0
    assert gain["summary"].startswith("the network beats the classical baseline: 70.0% -> 100.0%")
    same = evaluation.baseline_gain(y, y, y, alpha=0.05)
    assert same["verdict"] == "no_gain" and "not significantly" in same["summary"]


def test_accuracy_floor() -> None:
    assert evaluation.accuracy_floor(0.7, 0.8) == (0.7, "table.min_accuracy")
    assert evaluation.accuracy_floor(None, 0.8)[0] == 0.8
    assert evaluation.accuracy_floor(None, None)[0] == 0.0


def _frame():
    return pd.DataFrame(
        {"text": ["a" * 300, "b", "c"], "n": [1.1, np.nan, 3.0]}, index=pd.Index([2, 5, 9])
    )


def test_worst_rows_and_prediction_rows() -> None:
    spec = InputSpec(text=("text",), numeric=("n",))
    y = np.array([0, 0, 1])
    probs = np.array([[0.1, 0.9], [0.4, 0.6], [0.2, 0.8]])
    worst = evaluation.worst_rows(_frame(), y, probs, LABELS, spec, k=5)
    assert [w["row"] for w in worst] == [2, 5]  # most confident mistake first
    assert len(worst[0]["text"]) == evaluation.TEXT_CHARS and worst[1]["n"] is None
    rows = evaluation.prediction_rows(_frame(), y, probs, LABELS)
    assert rows[2] == {
        "row": 9,
        "true_label": "yes",
        "predicted_label": "yes",
        "confidence": 0.8,
        "prob_no": 0.2,
        "prob_yes": 0.8,
    }


def test_test_digest_ignores_order_and_sees_content() -> None:
    f = _frame()
    y = np.array([0, 0, 1])
    d = evaluation.test_digest(f, y)
    assert evaluation.test_digest(f.iloc[::-1], y[::-1]) == d
    assert evaluation.test_digest(f, np.array([0, 1, 1])) != d


def test_a_champion_of_another_kind_or_other_inputs_is_not_comparable() -> None:
    y = np.array([0, 1, 0, 1])
    probs = np.eye(2)[y]
    inputs = json.dumps(InputSpec(numeric=("n",)).to_dict(), sort_keys=True)
    challenger = decision.Challenger(y, probs, tuple(LABELS), 0, "d", kind="table", inputs=inputs)
    policy = decision.Policy("paired", GateRule(0.0))
    for champion, words in (
        (decision.ChampionSnapshot(1, labels=tuple(LABELS), image_size=224), "data.kind images"),
        (decision.ChampionSnapshot(1, tuple(LABELS), kind="table", inputs="{}"), "other inputs"),
    ):
        assert not decision.needs_champion_scores(champion, challenger, policy)
        verdict = decision.decide_promotion(challenger, champion, policy)
        assert not verdict.comparable and verdict.alias is None and words in verdict.reason


def test_card_has_every_section() -> None:
    text = card.render_card(
        card.TableCard(
            model_name="m",
            version=3,
            keras_name="table_functional",
            labels=LABELS,
            schema={"label": "label", "text": ["t|x"], "numeric": ["n"], "categorical": []},
            metrics={"accuracy": 0.75, "per_class": {}},
            counts={"test": 4},
            params={"table": {"text_encoder": "average"}, "model": {"api": "functional"}},
            run_id="r",
            reproduce="python -m reprotrain reproduce r",
            baseline_gain=evaluation.baseline_gain(
                np.array([0, 1]), np.array([0, 0]), np.array([0, 1]), alpha=0.05
            ),
            importance=[{"column": "n", "role": "numeric", "drop": 0.1, "std": 0.01}],
            worst=[{"row": 2, "true": "no", "predicted": "yes", "confidence": 0.9, "n": 1.0}],
            promotion={"promoted": False, "alias": None, "comparable": False, "reason": "x"},
            floor=(0.8, "the classical baseline's test accuracy"),
        )
    )
    for section in (
        "Data and inputs",
        "Test metrics",
        "Gain over the classical baseline",
        "Permutation importance",
        "Worst test errors",
        "Promotion gate",
        "Exported formats",
        "Reproduce",
    ):
        assert f"## {section}" in text
    assert "t\\|x" in text and "0.8000 (the classical baseline's test accuracy)" in text
