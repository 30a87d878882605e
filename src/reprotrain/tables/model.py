"""The table model: raw columns in (a dict keyed by column name), class probabilities out.

The table counterpart of "raw 0–255 pixels in": every preprocessing step is a layer,
adapted on the train split only, so the saved model (and the served one, and its exports)
needs nothing but the raw cells (:mod:`reprotrain.tables.features` gives them one dtype):

* numbers → ``Concatenate`` → :class:`~reprotrain.tables.layers.ImputeMissing` (NaN → the
  train mean, plus a missing-indicator channel per column) → ``Normalization`` (the train
  split's mean and variance, NaN excluded; a constant channel keeps variance 1, so a value
  never seen in training cannot blow up to ±1e7);
* categories → ``StringLookup`` (sorted train vocabulary, one OOV bucket) → one-hot (up to
  :data:`ONE_HOT_MAX` values) or ``Embedding``;
* text → ``TextVectorization(max_tokens, output_sequence_length=sequence_length)`` →
  ``Embedding(mask_zero=True)`` → the text encoder (:mod:`reprotrain.tables.encoders`).

One Functional builder assembles them: one encoder per column, joined by ``Concatenate``,
then the Dense head (``table.hidden``, ``table.dropout``) and a float32 softmax.
``model.api`` picks the flavour: ``functional`` (the above), ``subclassed`` (the head made
of the registered :class:`~reprotrain.tables.layers.MLPBlock`), ``sequential`` (numbers only:
a ``keras.Sequential`` stack taking one ``[batch, n_numeric]`` tensor, columns in schema
order). Models are named ``table_<api>``: predict dispatches on the ``table`` prefix.

Why not ``keras.utils.FeatureSpace``: it would cover only the simplest part. Its
``float_normalized`` feature passes a missing value (NaN) to ``Normalization`` as it is, so
the imputation and the missing indicator would still be our layers; its ``adapt`` computes
statistics by iterating a ``tf.data`` dataset, where ours are exact numpy statistics of the
train split with NaN excluded; and a text column must stay a token sequence per column for
its encoder, so FeatureSpace would be used in ``output_mode="dict"`` as a dict of our own
layers. The same layers, built directly, keep one code path for the three ``model.api``
flavours.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from reprotrain.errors import ConfigError, DataError
from reprotrain.tables import encoders
from reprotrain.tables.features import InputSpec
from reprotrain.tables.layers import ImputeMissing, MLPBlock

logger = logging.getLogger(__name__)

MODEL_PREFIX = "table"
OUTPUT_NAME = "predictions"
#: The Sequential model's one input (the numeric columns, stacked in schema order).
NUMBERS_INPUT = "numbers"
#: A categorical column with at most this many train values is one-hot encoded; more get an
#: Embedding (a one-hot of hundreds of states would dwarf the other features).
ONE_HOT_MAX = 16
APIS = ("functional", "sequential", "subclassed")


def layer_name(column: str) -> str:
    """A column name usable in layer names (Keras refuses ``/``; keep them readable)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", column) or "column"


def numeric_stats(train: Mapping[str, np.ndarray], columns: Sequence[str]) -> dict[str, Any]:
    """The train split's fill values (means, NaN excluded) and the mean and variance of the
    imputed values and of the missing indicators, in the order ImputeMissing outputs them."""
    fill, means, variances, indicator_means, indicator_vars = [], [], [], [], []
    for column in columns:
        x = np.asarray(train[column], dtype=np.float64).ravel()
        missing = np.isnan(x)
        present = x[~missing]
        mean = float(present.mean()) if present.size else 0.0
        var = float(present.var()) if present.size else 0.0
        share = float(missing.mean()) if x.size else 0.0
        fill.append(mean)
        means.append(mean)  # imputing the mean leaves the mean as it is
        # NaN rows are imputed with the mean: they shrink the variance by the present share.
        variances.append(var * (1 - share) if var > 0 else 1.0)
        indicator_means.append(share)
        indicator_vars.append(share * (1 - share) if 0 < share < 1 else 1.0)
    return {
        "fill": fill,
        "mean": means + indicator_means,
        "variance": variances + indicator_vars,
    }


def _numeric_block(stats: Mapping[str, Any], x: Any) -> Any:
    x = ImputeMissing(stats["fill"], name="impute_missing")(x)
    return keras.layers.Normalization(
        mean=stats["mean"], variance=stats["variance"], name="normalize"
    )(x)


def _vocabulary(values: np.ndarray) -> list[str]:
    """Sorted distinct train values (sorted: the same lookup whatever the row order)."""
    vocab = sorted({str(v) for v in np.asarray(values, dtype=object).ravel()})
    if "[UNK]" in vocab:
        raise DataError("a categorical value is '[UNK]', StringLookup's out-of-vocabulary token")
    return vocab


def _categorical(column: str, train: np.ndarray, cfg: Any, x: Any) -> Any:
    vocab = _vocabulary(train)
    name = layer_name(column)
    if len(vocab) + 1 <= ONE_HOT_MAX:
        return keras.layers.StringLookup(
            vocabulary=vocab, output_mode="one_hot", name=f"{name}_lookup"
        )(x)
    ids = keras.layers.StringLookup(vocabulary=vocab, name=f"{name}_lookup")(x)
    dim = min(cfg.embedding_dim, max(4, math.ceil(1.6 * (len(vocab) + 1) ** 0.56)))
    x = keras.layers.Embedding(len(vocab) + 1, dim, name=f"{name}_embedding")(ids)
    return keras.layers.Flatten(name=f"{name}_flatten")(x)


def _text(column: str, train: np.ndarray, cfg: Any, x: Any) -> Any:
    name = layer_name(column)
    vectorize = keras.layers.TextVectorization(
        max_tokens=cfg.max_tokens,
        output_sequence_length=cfg.sequence_length,
        name=f"{name}_tokens",
    )
    texts = np.asarray(train, dtype=object).ravel().astype(str)
    vectorize.adapt(texts, batch_size=1024)
    size = vectorize.vocabulary_size()
    logger.info("text column %r: vocabulary of %d tokens", column, size)
    ids = vectorize(x)
    seq = keras.layers.Embedding(size, cfg.embedding_dim, mask_zero=True, name=f"{name}_embedding")(
        ids
    )
    return encoders.encode(cfg.text_encoder, seq, name)


def _join(features: list[Any]) -> Any:
    if not features:
        raise DataError("the table has no input columns: nothing to learn from (data.columns)")
    if len(features) == 1:
        return features[0]
    return keras.layers.Concatenate(name="features")(features)


def _head(x: Any, num_classes: int, cfg: Any, api: str) -> Any:
    for i, width in enumerate(cfg.hidden, start=1):
        if api == "subclassed":
            x = MLPBlock(width, cfg.dropout, name=f"mlp_block{i}")(x)
        else:
            x = keras.layers.Dense(width, activation="relu", name=f"hidden{i}")(x)
            x = keras.layers.Dropout(cfg.dropout, name=f"dropout{i}")(x)
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=OUTPUT_NAME)(
        x
    )


def build(
    spec: InputSpec,
    num_classes: int,
    train: Mapping[str, np.ndarray],
    cfg: Any,
    api: str = "functional",
) -> Any:
    """The table model for ``spec``'s columns, its preprocessing adapted on ``train`` (the
    train split's input dict, :func:`~reprotrain.tables.features.model_inputs`). ``cfg`` is
    ``params.table``; ``api`` is ``model.api``."""
    if api not in APIS:
        raise ConfigError(f"model.api = {api!r}: one of {', '.join(APIS)}")
    if num_classes < 2:
        raise DataError(f"the label has {num_classes} class: a classifier needs two or more")
    if api == "sequential":
        return _sequential(spec, num_classes, train, cfg)
    inputs: dict[str, Any] = {}
    features: list[Any] = []
    for column in spec.text:
        inputs[column] = keras.Input((1,), dtype="string", name=layer_name(column))
        features.append(_text(column, train[column], cfg, inputs[column]))
    if spec.numeric:
        for column in spec.numeric:
            inputs[column] = keras.Input((1,), dtype="float32", name=layer_name(column))
        stats = numeric_stats(train, spec.numeric)
        columns = [inputs[c] for c in spec.numeric]
        numbers = (
            columns[0] if len(columns) == 1 else keras.layers.Concatenate(name="numbers")(columns)
        )
        features.append(_numeric_block(stats, numbers))
    for column in spec.categorical:
        inputs[column] = keras.Input((1,), dtype="string", name=layer_name(column))
        features.append(_categorical(column, train[column], cfg, inputs[column]))
    outputs = _head(_join(features), num_classes, cfg, api)
    return keras.Model(inputs, outputs, name=f"{MODEL_PREFIX}_{api}")


def _sequential(
    spec: InputSpec, num_classes: int, train: Mapping[str, np.ndarray], cfg: Any
) -> Any:
    """The seed's Sequential stack, numbers only."""
    others = [*spec.text, *spec.categorical]
    if others or not spec.numeric:
        what = f"non-numeric column(s) {', '.join(others)}" if others else "no numeric column"
        raise ConfigError(
            f"model.api = sequential takes numbers only, and this table has {what}; use "
            "model.api: functional (or subclassed), or list them in data.columns.ignore"
        )
    stats = numeric_stats(train, spec.numeric)
    layers: list[Any] = [
        keras.Input((len(spec.numeric),), dtype="float32", name=NUMBERS_INPUT),
        ImputeMissing(stats["fill"], name="impute_missing"),
        keras.layers.Normalization(
            mean=stats["mean"], variance=stats["variance"], name="normalize"
        ),
    ]
    for i, width in enumerate(cfg.hidden, start=1):
        layers.append(keras.layers.Dense(width, activation="relu", name=f"hidden{i}"))
        layers.append(keras.layers.Dropout(cfg.dropout, name=f"dropout{i}"))
    layers.append(
        keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=OUTPUT_NAME)
    )
    return keras.Sequential(layers, name=f"{MODEL_PREFIX}_sequential")


def is_table_model(model: Any) -> bool:
    return str(getattr(model, "name", "")).startswith(MODEL_PREFIX)
