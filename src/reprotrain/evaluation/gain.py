"""What fine-tuning added over the head, on the same test images.

One pure function for the finetune stage's ``metrics/finetune.json``, the model card and
``benchmarks/recipes.py``, so all three report the same numbers: both accuracies with their
Wilson intervals (:func:`reprotrain.evaluation.metrics.wilson_interval`), the difference,
and the exact McNemar test of the promotion gate (:func:`reprotrain.evaluation.gate.
mcnemar_exact`) -- paired, because both models see the same images, so only the images
exactly one of them gets right carry information.

The finetune stage's side: the test split it measures on (:func:`test_split`) and
:func:`vs_head` on the two models' predictions.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from reprotrain.evaluation.gate import mcnemar_exact
from reprotrain.evaluation.metrics import wilson_interval

if TYPE_CHECKING:
    from reprotrain.config import Params
    from reprotrain.evaluation.predictions import EvalSplit

logger = logging.getLogger(__name__)

#: Significance of the finetune stage's report: the gate's default (``evaluate.alpha``), fixed
#: so that a change of the gate's level does not rerun fine-tuning.
ALPHA = 0.05

#: What to try when fine-tuning added nothing (docs/finetuning.md has the measurements).
TRY = (
    "try a higher finetune.learning_rate, more finetune.epochs, or schedule: cosine "
    "(docs/finetuning.md)"
)


def verdict(delta: float, p_better: float, p_worse: float, alpha: float) -> str:
    """``better``/``worse`` when McNemar's one-sided test says so at ``alpha``, else
    ``no_gain`` (no significant difference, whatever the sign of the delta)."""
    if delta > 0 and p_better < alpha:
        return "better"
    if delta < 0 and p_worse < alpha:
        return "worse"
    return "no_gain"


def finetune_gain(
    y_true: np.ndarray,
    head_pred: np.ndarray,
    finetuned_pred: np.ndarray,
    *,
    alpha: float,
    kept_head: bool | None = None,
) -> dict[str, Any]:
    """Head vs fine-tuned top-1 labels on one split, with a one-line ``summary``.

    ``kept_head``: the stage kept the head's weights (no epoch beat them on validation);
    the summary then says so, and what to try.
    """
    y = np.asarray(y_true, dtype=np.int64)
    head_ok = np.asarray(head_pred, dtype=np.int64) == y
    tuned_ok = np.asarray(finetuned_pred, dtype=np.int64) == y
    n = len(y)
    head_hits, tuned_hits = int(head_ok.sum()), int(tuned_ok.sum())
    head_acc = head_hits / n if n else float("nan")
    tuned_acc = tuned_hits / n if n else float("nan")
    test = mcnemar_exact(tuned_ok, head_ok)
    delta = tuned_acc - head_acc
    result = verdict(delta, test["p_better"], test["p_worse"], alpha)
    out = {
        "n": n,
        "head_accuracy": head_acc,
        "head_ci": list(wilson_interval(head_hits, n)),
        "finetuned_accuracy": tuned_acc,
        "finetuned_ci": list(wilson_interval(tuned_hits, n)),
        "delta": delta,
        "mcnemar": test,
        "alpha": alpha,
        "verdict": result,
        "kept_head": kept_head,
    }
    out["summary"] = summary_line(out)
    return out


def summary_line(gain: dict[str, Any]) -> str:
    """One line: the delta, the paired test and, when nothing was gained, what to try."""
    t = gain["mcnemar"]
    stats = (
        f"{100 * gain['head_accuracy']:.1f}% -> {100 * gain['finetuned_accuracy']:.1f}% "
        f"({100 * gain['delta']:+.1f} points, n = {gain['n']}; McNemar p = {t['p_value']:.3g}, "
        f"{t['challenger_only']} fixed / {t['champion_only']} broken)"
    )
    if gain.get("kept_head"):
        return (
            "fine-tuning added nothing: no epoch beat the head on validation, kept it (usual "
            f"when the head is already near its ceiling, as on photos close to ImageNet's); {TRY}"
        )
    if gain["verdict"] == "better":
        return f"fine-tuning beat the head: {stats}"
    if gain["verdict"] == "worse":
        return f"fine-tuning is worse than the head: {stats}; {TRY}"
    return f"fine-tuning added nothing significant: {stats}; {TRY}"


def test_split(params: Params, batch_size: int) -> EvalSplit | None:
    """The prepared test split that finetune scores the head and the fine-tuned model on
    (decoded once, read from memory the second time), or None when it is empty."""
    from reprotrain import paths
    from reprotrain.data import tfrecords
    from reprotrain.evaluation.predictions import EvalSplit

    files = tfrecords.verify_shards(paths.PREPARED_DIR, "test")
    if not files:
        logger.info("no test split: metrics/finetune.json has no vs_head")
        return None
    return EvalSplit(files, params.pipeline, batch_size=batch_size, seed=params.seed)


def vs_head(head: Any, finetuned: Any, *, kept_head: bool) -> dict[str, Any]:
    """:func:`finetune_gain` at :data:`ALPHA` of two models' predictions on the same split
    (``SplitPredictions``: ``y_true`` and ``probs``), for metrics/finetune.json's
    ``vs_head``, its summary logged. ``kept_head``: no epoch beat the head, so
    ``finetuned`` is the head."""
    out = finetune_gain(
        head.y_true,
        head.probs.argmax(axis=1),
        finetuned.probs.argmax(axis=1),
        alpha=ALPHA,
        kept_head=kept_head,
    )
    logger.info("%s", out["summary"])
    return out
