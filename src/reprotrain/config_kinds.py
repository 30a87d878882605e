"""The training knobs every kind shares (:class:`TrainConfig`) and the sections of the
table and series kinds (``data.columns``, ``table:``, ``series:``).

Apart from ``config.py`` so that each kind's knobs are read in one place; ``config.Params``
assembles them. Help texts are the fields' descriptions (``docs/params.schema.json``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator

from reprotrain.config_validation import (
    Bool,
    ClassWeight,
    Float,
    Int,
    Str,
    builtin_or_ref,
    rule_error,
    section,
)
from reprotrain.config_validation import field as _f

#: The kinds of data a pipeline can be built for (``data.kind``).
DATA_KINDS = ("images", "table", "series")


@section
class TrainConfig:
    """Knobs shared by the train_head and finetune sections."""

    optimizer: Literal["adam", "sgd", "rmsprop", "adamw"] = _f("adam", "optimizer")
    learning_rate: Float = _f(1e-3, "initial learning rate", gt=0.0, max=1.0)
    epochs: Int = _f(10, "maximum epochs", min=1, max=10000)
    batch_size: Int = _f(32, "batch size", min=1, max=4096)
    class_weight: ClassWeight = _f("none", "'none', 'balanced', or a map {class_name: weight}")
    augment: Bool = _f(False, "apply random augmentation to training batches")
    early_stopping_patience: Int = _f(
        3, "epochs without val_loss improvement before stopping", min=1
    )
    reduce_lr_patience: Int = _f(2, "epochs without improvement before halving the LR", min=1)
    loop: Literal["fit", "custom"] = _f("fit", "'fit' or a custom GradientTape loop")
    clip_norm: Float | None = _f(None, "clip gradients by global norm (custom loop)", gt=0.0)
    schedule: Literal["constant", "cosine"] = _f(
        "constant",
        "'constant' (ReduceLROnPlateau halves it on plateaus) or 'cosine' (CosineDecay to 0 "
        "over the epochs after warmup_epochs of linear warmup; no ReduceLROnPlateau)",
    )
    warmup_epochs: Int = _f(0, "epochs of linear warmup from 0 (schedule: cosine)", min=0)
    label_smoothing: Float = _f(
        0.0, "label smoothing of the cross-entropy (0: off)", min=0.0, lt=1.0
    )

    def __post_init__(self) -> None:
        """Warmup must leave epochs to decay over (else the rate never comes down)."""
        if self.schedule == "cosine" and self.warmup_epochs >= self.epochs:
            rule = f"must be less than epochs ({self.epochs}) with schedule: cosine"
            raise rule_error(rule, suffix=".warmup_epochs", value=self.warmup_epochs)


@section
class ColumnsConfig:
    """The roles of a table's or a series' columns (``data.columns``); a role left out
    (null) is inferred by prepare, and what it inferred is saved as the schema."""

    label: Str | None = _f(None, "table: the label column (null: a column named 'label')")
    text: tuple[Str, ...] | None = _f(
        None, "table: free-text columns (TextVectorization → Embedding → text encoder)"
    )
    numeric: tuple[Str, ...] | None = _f(
        None, "table: numeric columns (Normalization; missing values imputed, with an indicator)"
    )
    categorical: tuple[Str, ...] | None = _f(
        None, "table: columns with a few distinct values (StringLookup → Embedding or one-hot)"
    )
    split: Str | None = _f(
        None, "table: a column giving each row's split (train|val|test); respected when set"
    )
    ignore: tuple[Str, ...] = _f((), "columns never used as inputs (ids, free-form notes)")
    time: Str | None = _f(
        None,
        "series: the timestamp column (null: one named time, date, timestamp, datetime or ds, "
        "else the only column that parses as dates)",
    )
    target: Str | None = _f(None, "series: the value to forecast (null: the only numeric column)")
    covariates: tuple[Str, ...] | None = _f(
        None, "series: other numeric columns known up to 'now' (extra input channels)"
    )


#: Text encoders of the table kind (``reprotrain.tables``).
TEXT_ENCODERS = ("bilstm", "gru", "average")
TextEncoder = Annotated[str, BeforeValidator(builtin_or_ref(TEXT_ENCODERS))]


@section
class TableConfig(TrainConfig):
    """The table kind's model and its training (data.kind: table)."""

    text_encoder: TextEncoder = _f(
        "average",
        "bilstm (Embedding → Bidirectional LSTM ×2), gru (lighter), average (Embedding → "
        "GlobalAveragePooling1D), or 'package.module:function' for your own",
    )
    max_tokens: Int = _f(20000, "vocabulary size of each text column", min=10)
    sequence_length: Int = _f(200, "tokens kept per text (longer texts are truncated)", min=1)
    embedding_dim: Int = _f(64, "embedding width (text and categories)", min=1)
    hidden: tuple[Int, ...] = _f((64,), "Dense widths of the head after Concatenate", min_length=1)
    dropout: Float = _f(0.2, "dropout after each hidden layer", min=0.0, lt=1.0)
    max_categories: Int = _f(
        50,
        "inference: a string column with at most this many distinct values is categorical",
        min=2,
    )
    batch_size: Int = _f(64, "batch size", min=1, max=4096)
    min_accuracy: Float | None = _f(
        None,
        "the promotion gate's test-accuracy floor for tables (null: the classical baseline's "
        "test accuracy; evaluate.min_accuracy is the image kind's)",
        min=0.0,
        max=1.0,
    )


#: Forecasting models of the series kind (``reprotrain.series``).
SERIES_MODELS = ("lstm", "gru", "stacked")
SeriesModel = Annotated[str, BeforeValidator(builtin_or_ref(SERIES_MODELS))]


@section
class SeriesConfig(TrainConfig):
    """The series kind: windows, the forecaster and its training (data.kind: series)."""

    window: Int = _f(52, "past steps the model sees", min=1)
    horizon: Int = _f(8, "steps ahead it predicts (all at once)", min=1)
    season: Int = _f(52, "period of the seasonal-naive baseline and of MASE", min=1)
    model: SeriesModel = _f(
        "lstm", "lstm (LSTM(units) → Dense(horizon)), gru, stacked, or 'package.module:function'"
    )
    units: Int = _f(64, "recurrent units", min=1)
    loss: Literal["mse", "mae"] = _f(
        "mse", "training loss: mse (forecasts the mean) or mae (the median; robust to outliers)"
    )
    anchor: Literal["last", "mean"] = _f(
        "last",
        "what the forecast is relative to, inside the model: last (the last observed value "
        "plus steps scaled by the train changes' std; follows a trend) or mean (the train "
        "mean plus the train std times the output, the seed's level forecast)",
    )
    max_gap: Int = _f(
        3, "missing steps interpolated at most; windows across a longer gap are dropped", min=0
    )
    val_fraction: Float = _f(0.15, "share of the time span cut as the val period", gt=0.0, lt=1.0)
    test_fraction: Float = _f(0.15, "share of the time span cut as the test period", gt=0.0, lt=1.0)
    recut: Bool = _f(
        False,
        "move the recorded cuts to the fractions of the current span (test metrics are then "
        "not comparable with earlier runs)",
    )
    intervals: tuple[Float, ...] = _f(
        (0.8, 0.95), "prediction-interval levels (split-conformal on the val period)"
    )
    epochs: Int = _f(50, "maximum epochs", min=1, max=10000)
    early_stopping_patience: Int = _f(
        5, "epochs without val_loss improvement before stopping", min=1
    )
    export_max_diff: Float = _f(
        0.01,
        "an export ships if its largest |forecast − Keras forecast| on the test windows is at "
        "most this fraction of the Keras model's test MAE",
        gt=0.0,
    )
