"""Where a search is recorded and handed on: nested MLflow runs, the ``dvc exp run -S ...``
command of a trial, queued DVC experiments."""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reprotrain import tracking
from reprotrain.commands.tune.search import TrialResult
from reprotrain.config import Params
from reprotrain.errors import ReprotrainError

logger = logging.getLogger(__name__)

TAG_TUNE = "reprotrain.tune"
TAG_TRIAL = "reprotrain.tune.trial"
TAG_STATE = "reprotrain.tune.state"
TAG_COMMAND = "reprotrain.tune.command"


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
