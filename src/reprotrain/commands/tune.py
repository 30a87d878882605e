"""``python -m reprotrain tune``: search train_head hyperparameters on cached base features.

Why it costs almost nothing: the frozen base is a fixed function of the image, so its
pooled features are computed once per split (as the train_head feature cache does), and a
trial trains only the Dense head on those arrays: seconds, not minutes. Trials are scored
on the **validation** split (lowest val_loss, the quantity train_head's early stopping
watches; val_accuracy is reported too); the test split is never read, so evaluate's test
accuracy stays an honest estimate.

Search space (``train_head.*``): ``learning_rate`` (log 1e-4..0.1, 3 significant digits),
``dropout`` (0..0.6 by 0.05), ``epochs`` (3..30), ``class_weight`` (none | balanced). With
``--finetune``, each trial then fine-tunes the full model for ``--finetune-epochs`` epochs
on the images (the expensive part), adding ``finetune.learning_rate`` (log 1e-6..1e-4) and
``finetune.unfreeze_top`` (0..60 by 10) to the space, scored on the fine-tuned val_loss.

Why Optuna (not KerasTuner): the space is over training settings of a model we build
ourselves (class weighting, epochs, a second stage), which Optuna's define-by-run API
expresses as plain code; its seeded TPE sampler makes a search repeatable (``--seed``); its
median pruner stops hopeless trials from the per-epoch values we already produce; and it
keeps the study in memory, with MLflow as the one record. KerasTuner centres on a
``build(hp)`` model function and its own on-disk oracle state.

Each trial is a nested MLflow run under one ``tune`` parent run (params, per-epoch and
final metrics, state). At the end the best trial is printed with the ``dvc exp run -S ...``
command that trains it in the pipeline; ``--queue K`` queues the best K as DVC experiments
(``dvc exp run --run-all`` runs them).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reprotrain import paths, runtime, stage_io, tracking
from reprotrain.config import Params, load_params
from reprotrain.errors import ConfigError, DataError, ReprotrainError

logger = logging.getLogger(__name__)

TAG_TUNE = "reprotrain.tune"
TAG_TRIAL = "reprotrain.tune.trial"
TAG_STATE = "reprotrain.tune.state"
TAG_COMMAND = "reprotrain.tune.command"


# --------------------------------------------------------------------------- pure helpers


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


# --------------------------------------------------------------------------- the search


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
    data = stage_io.load_stage_data(
        paths.PREPARED_DIR,
        params.pipeline,
        cfg,
        image_size=params.model.image_size,
        seed=params.seed,
        train_as_eval=True,
    )
    with info.strategy.scope():
        model = transfer.build_model(params.model, len(data.labels), cfg.dropout)
    rng_state = random.getstate()
    head_init = model.get_layer(transfer.OUTPUT_NAME).get_weights()
    logger.info("tune: computing pooled base features of the train and val splits once")
    x_train, y_train = training.extract_features(model, data.train)
    x_val, y_val = training.extract_features(model, data.val)
    counts = stage_io.train_counts(paths.PREPARED_DIR / "manifest.csv", data.labels)
    return Features(
        x_train, y_train, x_val, y_val, data.labels, counts, head_init, rng_state, model
    )


def train_head_trial(
    feats: Features, params: Params, info: Any, checkpoint_dir: Path, epoch_hook: Any
) -> Any:
    """Train a head on the cached features with ``params.train_head`` (what train_head's
    feature-cache path does: same initial weights, same seeded shuffle, same callbacks)."""
    import tensorflow as tf

    from reprotrain import training
    from reprotrain.models import transfer

    cfg = params.train_head
    random.setstate(feats.rng_state)  # the Dropout seed train_head's head would get
    with info.strategy.scope():
        head = transfer.build_head_only(feats.x_train.shape[1], len(feats.labels), cfg.dropout)
    head.get_layer(transfer.OUTPUT_NAME).set_weights(feats.head_init)
    train_ds = (
        tf.data.Dataset.from_tensor_slices((feats.x_train, feats.y_train))
        .shuffle(len(feats.y_train), seed=params.seed, reshuffle_each_iteration=True)
        .batch(cfg.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    val_ds = tf.data.Dataset.from_tensor_slices((feats.x_val, feats.y_val)).batch(cfg.batch_size)
    class_weight = stage_io.class_weights(cfg.class_weight, feats.labels, feats.counts)
    result = training.train(
        head,
        train_ds,
        val_ds,
        cfg,
        info,
        checkpoint_dir=checkpoint_dir,
        class_weight=class_weight,
        epoch_hook=epoch_hook,
    )
    return head, result


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
            checkpoint_dir=checkpoint_dir,
            class_weight=class_weight,
            epoch_hook=epoch_hook,
            keep_start_if_better=True,
        )
    finally:
        transfer.unfreeze_top(model, 0)
        transfer.get_base(model).trainable = False
        model.set_weights(start)


class TrialLog:
    """Nested MLflow runs: one ``tune`` parent, one child per trial (MlflowClient API, so no
    fluent global run state leaks between trials)."""

    def __init__(self, params: Params, root: Path, args: argparse.Namespace) -> None:
        import mlflow

        uri = tracking.store_uri(root, params.tracking.store)
        self.exp_id = tracking.connect(uri, params.tracking.experiment)
        self.client = mlflow.MlflowClient(uri)
        run = self.client.create_run(
            self.exp_id,
            run_name="tune",
            tags={
                TAG_TUNE: "parent",
                tracking.TAG_ROLE: "tune",
                "mlflow.source.name": "python -m reprotrain tune",
            },
        )
        self.parent = run.info.run_id
        self.uri = uri
        budget = {"trials": args.trials, "timeout": args.timeout, "seed": args.seed}
        self.client.log_batch(
            self.parent,
            params=self._params(
                {**{f"tune.{k}": v for k, v in budget.items()}, "tune.finetune": args.finetune}
            ),
        )

    @staticmethod
    def _params(values: Mapping[str, Any]) -> list[Any]:
        from mlflow.entities import Param

        return [Param(k, str(v)) for k, v in values.items()]

    def trial(self, result: TrialResult) -> str:
        from mlflow.entities import Metric

        run = self.client.create_run(
            self.exp_id,
            run_name=f"trial-{result.number}",
            tags={
                "mlflow.parentRunId": self.parent,
                TAG_TUNE: "trial",
                TAG_TRIAL: str(result.number),
                TAG_STATE: result.state,
            },
        )
        rid = run.info.run_id
        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), now, step)
            for k, series in result.history.items()
            if k != "epoch"
            for step, v in enumerate(series, start=1)
            if math.isfinite(v)
        ]
        for name in ("val_loss", "val_accuracy"):
            value = getattr(result, name)
            if math.isfinite(value):
                metrics.append(Metric(f"final_{name}", value, now, 0))
        metrics.append(Metric("trial_seconds", result.seconds, now, 0))
        self.client.log_batch(rid, metrics=metrics, params=self._params(result.values))
        status = "FINISHED" if result.state != "FAIL" else "FAILED"
        self.client.set_terminated(rid, status)
        return rid

    def finish(self, best: TrialResult | None, command: str | None, status: str) -> None:
        from mlflow.entities import Metric

        if best is not None:
            now = int(time.time() * 1000)
            self.client.log_batch(
                self.parent,
                metrics=[
                    Metric("best_val_loss", best.val_loss, now, 0),
                    Metric("best_val_accuracy", best.val_accuracy, now, 0),
                    Metric("best_trial", float(best.number), now, 0),
                ],
            )
            self.client.set_tag(self.parent, TAG_COMMAND, command or "")
        self.client.set_terminated(self.parent, status)


def search(
    params: Params,
    info: Any,
    *,
    trials: int | None,
    timeout: float | None,
    seed: int,
    finetune: bool,
    finetune_epochs: int,
    log: TrialLog | None,
) -> list[TrialResult]:
    """Run the Optuna study; every trial (complete, pruned or failed) is returned and logged."""
    import optuna

    from reprotrain.progress import progress

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own one line per trial
    if params.train_head.feature_cache == "off":
        logger.warning("train_head.feature_cache = off: tune still trains on cached features")
    feats = compute_features(params, info)
    ft_data = None
    if finetune:
        ft_cfg = dataclasses.replace(params.finetune, epochs=finetune_epochs)
        params = dataclasses.replace(params, finetune=ft_cfg)
        ft_data = stage_io.load_stage_data(
            paths.PREPARED_DIR,
            params.pipeline,
            ft_cfg,
            image_size=params.model.image_size,
            seed=params.seed,
        )
    sampler = optuna.samplers.TPESampler(seed=seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    study = optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner)
    results: list[TrialResult] = []
    work = Path(tempfile.mkdtemp(prefix="reprotrain-tune-"))

    def objective(trial: Any) -> float:
        values = suggest(trial, finetune)
        trial_params = apply_values(params, {**values, "train_head.feature_cache": "on"})
        if params.train_head.augment:
            trial_params = apply_values(trial_params, {"train_head.augment": False})
        result = TrialResult(trial.number, values, "RUNNING")
        results.append(result)
        started = time.monotonic()
        step = 0

        def hook(epoch: int, metrics: Mapping[str, float]) -> None:
            nonlocal step
            step += 1
            for k, v in metrics.items():
                result.history.setdefault(k, []).append(float(v))
            trial.report(float(metrics["val_loss"]), step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val_loss {metrics['val_loss']:.4g} at step {step}")

        try:
            head, res = train_head_trial(
                feats, trial_params, info, work / f"{trial.number}-head", hook
            )
            best = res.at(res.best_epoch)
            if finetune:
                res = finetune_trial(
                    feats, head, trial_params, info, ft_data, work / f"{trial.number}-ft", hook
                )
                best = res.start if res.best_epoch == 0 else res.at(res.best_epoch)
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

    def on_trial_end(study: Any, trial: Any) -> None:
        result = next(r for r in results if r.number == trial.number)
        if log is not None:
            log.trial(result)
        best = ranked(results)
        bar.update(1)
        bar.set_postfix_str(
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

    with progress(trials, "tune", unit="trial") as bar:
        try:
            study.optimize(
                objective,
                n_trials=trials,
                timeout=timeout,
                callbacks=[on_trial_end],
                catch=(ReprotrainError, ValueError, ArithmeticError),
                gc_after_trial=True,
            )
        finally:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    return results


def queue_experiments(commands: Sequence[str], root: Path) -> None:
    """``dvc exp run --queue -S ...`` for each command (run them with ``dvc exp run --run-all``)."""
    for command in commands:
        argv = shlex.split(command)
        proc = subprocess.run(
            [sys.executable, "-m", "dvc", *argv[1:]],
            cwd=root,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise ReprotrainError(
                f"queueing failed: {command}: {(proc.stderr or proc.stdout).strip()[-500:]}"
            )
        logger.info("queued: %s", command)


# --------------------------------------------------------------------------- entry point


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reprotrain tune",
        description="Search train_head hyperparameters on cached base features (validation "
        "split only); print the best trial and the `dvc exp run -S ...` command for it.",
    )
    parser.add_argument("--trials", type=int, default=None, help="number of trials (default 20)")
    parser.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
    parser.add_argument(
        "--seed", type=int, default=None, help="sampler seed (default: params.yaml seed)"
    )
    parser.add_argument(
        "--queue",
        type=int,
        default=0,
        metavar="K",
        help="queue the best K trials as DVC experiments (dvc exp run --queue)",
    )
    parser.add_argument(
        "--finetune",
        action="store_true",
        help="also search finetune.learning_rate and finetune.unfreeze_top (slower)",
    )
    parser.add_argument(
        "--finetune-epochs", type=int, default=1, help="fine-tuning epochs per trial (default 1)"
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    args = parser.parse_args(list(argv))
    if args.trials is None and args.timeout is None:
        args.trials = 20
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials = {args.trials}: must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError(f"--timeout = {args.timeout}: must be > 0 seconds")
    if args.queue < 0 or args.finetune_epochs < 1:
        raise ConfigError("--queue must be ≥ 0 and --finetune-epochs ≥ 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    root = paths.project_root()
    params = load_params(root / args.params if not Path(args.params).is_absolute() else args.params)
    seed = params.seed if args.seed is None else args.seed
    args.seed = seed
    if not (root / paths.PREPARED_DIR / "manifest.csv").is_file():
        raise DataError(
            f"{root / paths.PREPARED_DIR} has no prepared data: run `dvc repro prepare` first"
        )
    info = runtime.configure(params.runtime, params.seed)
    log = None if args.no_tracking else TrialLog(params, root, args)
    status = "FAILED"
    best = command = None
    try:
        os.chdir(root)
        results = search(
            params,
            info,
            trials=args.trials,
            timeout=args.timeout,
            seed=seed,
            finetune=args.finetune,
            finetune_epochs=args.finetune_epochs,
            log=log,
        )
        top = ranked(results)
        if not top:
            raise ReprotrainError(
                f"tune: no trial completed ({len(results)} ran: "
                f"{', '.join(sorted({r.state for r in results})) or 'none'}); see the log above"
            )
        best = top[0]
        command = exp_run_command(best.values, params)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if log is not None:
            log.finish(best, command, status)
    counts = {s: sum(r.state == s for r in results) for s in ("COMPLETE", "PRUNED", "FAIL")}
    out = [
        f"tune: {len(results)} trials ({', '.join(f'{v} {k.lower()}' for k, v in counts.items())})",
        f"best trial #{best.number}: val_loss={best.val_loss:.4f} "
        f"val_accuracy={best.val_accuracy:.4f}",
        *(f"  {k} = {v}" for k, v in best.values.items()),
        "reproduce it in the pipeline with:",
        f"  {command}",
    ]
    if log is not None:
        out.insert(1, f"MLflow: parent run {log.parent} in {log.uri}")
    if args.queue:
        commands = [exp_run_command(r.values, params, queue=True) for r in top[: args.queue]]
        queue_experiments(commands, root)
        out.append(f"queued the best {len(commands)} as DVC experiments: dvc exp run --run-all")
    sys.stdout.write("\n".join(out) + "\n")
    return 0
