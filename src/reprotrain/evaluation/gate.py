"""The promotion gate's rules and statistics, pure (TFX's "blessing").

Why separate from the registry: the rule decides which model users get from
``models:/NAME@champion``; it must be obvious and unit-tested without a tracking store.
:mod:`reprotrain.evaluation.decision` turns a verdict into what the registry should do.

``decide_paired`` is the default (``evaluate.gate: paired``), the noise-aware rule: both
models' predictions on the same test images, an exact McNemar test, a paired bootstrap
interval, per-class recall and a power check, all returned as JSON so the decision can be
audited. ``decide`` is the plain accuracy rule (``evaluate.gate: accuracy``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class GateRule:
    """The gate's thresholds (``evaluate.*`` in params.yaml) and its bootstrap's draws."""

    min_accuracy: float
    min_improvement: float = 0.0
    alpha: float = 0.05
    max_class_regression: float = 0.05
    n_boot: int = 10_000
    seed: int = 0
    #: What the reasons call the floor (a table's floor is its own key, or the baseline's
    #: accuracy).
    floor_name: str = "evaluate.min_accuracy"


@dataclass(frozen=True)
class Decision:
    """Whether the candidate becomes the champion, the alias it gets, and why (one line)."""

    promoted: bool
    alias: str
    reason: str


def decide(
    candidate_accuracy: float,
    champion_accuracy: float | None,
    min_accuracy: float,
    min_improvement: float,
    floor_name: str = "evaluate.min_accuracy",
) -> Decision:
    """Promote iff the candidate clears ``min_accuracy`` and beats the champion by
    ``min_improvement`` (both measured on the same test set).

    With ``min_improvement == 0`` a tie promotes: the newer model, trained on the current
    code and data, wins when it is at least as good. With no champion the floor alone decides.
    """
    if candidate_accuracy < min_accuracy:
        return Decision(
            False,
            CHALLENGER,
            f"test accuracy {candidate_accuracy:.4f} is below the floor "
            f"{floor_name} = {min_accuracy:.4f}",
        )
    if champion_accuracy is None:
        return Decision(
            True,
            CHAMPION,
            f"no champion yet and test accuracy {candidate_accuracy:.4f} clears the floor "
            f"{min_accuracy:.4f}",
        )
    gain = candidate_accuracy - champion_accuracy
    # A tolerance so that 0.9 - 0.8 >= 0.1 holds despite binary floating point.
    if gain >= min_improvement - 1e-9:
        return Decision(
            True,
            CHAMPION,
            f"test accuracy {candidate_accuracy:.4f} beats the champion's "
            f"{champion_accuracy:.4f} by {gain:+.4f} (required {min_improvement:+.4f})",
        )
    return Decision(
        False,
        CHALLENGER,
        f"test accuracy {candidate_accuracy:.4f} vs the champion's {champion_accuracy:.4f}: "
        f"gain {gain:+.4f} is less than evaluate.min_improvement = {min_improvement:+.4f}",
    )


# --------------------------------------------------------------------------- paired gate
# The accuracy gate above compares two numbers; on 81 test images one image is 1.2 points,
# so "0.9136 beats 0.9012" is often noise. The functions below compare the two models on
# the *same* images (a paired design), which is far more sensitive than comparing two
# accuracies, and say when the test set is too small to tell.


def mcnemar_exact(challenger_correct: np.ndarray, champion_correct: np.ndarray) -> dict[str, Any]:
    """Exact McNemar test on the discordant pairs (``scipy.stats.binomtest``).

    Only the images exactly one model gets right carry information: under "equally good",
    each of those ``b + c`` is the challenger's with probability 1/2. ``p_value`` is
    two-sided; ``p_better`` / ``p_worse`` are the one-sided tails.
    """
    from scipy.stats import binomtest

    ch = np.asarray(challenger_correct, dtype=bool)
    cp = np.asarray(champion_correct, dtype=bool)
    b = int(np.sum(ch & ~cp))  # challenger right, champion wrong
    c = int(np.sum(~ch & cp))
    if b + c == 0:
        p, p_better, p_worse = 1.0, 1.0, 1.0
    else:
        p = binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
        p_better = binomtest(b, b + c, 0.5, alternative="greater").pvalue
        p_worse = binomtest(b, b + c, 0.5, alternative="less").pvalue
    return {
        "challenger_only": b,
        "champion_only": c,
        "p_value": float(p),
        "p_better": float(p_better),
        "p_worse": float(p_worse),
    }


def paired_bootstrap_ci(
    challenger_correct: np.ndarray,
    champion_correct: np.ndarray,
    *,
    confidence: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile CI of ``accuracy(challenger) − accuracy(champion)``, resampling images.

    Each image contributes ``d = correct_ch − correct_cp ∈ {−1, 0, +1}``, so a bootstrap
    resample is fully described by how many of its ``n`` draws land on each value: one
    multinomial draw per resample (exactly the same distribution as resampling indices,
    in O(n_boot) memory instead of O(n_boot · n)). Seeded: the same inputs give the same
    interval.
    """
    d = np.asarray(challenger_correct, dtype=np.int64) - np.asarray(
        champion_correct, dtype=np.int64
    )
    n = d.size
    shares = np.array([np.mean(d == 1), np.mean(d == 0), np.mean(d == -1)])
    counts = np.random.default_rng(seed).multinomial(n, shares, size=n_boot)
    diffs = (counts[:, 0] - counts[:, 2]) / n
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    return {
        "difference": float(d.mean()),
        "low": float(low),
        "high": float(high),
        "confidence": confidence,
        "n_boot": n_boot,
        "seed": seed,
    }


def class_recall_regressions(
    y_true: np.ndarray,
    challenger_pred: np.ndarray,
    champion_pred: np.ndarray,
    labels: Sequence[str],
    max_class_regression: float,
) -> dict[str, Any]:
    """Per-class recall of both models and the classes whose recall drops by more than
    ``max_class_regression`` (absolute). Classes absent from the split are not judged.

    Why: a better overall accuracy can hide a class that got much worse (the rare one,
    usually); users of that class see a regression the headline number does not show.
    """
    y = np.asarray(y_true)
    rows: dict[str, Any] = {}
    regressed = []
    for c, name in enumerate(labels):
        mask = y == c
        if not mask.any():
            continue
        new = float(np.mean(np.asarray(challenger_pred)[mask] == c))
        old = float(np.mean(np.asarray(champion_pred)[mask] == c))
        rows[name] = {"challenger": new, "champion": old, "change": new - old}
        if old - new > max_class_regression + 1e-9:
            regressed.append(name)
    return {"max_regression": max_class_regression, "per_class": rows, "regressed": regressed}


def power_check(
    n: int,
    discordant_rate: float,
    min_improvement: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
) -> dict[str, Any]:
    """Can a paired test on ``n`` images detect a gain of ``min_improvement``?

    Normal approximation of McNemar's test (Connor 1987): detecting an accuracy
    difference ``δ`` with discordant-pair rate ``ψ`` at two-sided level ``alpha`` and the
    given power needs ``n ≈ (z_{1−α/2} + z_{power})² · ψ / δ²`` images. ``ψ`` is the
    observed rate, but at least ``δ`` (a gain of δ needs at least δ·n discordant images).
    Also reported: the smallest difference this ``n`` detects. ``min_improvement <= 0``
    asks for no particular gain, so there is nothing to be underpowered for.
    """
    from scipy.stats import norm

    z = float(norm.ppf(1 - alpha / 2) + norm.ppf(power))
    psi = max(discordant_rate, min_improvement, 1.0 / max(n, 1))
    detectable = z * math.sqrt(psi / max(n, 1))
    out: dict[str, Any] = {
        "n": n,
        "alpha": alpha,
        "power": power,
        "discordant_rate": discordant_rate,
        "minimum_detectable_difference": detectable,
        "required_n": None,
        "underpowered": False,
        "warning": None,
    }
    if min_improvement > 0:
        required = math.ceil(z * z * psi / min_improvement**2)
        out["required_n"] = required
        if n < required:
            out["underpowered"] = True
            out["warning"] = (
                f"the test set has {n} images; detecting a gain of {min_improvement:.4f} "
                f"with {power:.0%} power at confidence {1 - alpha:.0%} needs about "
                f"{required} (this one detects about {detectable:.4f}): add test images "
                "or treat the gate's decision as weak evidence"
            )
    return out


def decide_paired(
    y_true: np.ndarray,
    challenger_probs: np.ndarray,
    champion_probs: np.ndarray | None,
    labels: Sequence[str],
    rule: GateRule,
) -> dict[str, Any]:
    """The promotion decision from both models' predictions on the same test images.

    Rule, in order:

    1. the challenger's accuracy must clear ``rule.min_accuracy`` (as in :func:`decide`);
    2. no champion: the floor alone decides;
    3. no class may lose more than ``rule.max_class_regression`` recall, and with
       ``rule.min_improvement > 0`` the accuracy gain must reach it;
    4. promote if the challenger is **significantly better** (exact McNemar, two-sided
       ``p < rule.alpha``, more images only it gets right); never if significantly worse;
    5. otherwise (no significant difference) promote iff the challenger's **log loss is
       lower or equal**. Why log loss as the tie-breaker: it is computed on the same
       images from the full predicted probabilities, so it separates models that
       accuracy calls equal; it is a proper scoring rule (it rewards honest confidence,
       which the ECE and the served probabilities depend on); and it is continuous, so
       exact ties are rare. Equal log loss promotes the newer model, as :func:`decide`
       does on an accuracy tie.

    Returns ``promoted``, ``alias``, ``reason`` and every statistic, JSON-able.
    """
    y = np.asarray(y_true, dtype=np.int64)
    ch_probs = np.asarray(challenger_probs, dtype=np.float64)
    ch_acc = float((ch_probs.argmax(axis=1) == y).mean())
    out: dict[str, Any] = {
        "rule": "paired",
        "n": int(y.size),
        "alpha": rule.alpha,
        "challenger_accuracy": ch_acc,
        "champion_accuracy": None,
    }
    if ch_acc < rule.min_accuracy:
        promoted, reason = (
            False,
            (
                f"test accuracy {ch_acc:.4f} is below the floor {rule.floor_name} = "
                f"{rule.min_accuracy:.4f}"
            ),
        )
    elif champion_probs is None:
        promoted, reason = (
            True,
            (f"no champion yet and test accuracy {ch_acc:.4f} clears {rule.min_accuracy:.4f}"),
        )
    else:
        out.update(paired_statistics(y, ch_probs, np.asarray(champion_probs), labels, rule))
        promoted, reason = _paired_verdict(out, rule)
    out.update(promoted=promoted, alias=CHAMPION if promoted else CHALLENGER, reason=reason)
    return out


def paired_statistics(
    y: np.ndarray,
    challenger_probs: np.ndarray,
    champion_probs: np.ndarray,
    labels: Sequence[str],
    rule: GateRule,
) -> dict[str, Any]:
    """Both models on the same images: McNemar, the paired bootstrap interval of the accuracy
    difference, per-class recall regressions, the log-loss tie-breaker and the power check."""
    from reprotrain.evaluation.metrics import log_loss

    ch_pred = challenger_probs.argmax(axis=1)
    cp_pred = np.asarray(champion_probs, dtype=np.float64).argmax(axis=1)
    ch_correct, cp_correct = ch_pred == y, cp_pred == y
    test = mcnemar_exact(ch_correct, cp_correct)
    return {
        "champion_accuracy": float(cp_correct.mean()),
        "mcnemar": test,
        "bootstrap": paired_bootstrap_ci(
            ch_correct, cp_correct, confidence=1 - rule.alpha, n_boot=rule.n_boot, seed=rule.seed
        ),
        "class_recall": class_recall_regressions(
            y, ch_pred, cp_pred, labels, rule.max_class_regression
        ),
        "tie_breaker": {
            "metric": "log_loss",
            "challenger": log_loss(y, challenger_probs),
            "champion": log_loss(y, np.asarray(champion_probs, dtype=np.float64)),
        },
        "power": power_check(
            int(y.size),
            (test["challenger_only"] + test["champion_only"]) / max(y.size, 1),
            rule.min_improvement,
            alpha=rule.alpha,
        ),
    }


def _paired_verdict(stats: dict[str, Any], rule: GateRule) -> tuple[bool, str]:
    """Rules 3-5 of :func:`decide_paired` on the computed statistics."""
    ch_acc, cp_acc, test = (
        stats["challenger_accuracy"],
        stats["champion_accuracy"],
        stats["mcnemar"],
    )
    losses = stats["tie_breaker"]
    gap = f"{ch_acc:.4f} vs {cp_acc:.4f}, McNemar p = {test['p_value']:.3g}"
    if stats["class_recall"]["regressed"]:
        names = ", ".join(stats["class_recall"]["regressed"])
        return (
            False,
            f"recall of {names} drops by more than {rule.max_class_regression:.2f} ({gap})",
        )
    gain = ch_acc - cp_acc
    if rule.min_improvement > 0 and gain < rule.min_improvement - 1e-9:
        return False, (
            f"gain {gain:+.4f} is less than evaluate.min_improvement = "
            f"{rule.min_improvement:+.4f} ({gap})"
        )
    significant = test["p_value"] < rule.alpha
    b, c = test["challenger_only"], test["champion_only"]
    if significant and b > c:
        return True, f"significantly better than the champion ({gap})"
    if significant and c > b:
        return False, f"significantly worse than the champion ({gap})"
    if losses["challenger"] <= losses["champion"] + 1e-12:
        return True, (
            f"no significant difference ({gap}); lower or equal log loss "
            f"{losses['challenger']:.4f} vs {losses['champion']:.4f}"
        )
    return False, (
        f"no significant difference ({gap}) and higher log loss "
        f"{losses['challenger']:.4f} vs {losses['champion']:.4f}"
    )
