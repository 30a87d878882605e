"""The classical baseline of the table kind: scikit-learn on the same splits as the
network, so that evaluate can say what the network gains over it.

A ``ColumnTransformer`` turns each role into features the usual way: numbers imputed
(median, with a missing-value indicator) and scaled, categories one-hot (an unseen one is
all zeros), each text column TF-IDF (words and word pairs, ``table.max_tokens`` features).
Then ``LogisticRegression`` when there is text (sparse, wide features: linear models are
the strong classic there), else ``HistGradientBoostingClassifier`` (the strong classic on
numbers and categories). Pure functions; the stage (stages/table/baseline.py) saves it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reprotrain.errors import DataError, ModelError
from reprotrain.fsio import atomic_path
from reprotrain.tables.schema import Schema

log = logging.getLogger(__name__)


def build_pipeline(schema: Schema, *, max_tokens: int = 20000, seed: int = 0) -> Any:
    """The unfitted scikit-learn pipeline for ``schema``'s inputs."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    dense = not schema.text  # gradient boosting takes dense features
    parts: list[tuple[str, Any, Any]] = []
    if schema.numeric:
        numbers = Pipeline(
            [
                ("impute", SimpleImputer(strategy="median", add_indicator=True)),
                ("scale", StandardScaler()),
            ]
        )
        parts.append(("numeric", numbers, list(schema.numeric)))
    if schema.categorical:
        onehot = OneHotEncoder(handle_unknown="ignore", sparse_output=not dense)
        parts.append(("categorical", onehot, list(schema.categorical)))
    for col in schema.text:  # a single column name: TfidfVectorizer gets the 1-D texts
        tfidf = TfidfVectorizer(max_features=max_tokens, ngram_range=(1, 2), sublinear_tf=True)
        parts.append((f"text:{col}", tfidf, col))
    features = ColumnTransformer(parts, sparse_threshold=0.0 if dense else 1.0)
    if dense:
        model: Any = HistGradientBoostingClassifier(random_state=seed)
    else:
        model = LogisticRegression(max_iter=2000, C=4.0, random_state=seed)
    return Pipeline([("features", features), ("classifier", model)])


def _inputs(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """The input columns as the pipeline expects them (strings with "" for missing)."""
    missing = [c for c in schema.inputs if c not in frame.columns]
    if missing:
        raise DataError(f"the frame lacks the schema's input column(s) {', '.join(missing)}")
    x = frame[list(schema.inputs)].copy()
    for col in (*schema.text, *schema.categorical):
        x[col] = x[col].fillna("").astype(str)
    for col in schema.numeric:
        x[col] = pd.to_numeric(x[col], errors="coerce").astype(float)
    return x


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS on one thread: the baseline's solver makes many small BLAS calls, and OpenBLAS
    threads that wait for a busy core made a 226-row LogisticRegression fit 10× slower
    (5.4 s against 0.5 s, the shared 2-core machine). threadpoolctl is scikit-learn's own
    requirement; without it nothing is limited."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def fit_baseline(
    schema: Schema, train: pd.DataFrame, *, max_tokens: int = 20000, seed: int = 0
) -> Any:
    """The baseline fitted on ``train`` (:func:`reprotrain.tables.records.read_frame`)."""
    pipeline = build_pipeline(schema, max_tokens=max_tokens, seed=seed)
    try:
        with _one_blas_thread():
            pipeline.fit(_inputs(train, schema), train[schema.label].astype(str).to_numpy())
    except ValueError as exc:  # e.g. TF-IDF: "empty vocabulary" when every text is empty
        raise DataError(
            f"the scikit-learn baseline cannot be fitted on the train split: {exc}"
        ) from None
    return pipeline


def baseline_probs(model: Any, frame: pd.DataFrame, schema: Schema) -> np.ndarray:
    """Class probabilities ``(len(frame), len(schema.labels))``, columns in the order of
    ``schema.labels`` (a class the baseline never saw gets 0)."""
    with _one_blas_thread():
        probs = model.predict_proba(_inputs(frame, schema))
    out = np.zeros((len(frame), len(schema.labels)), dtype=np.float64)
    where = {name: i for i, name in enumerate(schema.labels)}
    for j, name in enumerate(model.classes_):
        if str(name) in where:
            out[:, where[str(name)]] = probs[:, j]
    return out


def accuracy(probs: np.ndarray, frame: pd.DataFrame, schema: Schema) -> float:
    """Share of rows whose most probable class is their label."""
    if not len(frame):
        return float("nan")
    truth = frame[schema.label].astype(str).map({n: i for i, n in enumerate(schema.labels)})
    return float((probs.argmax(axis=1) == truth.to_numpy()).mean())


def majority_accuracy(train: pd.DataFrame, frame: pd.DataFrame, schema: Schema) -> float:
    """Accuracy of always answering the train split's most frequent class."""
    if not len(frame):
        return float("nan")
    majority = train[schema.label].astype(str).value_counts().idxmax()
    return float((frame[schema.label].astype(str) == majority).mean())


def save_baseline(model: Any, path: Path | str) -> Path:
    import joblib

    with atomic_path(path) as tmp:
        joblib.dump(model, tmp)
    return Path(path)


def load_baseline(path: Path | str) -> Any:
    """The fitted pipeline the baseline stage saved (a one-line ModelError otherwise)."""
    import joblib

    path = Path(path)
    try:
        model = joblib.load(path)
    except FileNotFoundError:
        raise ModelError(f"{path} not found: run the baseline stage (dvc repro baseline)") from None
    except Exception as exc:  # joblib/pickle raise many types for a bad file
        raise ModelError(
            f"{path}: not a loadable baseline ({type(exc).__name__}: {exc}); rebuild it with "
            "`dvc repro -f baseline`"
        ) from None
    if not hasattr(model, "predict_proba"):
        raise ModelError(f"{path} holds a {type(model).__name__}, not a fitted baseline")
    return model


def describe(model: Any) -> str:
    """The classifier's name (LogisticRegression, HistGradientBoostingClassifier)."""
    return type(model.steps[-1][1]).__name__
