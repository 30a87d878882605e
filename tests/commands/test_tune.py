"""`python -m reprotrain tune`: a real search on a tiny prepared project (trials logged as
nested MLflow runs, a `dvc exp run -S` command that reproduces the best trial, `--queue`),
and the pure helpers."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from reprotrain.commands import tune
from reprotrain.config import params_from_dict
from reprotrain.errors import ConfigError
from tests.conftest import TINY_PARAMS, deep_update, make_class_tree, make_project, run
from tests.conftest import subprocess_env as env_for


def command_values(command: str) -> dict[str, object]:
    """``-S key=value`` pairs of a printed command, values parsed as DVC does (YAML)."""
    argv = shlex.split(command)
    assert argv[:3] == ["dvc", "exp", "run"], command
    pairs = [argv[i + 1] for i, a in enumerate(argv) if a == "-S"]
    return {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}


@pytest.mark.slow
def test_tune_end_to_end_on_a_tiny_project(tmp_path: Path) -> None:
    images = make_class_tree(tmp_path / "images", {"cats": 16, "dogs": 16})
    params = deep_update(TINY_PARAMS, {"data": {"source": str(images), "sha256": None}})
    proj = make_project(tmp_path / "proj", params)
    env = env_for()
    run(["dvc", "repro", "prepare"], proj, env)
    run(["git", "add", "-A"], proj, env)
    run(["git", "commit", "-qm", "prepared"], proj, env)

    out = run(
        ["python", "-m", "reprotrain", "tune", "--trials", "3", "--seed", "1", "--queue", "2"],
        proj,
        env,
    )
    text = out.stdout
    assert "tune: 3 trials" in text and "best trial #" in text, text + out.stderr
    command = next(line.strip() for line in text.splitlines() if "dvc exp run" in line)
    values = command_values(command)
    assert set(values) == {
        "train_head.learning_rate",
        "train_head.dropout",
        "train_head.epochs",
        "train_head.class_weight",
    }
    # The command is valid: its values pass params.yaml validation, and DVC accepted the
    # same -S values when queueing (below).
    raw = yaml.safe_load((proj / "params.yaml").read_text())
    for key, value in values.items():
        section, name = key.split(".")
        raw[section][name] = value
    params_from_dict(raw)
    # --queue 2: two DVC experiments are queued.
    queued = run(["dvc", "queue", "status"], proj, env).stdout
    assert queued.count("Queued") == 2, queued

    client = mlflow.MlflowClient(f"sqlite:///{proj / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("reprotrain").experiment_id],
        filter_string=f"tags.`{tune.TAG_TUNE}` = 'parent'",
    )
    assert len(runs) == 1
    parent = runs[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[tune.TAG_COMMAND] == command
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    assert len(children) == 3
    best = min(
        (c for c in children if c.data.tags[tune.TAG_STATE] == "COMPLETE"),
        key=lambda c: c.data.metrics["final_val_loss"],
    )
    assert parent.data.metrics["best_val_loss"] == best.data.metrics["final_val_loss"]
    for key, value in values.items():
        assert best.data.params[key] == str(value)
    assert client.get_metric_history(best.info.run_id, "val_loss")

    # The printed command reproduces the best trial in the pipeline: train_head, run by DVC
    # with those values, keeps the same val_loss (same features, initial weights, seeds).
    run([*shlex.split(command), "train_head"], proj, env)
    metrics = json.loads((proj / "metrics" / "train_head.json").read_text())
    assert metrics["val_loss"] == pytest.approx(best.data.metrics["final_val_loss"], abs=1e-6)


def test_seeded_search_is_repeatable() -> None:
    def proposals(seed: int) -> list[dict[str, object]]:
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
        out = []
        for i in range(12):  # past TPE's 10 random start-up trials
            trial = study.ask()
            values = tune.suggest(trial, finetune=True)
            study.tell(trial, float(values["train_head.learning_rate"]) + i * 1e-3)
            out.append(values)
        return out

    assert proposals(3) == proposals(3)
    assert proposals(3) != proposals(4)
    for values in proposals(3):
        assert 1e-4 <= values["train_head.learning_rate"] <= 0.1
        assert values["train_head.dropout"] == round(values["train_head.dropout"], 2)
        assert values["finetune.unfreeze_top"] % 10 == 0


def test_command_and_values_helpers() -> None:
    params = params_from_dict({"train_head": {"augment": True}})
    values = {
        "train_head.learning_rate": 1e-05,
        "train_head.dropout": 0.25,
        "train_head.epochs": 7,
        "train_head.class_weight": "balanced",
    }
    command = tune.exp_run_command(values, params, queue=True)
    assert command == (
        "dvc exp run --queue -S train_head.learning_rate=1.0e-05 -S train_head.dropout=0.25 "
        "-S train_head.epochs=7 -S train_head.class_weight=balanced "
        "-S train_head.augment=false"
    )
    parsed = command_values(command)
    assert parsed["train_head.learning_rate"] == 1e-05  # YAML 1.1 reads it as a float
    applied = tune.apply_values(params, values)
    assert applied.train_head.epochs == 7 and applied.train_head.class_weight == "balanced"
    assert applied.finetune == params.finetune
    with pytest.raises(ConfigError, match="--trials"):
        tune.parse_args(["--trials", "0"])
    assert tune.parse_args([]).trials == 20
    assert tune.parse_args(["--timeout", "60"]).trials is None


def test_ranked_keeps_completed_trials_best_first() -> None:
    results = [
        tune.TrialResult(0, {}, "COMPLETE", 0.5, 0.8),
        tune.TrialResult(1, {}, "PRUNED", 0.1, 0.9),
        tune.TrialResult(2, {}, "COMPLETE", 0.3, 0.7),
        tune.TrialResult(3, {}, "COMPLETE", 0.3, 0.75),
        tune.TrialResult(4, {}, "FAIL"),
    ]
    assert [r.number for r in tune.ranked(results)] == [3, 2, 0]
    assert math.isnan(results[4].val_loss)
