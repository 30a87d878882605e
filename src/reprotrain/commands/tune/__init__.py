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
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from reprotrain import paths, runtime
from reprotrain.commands.tune.record import (
    TAG_COMMAND,
    TAG_STATE,
    TAG_TRIAL,
    TAG_TUNE,
    TrialLog,
    exp_run_command,
    queue_experiments,
    yaml_value,
)
from reprotrain.commands.tune.search import (
    SearchOptions,
    TrialResult,
    apply_values,
    ranked,
    search,
    suggest,
)
from reprotrain.config import load_params
from reprotrain.errors import ConfigError, DataError, ReprotrainError

__all__ = [
    "TAG_COMMAND",
    "TAG_STATE",
    "TAG_TRIAL",
    "TAG_TUNE",
    "TrialResult",
    "apply_values",
    "exp_run_command",
    "main",
    "parse_args",
    "ranked",
    "suggest",
    "yaml_value",
]


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
            SearchOptions(args.trials, args.timeout, seed, args.finetune, args.finetune_epochs),
            log,
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
