"""The verdict on each exported format: its scores against the Keras model, and whether it
ships.

Why re-score every format: conversion is where silent damage happens (a quantised layer
whose activations saturate, an op lowered differently). Each format is run on the whole
test split and compared with the Keras model it came from: accuracy, *agreement* (share of
images with the same top-1 label), file size and batch-1 latency on this CPU. A format that
agrees too little, or loses too much accuracy, is kept on disk but marked ``shipped: false``
with the reason: a bad int8 conversion is a finding, not a pipeline failure. So is a
converter that raises, crashes its process or is not installed (:func:`failed_format`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reprotrain.config import ExportConfig
from reprotrain.errors import ModelError
from reprotrain.serving.converters import first_line
from reprotrain.serving.runners import Predictor, median_latency_ms, predict_batched

logger = logging.getLogger(__name__)


def path_size(path: Path) -> int:
    """Bytes of a file, or of all files under a directory."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


@dataclass(frozen=True)
class FormatResult:
    """One format's scores against the Keras model, and whether it ships (the scores are
    ``None`` for a format that could not be written or run)."""

    format: str
    path: str
    accuracy: float | None
    agreement: float | None
    size_bytes: int | None
    latency_ms: float | None
    shipped: bool
    reason: str


def failed_format(name: str, path: Path, exc: Exception) -> FormatResult:
    """The row of a format whose converter or runtime failed: not shipped, with the first
    line of the error (a :class:`ModelError` already names the format and the fix)."""
    what = "" if isinstance(exc, ModelError) else f"{name} could not be loaded or run: "
    reason = f"not shipped: {what}{first_line(exc)}"
    logger.warning("%s: %s", name, reason)
    return FormatResult(
        format=name,
        path=str(path),
        accuracy=None,
        agreement=None,
        size_bytes=None,
        latency_ms=None,
        shipped=False,
        reason=reason,
    )


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows whose top-1 class is the same in two probability matrices."""
    if len(a) == 0:
        return float("nan")
    return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))


def accuracy(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Share of rows whose top-1 class is the true label (NaN for no rows)."""
    return float(np.mean(np.argmax(probs, axis=1) == y_true)) if len(y_true) else float("nan")


def ship_decision(
    accuracy: float,
    agreement: float,
    reference_accuracy: float,
    min_agreement: float,
    max_accuracy_drop: float,
) -> tuple[bool, str]:
    """Whether a format ships, with the reason in words (pure: unit-tested on numbers)."""
    drop = reference_accuracy - accuracy
    problems = []
    if agreement < min_agreement:
        problems.append(
            f"agreement with the Keras model {agreement:.4f} < export.min_agreement "
            f"{min_agreement:g}"
        )
    if drop > max_accuracy_drop + 1e-12:
        problems.append(
            f"accuracy drop {drop:.4f} ({reference_accuracy:.4f} → {accuracy:.4f}) > "
            f"export.max_accuracy_drop {max_accuracy_drop:g}"
        )
    if problems:
        return False, "not shipped: " + "; ".join(problems)
    return True, f"shipped: agreement {agreement:.4f}, accuracy drop {max(drop, 0.0):.4f}"


@dataclass(frozen=True)
class KerasReference:
    """The test split and the Keras model's answers on it: what every format is scored
    against (one value, since the four always travel together)."""

    images: np.ndarray
    labels: np.ndarray
    probs: np.ndarray
    accuracy: float

    @classmethod
    def of(
        cls, predict: Predictor, images: np.ndarray, labels: np.ndarray, batch_size: int
    ) -> KerasReference:
        """The Keras model's (``predict``'s) probabilities and accuracy on ``images``."""
        probs = predict_batched(predict, images, batch_size)
        return cls(images, labels, probs, accuracy(labels, probs))


def score_format(
    name: str, path: Path, predict: Predictor, reference: KerasReference, cfg: ExportConfig
) -> FormatResult:
    """Re-score one format on the test images and decide whether it ships (latency: NaN
    until :func:`time_formats` measures it)."""
    probs = predict_batched(predict, reference.images, cfg.batch_size)
    acc, agree = accuracy(reference.labels, probs), agreement(probs, reference.probs)
    shipped, reason = ship_decision(
        acc, agree, reference.accuracy, cfg.min_agreement, cfg.max_accuracy_drop
    )
    result = FormatResult(
        format=name,
        path=str(path),
        accuracy=round(acc, 6),
        agreement=round(agree, 6),
        size_bytes=path_size(path),
        latency_ms=float("nan"),
        shipped=shipped,
        reason=reason,
    )
    logger.info(
        "%s: accuracy %.4f, agreement %.4f, %.1f MB → %s",
        name,
        acc,
        agree,
        result.size_bytes / 1e6,
        reason,
    )
    return result


def time_formats(
    predictors: dict[str, Predictor], images: np.ndarray, samples: int
) -> dict[str, float]:
    """Median batch-1 latency (ms) of each format, one format after the other.

    Timed only once every conversion is done: a conversion running in parallel would slow
    the calls being timed (measured: 2.5× on 2 cores).
    """
    latencies = {
        name: round(median_latency_ms(predict, images, samples), 3)
        for name, predict in predictors.items()
    }
    logger.info(
        "latency per image on this CPU: %s",
        ", ".join(f"{name} {ms:.2f} ms" for name, ms in latencies.items()),
    )
    return latencies
