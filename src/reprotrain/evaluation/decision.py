"""Promotion, decided in one place: a pure function from a snapshot of the champion and the
challenger's predictions to what the registry should do.

Why pure: which model users get from ``models:/NAME@champion`` must be decided where it can be
read and tested without a tracking store. The evaluate stage takes the snapshot
(``tracking.registration.champion_snapshot``), scores the champion on the current test set
when the decision needs it (:func:`needs_champion_scores`), calls :func:`decide_promotion`,
and one registry call applies the result (``tracking.registration.apply_decision``). Nothing
here calls back into tracking.

The rules, in order: a champion of another task (another data kind, other inputs, other
classes or input size) is not comparable, and the version gets no alias; otherwise the gate decides
(:func:`reprotrain.evaluation.gate.decide_paired`, or the accuracy rule); a reproduction never
moves an alias; a DVC experiment never takes ``champion`` (it is on no branch, and queued
experiments would race); in review mode (``challenger``) a passing version is only proposed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reprotrain.evaluation.gate import CHALLENGER, CHAMPION, GateRule, decide, decide_paired

#: Review mode's environment variable (read by the stage, named in the reasons).
PROMOTE_ENV = "REPROTRAIN_PROMOTE"
MODES = (CHAMPION, CHALLENGER)


@dataclass(frozen=True)
class ChampionSnapshot:
    """What the registry says about the champion when evaluate starts."""

    version: int
    labels: tuple[str, ...] | None = None  # None: a version from before the tag existed
    image_size: int | None = None
    accuracy: float | None = None  # its recorded test accuracy ...
    test_digest: str | None = None  # ... on the test set with this digest
    probs: np.ndarray | None = None  # its probabilities on the current test set, once scored
    kind: str = "images"  # data.kind it was trained on (versions without the tag: images)
    inputs: str | None = None  # what it takes, for non-image kinds (JSON)
    #: All its version tags, for a kind's own comparisons (series: window, horizon, mase).
    tags: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def scored(self, probs: np.ndarray, y_true: np.ndarray, test_digest: str) -> ChampionSnapshot:
        """This snapshot with its predictions on the current test set."""
        probs = np.asarray(probs)
        accuracy = float(np.mean(probs.argmax(axis=1) == np.asarray(y_true)))
        return dataclasses.replace(self, probs=probs, accuracy=accuracy, test_digest=test_digest)


@dataclass(frozen=True)
class Challenger:
    """The model evaluate just scored, on the current test set."""

    y_true: np.ndarray
    probs: np.ndarray
    labels: tuple[str, ...]
    image_size: int  # 0 for kinds without images
    test_digest: str
    kind: str = "images"
    inputs: str | None = None  # what it takes, for non-image kinds (JSON)

    @property
    def accuracy(self) -> float:
        return float(np.mean(np.asarray(self.probs).argmax(axis=1) == np.asarray(self.y_true)))


@dataclass(frozen=True)
class Policy:
    """How to decide: the gate (``paired`` or ``accuracy``) and its thresholds, the mode
    (``champion`` moves the alias now, ``challenger`` only proposes), and the circumstances in
    which no alias may move (a reproduction, a DVC experiment)."""

    gate: str
    rule: GateRule
    registered_model: str = "NAME"  # named in the reasons' commands
    mode: str = CHAMPION
    reproduces: str | None = None
    experiment: str | None = None


@dataclass(frozen=True)
class PromotionDecision:
    """What the registry should do with the new version. ``reason`` may name the version as
    ``{version}``: it is registered after the decision (:meth:`reason_for`)."""

    alias: str | None  # champion | challenger | None (not comparable, or a reproduction)
    promote: bool  # move champion to the new version
    proposed: bool  # review mode: the gate passed, a merge promotes it
    reason: str
    comparable: bool
    champion_version: int | None
    champion_accuracy: float | None
    mode: str = CHAMPION
    gate: dict[str, Any] | None = None  # the paired gate's statistics

    def reason_for(self, version: int) -> str:
        return self.reason.replace("{version}", str(version))


def _describe(labels: Sequence[str]) -> str:
    return "[" + ", ".join(labels[:6]) + (", …" if len(labels) > 6 else "") + "]"


def comparability_problem(
    champion: ChampionSnapshot,
    labels: Sequence[str],
    image_size: int,
    kind: str = "images",
    inputs: str | None = None,
) -> str | None:
    """Why the champion cannot be compared on this model's test set (another data kind,
    other inputs, other classes, another class order, another input size); None when it can,
    or when it predates the tags."""
    v, theirs = champion.version, champion.labels
    if champion.kind != kind:
        return f"champion v{v} is of data.kind {champion.kind}; this model is of data.kind {kind}"
    if champion.inputs is not None and inputs is not None and champion.inputs != inputs:
        return f"champion v{v} takes other inputs ({champion.inputs}); this model takes {inputs}"
    if theirs is not None and list(theirs) != list(labels):
        if len(theirs) != len(labels) or set(theirs) != set(labels):
            ours = (
                f"{len(labels)} other classes"
                if not set(theirs) & set(labels)
                else f"{len(labels)} classes {_describe(labels)}"
            )
            return f"champion v{v} has classes {_describe(theirs)}; this model has {ours}"
        return (
            f"champion v{v} orders its classes {_describe(theirs)}; this model {_describe(labels)}"
        )
    if (
        kind == "images"
        and champion.image_size is not None
        and int(champion.image_size) != int(image_size)
    ):
        size = champion.image_size
        return (
            f"champion v{v} takes {size}×{size} images; this model takes {image_size}×{image_size}"
        )
    return None


def needs_champion_scores(
    champion: ChampionSnapshot | None, challenger: Challenger, policy: Policy
) -> bool:
    """Whether evaluate must score the champion on the current test set before deciding: the
    paired gate always compares predictions; the accuracy gate only when the champion's
    recorded accuracy was measured on another test set."""
    if champion is None or champion.probs is not None:
        return False
    if _problem(champion, challenger) is not None:
        return False
    if policy.gate == "paired":
        return True
    return champion.accuracy is None or champion.test_digest != challenger.test_digest


def decide_promotion(
    challenger: Challenger, champion: ChampionSnapshot | None, policy: Policy
) -> PromotionDecision:
    """The registry's next move for the new version (see the module docstring for the order of
    the rules). The champion must already be scored where :func:`needs_champion_scores` says so."""
    version = champion.version if champion is not None else None
    problem = _problem(champion, challenger) if champion is not None else None
    if (
        champion is not None
        and problem is None
        and needs_champion_scores(champion, challenger, policy)
    ):
        raise ValueError("the champion must be scored on the current test set first")
    if problem is not None:
        return not_comparable(problem, version, policy)
    gate, promoted, reason = _gate(challenger, champion, policy)
    accuracy = champion.accuracy if champion is not None else None
    return apply_policy(gate, promoted, reason, version, accuracy, policy)


def _problem(champion: ChampionSnapshot, challenger: Challenger) -> str | None:
    return comparability_problem(
        champion, challenger.labels, challenger.image_size, challenger.kind, challenger.inputs
    )


def not_comparable(problem: str, champion_version: int | None, policy: Policy) -> PromotionDecision:
    """The decision for a champion that cannot be compared (``problem`` says why): the new
    version is registered without an alias. Public for kinds with their own gate (series)."""
    return PromotionDecision(
        None,
        False,
        False,
        f"not comparable: {problem}; v{{version}} is registered without an alias. Use a new "
        "tracking.registered_model for the new task, or promote it explicitly: python -m "
        f"reprotrain promote {policy.registered_model} {{version}} --reason '...'",
        comparable=False,
        champion_version=champion_version,
        champion_accuracy=None,
        mode=policy.mode,
    )


def apply_policy(
    gate: dict[str, Any] | None,
    promoted: bool,
    reason: str,
    champion_version: int | None,
    champion_score: float | None,
    policy: Policy,
) -> PromotionDecision:
    """A comparable gate verdict (``promoted``, ``reason``, its statistics ``gate``) turned
    into what the registry does, by the rules that hold for every kind: a reproduction never
    moves an alias, a DVC experiment never takes ``champion``, review mode only proposes.
    Public so that a kind with its own gate (series: MASE and a paired test on the
    per-window errors) gets the same rules."""
    alias = CHAMPION if promoted else CHALLENGER
    proposed = False
    if policy.reproduces:
        alias, promoted = None, False
        reason = f"reproduction of run {policy.reproduces}: registry aliases left unchanged"
    elif policy.experiment and promoted:
        alias, promoted = CHALLENGER, False
        reason = (
            f"DVC experiment {policy.experiment}: the gate would promote ({reason}), but "
            "experiments never take the champion alias; apply and commit it, then run "
            "`dvc repro --force -s evaluate`"
        )
    elif policy.mode == CHALLENGER and promoted:
        alias, promoted, proposed = CHALLENGER, False, True
        against = f"v{champion_version}" if champion_version is not None else "no champion"
        reason = (
            f"proposed: {reason}; review mode ({PROMOTE_ENV}=challenger): v{{version}} is the "
            f"challenger, decided against {against}; merging its pull request promotes it "
            "(scripts/retrain.sh promote)"
        )
    return PromotionDecision(
        alias,
        promoted,
        proposed,
        reason,
        comparable=True,
        champion_version=champion_version,
        champion_accuracy=champion_score,
        mode=policy.mode,
        gate=gate,
    )


def _gate(
    challenger: Challenger, champion: ChampionSnapshot | None, policy: Policy
) -> tuple[dict[str, Any] | None, bool, str]:
    """The gate's verdict: (paired statistics or None, promote?, reason)."""
    if policy.gate == "paired":
        stats = decide_paired(
            challenger.y_true,
            challenger.probs,
            champion.probs if champion is not None else None,
            challenger.labels,
            policy.rule,
        )
        return stats, bool(stats["promoted"]), str(stats["reason"])
    rule = policy.rule
    champion_accuracy = champion.accuracy if champion is not None else None
    verdict = decide(
        challenger.accuracy,
        champion_accuracy,
        rule.min_accuracy,
        rule.min_improvement,
        rule.floor_name,
    )
    return None, verdict.promoted, verdict.reason
