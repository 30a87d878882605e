"""Scoring model files on one test split, each distinct model once.

The one seam behind which evaluate reuses predictions. A model file whose architecture and
weights equal those of a file already scored (:func:`reprotrain.models.loading.same_inference`,
compared in the files without building either model) gets that file's predictions instead
of being loaded and run again. It happens on every default run: when no fine-tuning epoch
beats the head's weights, finetune saves exactly those weights, so the head need not be
scored; and a forced rerun, or a retrain on unchanged data, lands on the champion's weights.
Its cost and what it saves are in ``docs/benchmarks.md`` (the evaluate stage's breakdown).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reprotrain.evaluation.metrics import classification_metrics
from reprotrain.evaluation.predictions import EvalSplit, SplitPredictions, score
from reprotrain.models.loading import load_model, same_inference
from reprotrain.timing import timed

logger = logging.getLogger(__name__)


class ModelScorer:
    """Predictions and metrics of model files on ``split``, scored at most once per distinct
    model. ``labels`` are the split's classes: a model with another class count is refused by
    the loader with ``hint``."""

    def __init__(
        self,
        split: EvalSplit,
        labels: Sequence[str],
        *,
        top_k: int,
        calibration_bins: int,
    ) -> None:
        self.split = split
        self.labels = list(labels)
        self.top_k = top_k
        self.calibration_bins = calibration_bins
        self._scored: list[tuple[Path, SplitPredictions]] = []

    def _reuse(self, path: Path) -> SplitPredictions | None:
        for seen, preds in self._scored:
            if seen == path or same_inference(path, seen):
                if seen != path:
                    logger.info(
                        "%s: the architecture and weights of %s, whose predictions are reused",
                        path.name,
                        seen,
                    )
                return preds
        return None

    @timed("score")
    def predictions(
        self,
        path: Path | str,
        *,
        worst_k: int = 0,
        model: Any = None,
        image_size: int | None = None,
        hint: str = "rerun training (dvc repro)",
    ) -> SplitPredictions:
        """``path``'s predictions on the split (its ``worst_k`` most confidently wrong
        examples kept). ``model`` is the file already loaded, when the caller has it."""
        path = Path(path)
        reused = self._reuse(path)
        if reused is not None:
            return dataclasses.replace(reused, worst=reused.worst[:worst_k])
        if model is None:
            model = load_model(path, num_classes=len(self.labels), image_size=image_size, hint=hint)
        preds = score(model, self.split, worst_k=worst_k, name=path.stem)
        self._scored.append((path, preds))
        return preds

    def evaluate(
        self,
        path: Path | str,
        *,
        worst_k: int = 0,
        model: Any = None,
        image_size: int | None = None,
    ) -> tuple[dict[str, Any], SplitPredictions]:
        """The test metrics of ``path`` and its predictions."""
        preds = self.predictions(path, worst_k=worst_k, model=model, image_size=image_size)
        metrics = classification_metrics(
            preds.y_true,
            preds.probs,
            self.labels,
            top_k=self.top_k,
            calibration_bins=self.calibration_bins,
        )
        logger.info(
            "%s: test accuracy %.4f, loss %.4f (n=%d)",
            Path(path).stem,
            metrics["accuracy"],
            metrics["loss"],
            len(preds.y_true),
        )
        return metrics, preds
