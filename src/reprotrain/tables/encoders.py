"""Text encoders: an embedded token sequence (masked where it is padding) → one vector.

``table.text_encoder`` names one: ``bilstm`` (the seed's sentiment model:
``Bidirectional(LSTM(64, return_sequences=True))`` → ``Bidirectional(LSTM(32))``), ``gru``
(one ``Bidirectional(GRU(32))``: a third of the BiLSTM's weights and time), ``average``
(``GlobalAveragePooling1D``, a bag of embeddings: the fastest, and on short texts about as
accurate; docs/benchmarks.md has the measurements that made it the default), or
``package.module:function`` for your own: ``fn(sequence, name)`` gets the
``[batch, steps, embedding_dim]`` KerasTensor (its padding mask attached by
``Embedding(mask_zero=True)``) and returns a ``[batch, features]`` KerasTensor built from
serialisable layers (a custom layer registered with
``keras.saving.register_keras_serializable`` and imported before loading).

Each built-in encoder honours the mask, so a text gives the same vector whatever it is
padded to (tests/tables/test_model.py checks it through the BiLSTM).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from reprotrain.config_kinds import TEXT_ENCODERS
from reprotrain.errors import ModelError

Encoder = Callable[[Any, str], Any]


def bilstm(sequence: Any, name: str) -> Any:
    """The seed's two stacked bidirectional LSTMs."""
    x = keras.layers.Bidirectional(
        keras.layers.LSTM(64, return_sequences=True), name=f"{name}_bilstm1"
    )(sequence)
    return keras.layers.Bidirectional(keras.layers.LSTM(32), name=f"{name}_bilstm2")(x)


def gru(sequence: Any, name: str) -> Any:
    """One bidirectional GRU: lighter than the BiLSTM stack."""
    return keras.layers.Bidirectional(keras.layers.GRU(32), name=f"{name}_bigru")(sequence)


def average(sequence: Any, name: str) -> Any:
    """The mean of the (unmasked) token embeddings."""
    return keras.layers.GlobalAveragePooling1D(name=f"{name}_average")(sequence)


BUILTIN: dict[str, Encoder] = {"bilstm": bilstm, "gru": gru, "average": average}
assert set(BUILTIN) == set(TEXT_ENCODERS)


def resolve(ref: str) -> Encoder:
    """A built-in encoder by name, or the user's ``package.module:function``."""
    if ref in BUILTIN:
        return BUILTIN[ref]
    from reprotrain.models.backbones import import_function

    return import_function(ref, key="table.text_encoder")


def encode(ref: str, sequence: Any, name: str) -> Any:
    """Apply encoder ``ref`` to ``sequence``; a user's encoder that fails or returns
    something other than a ``[batch, features]`` tensor is a one-line ModelError."""
    fn = resolve(ref)
    where = f"table.text_encoder = {ref!r}"
    try:
        out = fn(sequence, name)
    except Exception as exc:
        if ref in BUILTIN:
            raise
        raise ModelError(f"{where}: the function failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, keras.KerasTensor) or len(out.shape) != 2:
        shape = getattr(out, "shape", None)
        raise ModelError(
            f"{where}: returned {type(out).__name__} of shape {shape}; expected a "
            "[batch, features] KerasTensor built from the [batch, steps, dim] sequence"
        )
    return out
