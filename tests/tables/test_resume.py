"""The table train stage killed after an epoch, for real: the stage script as a process on
a small churn project, SIGKILLed (or SIGTERMed, as ``kill`` or a CI timeout does) once its
first epoch's backup is committed, then rerun. It
resumes where the backup ends (no epoch trained twice: one history record and one
TensorBoard step per epoch), saves the model and history, records the resume in its MLflow
run and marks the killed run KILLED: what tests/test_chaos.py checks for the image stages
and tests/series/test_training.py for the series loop, through the same
``reprotrain.training`` checkpoints."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from reprotrain import paths
from scripts.project_copy import make_project, subprocess_env
from tests.conftest import project_client, run
from tests.models.tiny import tensorboard_steps

pytestmark = pytest.mark.slow

EPOCHS = 5
#: Small and slow to stop: every epoch runs (no early stop, no LR drop), each takes a few
#: batches, so the kill lands inside the training.
PARAMS: dict[str, Any] = {
    "data": {"kind": "table", "sha256": None},
    "prepare": {"shard_size": 64},
    "table": {
        "epochs": EPOCHS,
        "batch_size": 32,
        "hidden": [8],
        "early_stopping_patience": EPOCHS,
        "reduce_lr_patience": EPOCHS,
    },
    "tracking": {"system_metrics": False},
}
STATE = paths.CHECKPOINTS_DIR / "train" / "state.json"
TRAIN = [sys.executable, "stages/table/train.py"]


def _prepared_project(root: Path, source: Path) -> Path:
    """A table project whose churn slice is prepared in this process (the real prepare
    function; its stage as a process would only add an interpreter's imports)."""
    from reprotrain.config import load_params
    from reprotrain.dag.table import LAST_SCHEMA
    from reprotrain.tables.prepare import Options, prepare_table

    params = {**PARAMS, "data": {**PARAMS["data"], "source": str(source)}}
    proj = make_project(root, params, git=False)
    raw = proj / paths.RAW_DIR
    raw.mkdir(parents=True)
    shutil.copy2(source, raw / source.name)
    options = Options.from_params(load_params(proj / "params.yaml"))
    prepare_table(
        raw, proj / paths.TABLE_PREPARED, options, proj / paths.TABLE_LEDGER, proj / LAST_SCHEMA
    )
    return proj


def _done(proj: Path) -> int:
    """Epochs the backup has committed (0: none yet; state.json is replaced atomically)."""
    try:
        return int(json.loads((proj / STATE).read_text())["done"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _train_killed_after_first_epoch(
    proj: Path, env: dict[str, str], log: Path, sig: signal.Signals
) -> int:
    """The train stage, sent ``sig`` (its whole process group) as soon as its backup holds an
    epoch; the epochs committed at the kill."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            TRAIN, cwd=proj, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 600
            while _done(proj) < 1:
                assert proc.poll() is None, f"train ended early:\n{log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, "timed out waiting for the first epoch"
                time.sleep(0.02)  # polling the file, not waiting for a moment
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            proc.wait(timeout=120)
    # SIGKILL ends it at once; SIGTERM is caught and ends it as Ctrl-C does (exit code 130).
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), proc.returncode
    return _done(proj)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_killed_table_train_stage_resumes(
    tmp_path: Path, churn_csv: Path, sig: signal.Signals
) -> None:
    proj = _prepared_project(tmp_path / "proj", churn_csv)
    env = subprocess_env()

    log = tmp_path / "killed.log"
    done = _train_killed_after_first_epoch(proj, env, log, sig)
    assert 1 <= done < EPOCHS, "train finished before the kill"
    assert not (proj / paths.TABLE_MODEL).exists()
    if sig == signal.SIGTERM:  # caught: one line says what is kept and how to go on
        killed = log.read_text()
        assert "Traceback" not in killed, killed[-4000:]
        assert (
            f"training interrupted: every finished epoch is kept in {STATE.parent}; rerun the "
            "stage (dvc repro) to resume"
        ) in killed, killed[-4000:]
        assert killed.rstrip().endswith("interrupted")

    again = run(TRAIN, proj, env)
    out = again.stdout + again.stderr
    assert "Traceback" not in out
    assert f"resuming an interrupted run after epoch {done}/{EPOCHS}" in out, out[-4000:]

    history = json.loads((proj / paths.TABLE_HISTORY).read_text())
    assert history["epoch"] == list(range(1, EPOCHS + 1))  # none repeated, none lost
    metrics = json.loads((proj / paths.METRICS_DIR / "train.json").read_text())
    assert metrics["resumed_from_epoch"] == done and metrics["epochs_run"] == EPOCHS
    assert (proj / paths.TABLE_MODEL).is_file()
    assert not (proj / STATE).parent.exists()  # the backup is gone once the outputs are saved
    every = list(range(EPOCHS))  # the killed run's TensorBoard steps are kept, each once
    steps = tensorboard_steps(proj / paths.TENSORBOARD_DIR / "train")
    assert steps == {"train": every, "validation": every}, steps

    client = project_client(proj)
    run_id = json.loads((proj / paths.TABLE_RUN).read_text())["run_id"]
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED"
    assert finished.data.metrics["final_resumed_from_epoch"] == done
    exp = client.get_experiment(finished.info.experiment_id)
    stage_runs = client.search_runs(
        [exp.experiment_id], filter_string="tags.`reprotrain.stage` = 'train'"
    )
    killed = [r for r in stage_runs if r.info.run_id != run_id]
    assert [r.info.status for r in killed] == ["KILLED"]
