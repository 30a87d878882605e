"""The promotion gate as a pure decision (TFX's "blessing"), separate from the registry calls.

Why separate: the rule decides which model users get from ``models:/NAME@champion``; it must
be obvious and unit-tested without a tracking store. ``tracking.register_and_promote`` feeds
it the numbers (re-scoring the champion on the current test set first when needed) and
applies the alias it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

CHAMPION = "champion"
CHALLENGER = "challenger"


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
            f"evaluate.min_accuracy = {min_accuracy:.4f}",
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
