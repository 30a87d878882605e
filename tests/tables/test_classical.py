"""The scikit-learn baseline on real prepared slices: the right classifier per schema,
probabilities in the order of schema.labels, beating the majority class on text."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from reprotrain.config_kinds import ColumnsConfig
from reprotrain.errors import ModelError
from reprotrain.tables import classical
from reprotrain.tables.prepare import Options, prepare_table
from reprotrain.tables.records import read_frame
from reprotrain.tables.schema import Schema


def _prepared(source: Path, work: Path) -> Path:
    (work / "raw").mkdir(parents=True)
    shutil.copy(source, work / "raw" / source.name)
    opts = Options(ColumnsConfig(), 0.15, 0.15, 0.5, 128, 50, 200, 0)
    prepare_table(work / "raw", work / "prepared", opts, work / "splits.csv", work / "schema.json")
    return work / "prepared"


@pytest.fixture(scope="module")
def trump(trump_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _prepared(trump_csv, tmp_path_factory.mktemp("trump"))


@pytest.fixture(scope="module")
def churn(churn_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _prepared(churn_csv, tmp_path_factory.mktemp("churn"))


def test_text_gets_tfidf_logistic_regression_and_beats_the_majority(
    trump: Path, tmp_path: Path
) -> None:
    schema = Schema.load(trump)
    train, test = read_frame(trump, "train"), read_frame(trump, "test")
    model = classical.fit_baseline(schema, train, max_tokens=5000)
    assert classical.describe(model) == "LogisticRegression"
    probs = classical.baseline_probs(model, test, schema)
    assert probs.shape == (len(test), len(schema.labels))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    acc = classical.accuracy(probs, test, schema)
    assert acc > classical.majority_accuracy(train, test, schema)
    path = classical.save_baseline(model, tmp_path / "baseline.joblib")
    again = classical.baseline_probs(classical.load_baseline(path), test, schema)
    np.testing.assert_array_equal(again, probs)


@pytest.fixture(scope="module")
def churn_model(churn: Path) -> object:
    return classical.fit_baseline(Schema.load(churn), read_frame(churn, "train"))


def test_numbers_and_categories_get_gradient_boosting(churn: Path, churn_model: object) -> None:
    schema = Schema.load(churn)
    val = read_frame(churn, "val")
    model = churn_model
    assert classical.describe(model) == "HistGradientBoostingClassifier"
    probs = classical.baseline_probs(model, val, schema)
    assert probs.shape == (len(val), 2) and 0.5 < classical.accuracy(probs, val, schema) <= 1


def test_columns_follow_schema_labels_and_unseen_classes_get_zero(
    churn: Path, churn_model: object
) -> None:
    schema = Schema.load(churn)
    train = read_frame(churn, "train")
    model = churn_model
    wider = Schema(**{**schema.to_dict(), "labels": ["0", "1", "2"]})  # type: ignore[arg-type]
    wider = Schema.from_dict(wider.to_dict())
    probs = classical.baseline_probs(model, train.iloc[:5], wider)
    assert probs.shape == (5, 3) and (probs[:, 2] == 0).all()
    reversed_schema = Schema.from_dict({**schema.to_dict(), "labels": ["1", "0"]})
    flipped = classical.baseline_probs(model, train.iloc[:5], reversed_schema)
    np.testing.assert_array_equal(
        flipped[:, ::-1], classical.baseline_probs(model, train.iloc[:5], schema)
    )


def test_a_bad_baseline_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found: run the baseline stage"):
        classical.load_baseline(tmp_path / "none.joblib")
    (tmp_path / "bad.joblib").write_bytes(b"not a pickle")
    with pytest.raises(ModelError, match="not a loadable baseline"):
        classical.load_baseline(tmp_path / "bad.joblib")
