"""The search space and the Optuna study: base features computed once, each trial a head
trained on them (and, with ``--finetune``, a short fine-tune of the full model), scored on
the validation split."""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reprotrain import stage_io
from reprotrain.config import Params
from reprotrain.errors import ReprotrainError

if TYPE_CHECKING:
    from reprotrain.commands.tune.record import TrialLog

logger = logging.getLogger(__name__)


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


@dataclass
class Features:
    """Pooled base features of the train and val splits, computed once."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    labels: list[str]
    counts: dict[str, int]
    head_init: list[Any]  # the predictions layer's initial weights (as train_head starts)
    rng_state: Any  # Python's random state after the model build (Dropout seeds)
    model: Any


def compute_features(params: Params, info: Any) -> Features:
    """Build the transfer model exactly as train_head does and extract features once."""
    from reprotrain import training
    from reprotrain.models import transfer

    cfg = params.train_head
    data = stage_io.load_transfer_data(params, cfg, train_as_eval=True)
    with info.strategy.scope():
        model = transfer.build_model(params.model, len(data.labels), cfg.dropout)
    rng_state = random.getstate()
    head_init = model.get_layer(transfer.OUTPUT_NAME).get_weights()
    logger.info("tune: computing pooled base features of the train and val splits once")
    (x_train, y_train), (x_val, y_val) = training.extract_features(model, data.train, data.val)
    return Features(
        x_train, y_train, x_val, y_val, data.labels, data.counts, head_init, rng_state, model
    )


def train_head_trial(
    feats: Features, params: Params, info: Any, checkpoint_dir: Path, epoch_hook: Any
) -> Any:
    """Train a head on the cached features with ``params.train_head`` (what train_head's
    feature-cache path does: same initial weights, same seeded shuffle, same callbacks)."""
    from reprotrain import training

    cfg = params.train_head
    random.setstate(feats.rng_state)  # the Dropout seed train_head's head would get
    return training.fit_head(
        (feats.x_train, feats.y_train, feats.x_val, feats.y_val),
        feats.head_init,
        cfg,
        info,
        training.RunOptions(checkpoint_dir, epoch_hook=epoch_hook),
        seed=params.seed,
        class_weight=stage_io.class_weights(cfg.class_weight, feats.labels, feats.counts),
    )


def finetune_trial(
    feats: Features,
    head: Any,
    params: Params,
    info: Any,
    data: Any,
    checkpoint_dir: Path,
    epoch_hook: Any,
) -> Any:
    """Put the trial's head on the full model, unfreeze, fine-tune briefly; then restore."""
    from reprotrain import training
    from reprotrain.models import transfer

    model = feats.model
    start = model.get_weights()
    try:
        transfer.copy_head_weights(head, model)
        transfer.unfreeze_top(model, params.finetune.unfreeze_top)
        class_weight = stage_io.class_weights(
            params.finetune.class_weight, feats.labels, feats.counts
        )
        return training.train(
            model,
            data.train,
            data.val,
            params.finetune,
            info,
            training.RunOptions(checkpoint_dir, epoch_hook=epoch_hook),
            class_weight=class_weight,
            keep_start_if_better=True,
            augment=data.augment_in_model,
        )
    finally:
        transfer.unfreeze_top(model, 0)
        transfer.get_base(model).trainable = False
        model.set_weights(start)


@dataclass(frozen=True)
class SearchOptions:
    """How long to search and what: ``trials`` and/or ``timeout`` (seconds) bound the study;
    ``finetune`` adds a short fine-tune of ``finetune_epochs`` to every trial."""

    trials: int | None = None
    timeout: float | None = None
    seed: int = 0
    finetune: bool = False
    finetune_epochs: int = 2


def search(
    params: Params, info: Any, options: SearchOptions, log: TrialLog | None = None
) -> list[TrialResult]:
    """Run the Optuna study; every trial (complete, pruned or failed) is returned and logged."""
    import optuna

    from reprotrain.progress import progress

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own one line per trial
    if params.train_head.feature_cache == "off":
        logger.warning("train_head.feature_cache = off: tune still trains on cached features")
    feats = compute_features(params, info)
    ft_data = None
    if options.finetune:
        ft_cfg = dataclasses.replace(params.finetune, epochs=options.finetune_epochs)
        params = dataclasses.replace(params, finetune=ft_cfg)
        ft_data = stage_io.load_transfer_data(params, ft_cfg)
    sampler = optuna.samplers.TPESampler(seed=options.seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    study = optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner)
    work = Path(tempfile.mkdtemp(prefix="reprotrain-tune-"))
    with progress(options.trials, "tune", unit="trial") as bar:
        trials = _Trials(params, info, feats, ft_data, options.finetune, work, log, bar)
        try:
            study.optimize(
                trials.objective,
                n_trials=options.trials,
                timeout=options.timeout,
                callbacks=[trials.on_trial_end],
                catch=(ReprotrainError, ValueError, ArithmeticError),
                gc_after_trial=True,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return trials.results


@dataclass
class _Trials:
    """The study's objective and its per-trial callback, sharing the trials' results."""

    params: Params
    info: Any
    feats: Any
    ft_data: Any
    finetune: bool
    work: Path
    log: TrialLog | None
    bar: Any
    results: list[TrialResult] = field(default_factory=list)

    def objective(self, trial: Any) -> float:
        import optuna

        values = suggest(trial, self.finetune)
        trial_params = apply_values(self.params, {**values, "train_head.feature_cache": "on"})
        if self.params.train_head.augment:
            trial_params = apply_values(trial_params, {"train_head.augment": False})
        result = TrialResult(trial.number, values, "RUNNING")
        self.results.append(result)
        started = time.monotonic()
        try:
            best = self._train(trial, trial_params, result)
            result.val_loss = float(best["val_loss"])
            result.val_accuracy = float(best["val_accuracy"])
            result.state = "COMPLETE"
            trial.set_user_attr("val_accuracy", result.val_accuracy)
            return result.val_loss
        except optuna.TrialPruned:
            result.state = "PRUNED"
            raise
        except Exception:
            result.state = "FAIL"
            raise
        finally:
            result.seconds = time.monotonic() - started

    def _train(self, trial: Any, trial_params: Params, result: TrialResult) -> Mapping[str, float]:
        """Train the trial's head (and fine-tune), reporting every epoch to the pruner."""
        import optuna

        step = 0

        def hook(epoch: int, metrics: Mapping[str, float]) -> None:
            nonlocal step
            step += 1
            for k, v in metrics.items():
                result.history.setdefault(k, []).append(float(v))
            trial.report(float(metrics["val_loss"]), step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val_loss {metrics['val_loss']:.4g} at step {step}")

        head, res = train_head_trial(
            self.feats, trial_params, self.info, self.work / f"{trial.number}-head", hook
        )
        if not self.finetune:
            return res.at(res.best_epoch)
        res = finetune_trial(
            self.feats,
            head,
            trial_params,
            self.info,
            self.ft_data,
            self.work / f"{trial.number}-ft",
            hook,
        )
        return res.start if res.best_epoch == 0 else res.at(res.best_epoch)

    def on_trial_end(self, study: Any, trial: Any) -> None:
        result = next(r for r in self.results if r.number == trial.number)
        if self.log is not None:
            self.log.trial(result)
        best = ranked(self.results)
        self.bar.update(1)
        self.bar.set_postfix_str(
            f"best val_loss={best[0].val_loss:.4f} (#{best[0].number})" if best else "no result"
        )
        logger.info(
            "trial %d %s in %.1fs: val_loss=%.4f val_accuracy=%.4f %s",
            result.number,
            result.state,
            result.seconds,
            result.val_loss,
            result.val_accuracy,
            " ".join(f"{k}={v}" for k, v in result.values.items()),
        )
