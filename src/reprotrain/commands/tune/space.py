"""The search space and what a trial's values become: ``params.yaml`` keys, a ``dvc exp run``
command, a ranked result. Pure functions (no TensorFlow, no MLflow), tested alone."""

from __future__ import annotations

import dataclasses
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reprotrain.config import Params


def suggest(trial: Any, finetune: bool) -> dict[str, Any]:
    """The trial's values as ``params.yaml`` dotted keys, already rounded to what the
    printed command will say (so the command reproduces the trial exactly)."""
    lr = trial.suggest_float("train_head.learning_rate", 1e-4, 1e-1, log=True)
    values: dict[str, Any] = {
        "train_head.learning_rate": float(f"{lr:.3g}"),
        "train_head.dropout": round(
            trial.suggest_float("train_head.dropout", 0.0, 0.6, step=0.05), 2
        ),
        "train_head.epochs": trial.suggest_int("train_head.epochs", 3, 30),
        "train_head.class_weight": trial.suggest_categorical(
            "train_head.class_weight", ["none", "balanced"]
        ),
    }
    if finetune:
        ft_lr = trial.suggest_float("finetune.learning_rate", 1e-6, 1e-4, log=True)
        values["finetune.learning_rate"] = float(f"{ft_lr:.3g}")
        values["finetune.unfreeze_top"] = trial.suggest_int("finetune.unfreeze_top", 0, 60, step=10)
    return values


def apply_values(params: Params, values: Mapping[str, Any]) -> Params:
    """``params`` with dotted ``section.key`` values replaced (validated by the dataclasses)."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, _, name = key.partition(".")
        sections.setdefault(section, {})[name] = value
    return dataclasses.replace(
        params,
        **{s: dataclasses.replace(getattr(params, s), **kv) for s, kv in sections.items()},
    )


def exp_run_command(values: Mapping[str, Any], params: Params, queue: bool = False) -> str:
    """The ``dvc exp run -S key=value ...`` command that trains these values in the pipeline.

    Tuning ran on cached features (no augmentation), so the command turns train_head's
    augmentation off when params.yaml has it on.
    """
    sets = dict(values)
    if params.train_head.augment:
        sets["train_head.augment"] = False
    parts = ["dvc", "exp", "run", *(["--queue"] if queue else [])]
    for key, value in sets.items():
        parts += ["-S", f"{key}={yaml_value(value)}"]
    return shlex.join(parts)


def yaml_value(value: Any) -> str:
    """A value as YAML reads it back: ``true``, ``0.003``, ``1.0e-05`` (a YAML 1.1 float
    needs the dot), ``balanced``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        if e and "." not in mantissa:
            text = f"{mantissa}.0e{exponent}"
        return text
    return str(value)


@dataclass
class TrialResult:
    number: int
    values: dict[str, Any]
    state: str  # COMPLETE | PRUNED | FAIL
    val_loss: float = math.nan
    val_accuracy: float = math.nan
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0


def ranked(results: Sequence[TrialResult]) -> list[TrialResult]:
    """Completed trials, best (lowest val_loss, then highest val_accuracy) first."""
    done = [r for r in results if r.state == "COMPLETE" and math.isfinite(r.val_loss)]
    return sorted(done, key=lambda r: (r.val_loss, -r.val_accuracy, r.number))
