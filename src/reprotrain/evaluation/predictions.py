"""Scoring a split: the test images decoded once, each model run over them in one pass.

Why this shape: decoding and resizing JPEGs costs about as much as running a small model
over them, and ``evaluate`` scores up to three models (fine-tuned, head-only, the champion
re-scored) on the same images. :class:`EvalSplit` decodes the test shards once per image
size and keeps the uint8 pixels in memory (81 images at 224 px are 12 MB); a split too
large for that is streamed from the shards for each model instead. Each model then runs
through one ``tf.function`` with a fixed input signature: one trace per model, whatever
the batch sizes (the last batch is smaller), instead of eager calls layer by layer.

The model outputs softmax probabilities (``transfer.build_model``); ``to_probabilities``
only converts outputs that are not (a model from elsewhere that emits logits).
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from reprotrain.errors import DataError
from reprotrain.models.loading import (
    inference_function,
    model_image_size,
)
from reprotrain.progress import progress
from reprotrain.timing import timed

logger = logging.getLogger(__name__)

#: Largest decoded split (bytes of uint8 pixels) kept in memory between models; above
#: this each model streams the shards again (decoding twice beats running out of memory).
MAX_IN_MEMORY_BYTES = 1 << 30


@dataclass
class WorstExample:
    """A misclassified test image with the model's (wrong) confidence."""

    index: int
    path: str
    true: int
    pred: int
    confidence: float
    image: np.ndarray  # uint8 [H, W, 3]


@dataclass
class SplitPredictions:
    """Probabilities of one model on one split, aligned with the split's records."""

    probs: np.ndarray  # float32 [N, C]
    y_true: np.ndarray  # int64 [N]
    paths: list[str] = field(default_factory=list)
    sha256: list[str] = field(default_factory=list)
    worst: list[WorstExample] = field(default_factory=list)


class Batch(NamedTuple):
    """One batch of the split: uint8 pixels, labels and the records' metadata."""

    images: np.ndarray  # uint8 [B, S, S, 3]
    labels: np.ndarray  # int64 [B]
    paths: list[str]
    sha256: list[str]


def eval_dataset(
    files: Sequence[Path | str],
    pipeline_cfg: Any,
    *,
    image_size: int,
    batch_size: int,
    seed: int,
) -> Any:
    """The test split in file order with metadata.

    Not cached by tf.data (:class:`EvalSplit` keeps the decoded pixels) and always
    deterministic, so the results, down to the row order of predictions.csv, depend on no
    ``pipeline.*`` param.
    """
    from reprotrain.data import pipeline

    cfg = dataclasses.replace(pipeline_cfg, cache="none", deterministic=True)
    return pipeline.make_dataset(
        files,
        cfg,
        training=False,
        image_size=image_size,
        batch_size=batch_size,
        seed=seed,
        with_metadata=True,
    )


def _as_batch(element: tuple[Any, Any, Any]) -> Batch:
    """A ``(images, labels, metadata)`` tf.data batch as numpy (pixels back to uint8: the
    pipeline hands out whole 0..255 values as float32, so the conversion is exact)."""
    images, labels, meta = element
    return Batch(
        images=np.asarray(images).astype(np.uint8),
        labels=np.asarray(labels, dtype=np.int64),
        paths=[s.decode("utf-8") for s in np.asarray(meta["path"]).tolist()],
        sha256=[s.decode("ascii") for s in np.asarray(meta["sha256"]).tolist()],
    )


class EvalSplit:
    """The test shards, decoded and resized once per image size, then read from memory.

    The first pass at a size streams from the shards and keeps the batches; later passes
    (the next model) replay them. Past ``max_bytes`` the kept batches are dropped and
    every pass streams. ``expected`` (the manifest's count) sizes the progress bar before
    the first pass.
    """

    def __init__(
        self,
        files: Sequence[Path | str],
        pipeline_cfg: Any,
        *,
        batch_size: int,
        seed: int,
        expected: int | None = None,
        max_bytes: int = MAX_IN_MEMORY_BYTES,
    ) -> None:
        self.files = [Path(f) for f in files]
        self.pipeline_cfg = pipeline_cfg
        self.batch_size = batch_size
        self.seed = seed
        self.expected = expected
        self.max_bytes = max_bytes
        self._kept: dict[int, list[Batch]] = {}
        self.passes: dict[int, int] = {}  # image size → passes over the shards (decodes)

    def in_memory(self, image_size: int) -> bool:
        """Whether the split at this size is already decoded and kept."""
        return image_size in self._kept

    def num_batches(self, image_size: int) -> int | None:
        """Batches per pass, when known (kept, or from ``expected``)."""
        if image_size in self._kept:
            return len(self._kept[image_size])
        return math.ceil(self.expected / self.batch_size) if self.expected else None

    def batches(self, image_size: int) -> Iterator[Batch]:
        """The split's batches in file order (manifest order)."""
        if image_size in self._kept:
            yield from self._kept[image_size]
            return
        ds = eval_dataset(
            self.files,
            self.pipeline_cfg,
            image_size=image_size,
            batch_size=self.batch_size,
            seed=self.seed,
        )
        self.passes[image_size] = self.passes.get(image_size, 0) + 1
        kept: list[Batch] | None = []
        size = 0
        for element in ds:
            batch = _as_batch(element)
            if kept is not None:
                size += batch.images.nbytes
                if size > self.max_bytes:
                    logger.info("test split over %d bytes: streaming it for each model", size)
                    kept = None
                else:
                    kept.append(batch)
            yield batch
        if kept is not None:
            self._kept[image_size] = kept


def to_probabilities(outputs: np.ndarray) -> np.ndarray:
    """Model outputs as probabilities: unchanged when rows already are, else softmax.

    Models from ``build_model`` end in a softmax; a model emitting logits (a user's own)
    would otherwise yield a wrong loss and calibration without any error.
    """
    out = np.asarray(outputs, dtype=np.float64)
    if out.size == 0:
        return out
    is_prob = (out >= -1e-6).all() and (out <= 1 + 1e-6).all()
    if is_prob and np.allclose(out.sum(axis=1), 1.0, atol=1e-3):
        return out
    logger.warning("model outputs are not probabilities: applying softmax")
    z = out - out.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _keep_worst(
    worst: list[WorstExample], batch: Batch, probs: np.ndarray, offset: int, k: int
) -> list[WorstExample]:
    """The ``k`` most confidently wrong examples so far (ties: earlier first).

    Only the kept examples' pixels are copied, so memory stays bounded by ``k``.
    """
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != batch.labels)
    candidates = [(-float(probs[i, pred[i]]), offset + int(i), int(i)) for i in wrong]
    current = [(-w.confidence, w.index, -1) for w in worst]
    best = heapq.nsmallest(k, current + candidates)
    by_index = {w.index: w for w in worst}
    kept = []
    for neg_conf, index, i in best:
        if i < 0:
            kept.append(by_index[index])
            continue
        kept.append(
            WorstExample(
                index=index,
                path=batch.paths[i],
                true=int(batch.labels[i]),
                pred=int(pred[i]),
                confidence=-neg_conf,
                image=batch.images[i].copy(),
            )
        )
    return kept


def predict_split(
    model: Any,
    batches: Iterable[Batch],
    *,
    worst_k: int = 0,
    total: int | None = None,
    desc: str = "predict",
) -> SplitPredictions:
    """Run ``model`` over the split's batches, with a progress bar over batches.

    Keeps only the ``worst_k`` most confidently wrong images (memory stays bounded by k,
    not by the size of the test split).
    """
    predict = inference_function(model, "uint8")
    probs, labels, paths, shas = [], [], [], []
    worst: list[WorstExample] = []
    offset = 0
    with progress(total, desc, unit="batch") as bar:
        for batch in batches:
            p = to_probabilities(predict(batch.images))
            probs.append(p)
            labels.append(batch.labels)
            paths += batch.paths
            shas += batch.sha256
            if worst_k > 0:
                worst = _keep_worst(worst, batch, p, offset, worst_k)
            offset += len(batch.labels)
            bar.update(1)
    if not probs:
        raise DataError("the test split is empty: nothing to evaluate (rerun prepare with data)")
    return SplitPredictions(
        probs=np.concatenate(probs).astype(np.float32),
        y_true=np.concatenate(labels),
        paths=paths,
        sha256=shas,
        worst=worst,
    )


@timed("score")
def score(
    model: Any, split: EvalSplit, *, worst_k: int = 0, name: str = "model"
) -> SplitPredictions:
    """Predictions of a loaded model on ``split`` at the model's own input size."""
    size = model_image_size(model)
    return predict_split(
        model,
        split.batches(size),
        worst_k=worst_k,
        total=split.num_batches(size),
        desc=f"predict {name}",
    )
