"""SIGKILL during training through real `dvc repro`: the rerun resumes from the last
finished epoch and ends with the best weights over all epochs, before and after the kill.

Real processes and real signals: `dvc repro` runs in its own process group and the whole
group (dvc, the stage's python) gets SIGKILL at chosen moments: right after an epoch's
state is committed, and at a random moment inside an epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import (
    TINY_PARAMS,
    deep_update,
    make_class_tree,
    make_project,
    run,
    subprocess_env,
)
from tests.models.tiny import tiny_weights

pytestmark = pytest.mark.slow

EPOCHS = 6


def _project(tmp_path: Path, stage_params: dict) -> Path:
    data = make_class_tree(tmp_path / "images", {"cats": 24, "dogs": 24})
    # The real 0.35 ImageNet weights (2 MB) so that epochs differ; 32 px keeps it fast.
    params = deep_update(
        TINY_PARAMS,
        {"data": {"source": str(data), "sha256": None}, "model": {"weights": str(tiny_weights())}},
    )
    return make_project(tmp_path / "proj", deep_update(params, stage_params))


def _state(proj: Path, stage: str) -> dict | None:
    path = proj / ".reprotrain" / "checkpoints" / stage / "state.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _repro_killed(proj: Path, env: dict, stage: str, done: int, delay: float, log: Path) -> int:
    """Start `dvc repro`; once ``stage`` has committed ``done`` epochs wait ``delay`` s, then
    SIGKILL the whole process group. Returns the number of committed epochs at the kill."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["dvc", "repro"],
            cwd=proj,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the kill reaches every child
        )
        try:
            deadline = time.monotonic() + 900
            while (s := _state(proj, stage)) is None or s["done"] < done:
                assert proc.poll() is None, f"dvc repro ended early:\n{log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, "timed out waiting for the epoch"
                time.sleep(0.05)
            time.sleep(delay)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    state = _state(proj, stage)
    assert state is not None
    return state["done"]


def _val_accuracy(proj: Path, model_path: Path) -> float:
    """The saved model's accuracy on the prepared val split, measured here."""
    from reprotrain.config import load_params
    from reprotrain.data.pipeline import make_dataset
    from reprotrain.models.loading import load_model
    from reprotrain.paths import split_files

    params = load_params(proj / "params.yaml")
    size = params.model.image_size
    files = split_files(proj / "data" / "prepared", "val")
    ds = make_dataset(files, params.pipeline, False, image_size=size, batch_size=8, seed=0)
    model = load_model(model_path, image_size=size)
    probs = np.concatenate([model.predict_on_batch(x) for x, _ in ds])
    labels = np.concatenate([y.numpy() for _, y in ds])
    return float(np.mean(probs.argmax(axis=1) == labels))


def _check_kept_model(proj: Path, stage: str, model: str, epochs_at_kills: list[int]) -> None:
    history = json.loads((proj / "models" / f"{model}.history.json").read_text())
    metrics = json.loads((proj / "metrics" / f"{stage}.json").read_text())
    # One record per epoch, merged over all runs, none lost at a kill.
    assert history["epoch"] == list(range(1, len(history["epoch"]) + 1))
    assert len(history["epoch"]) >= max(epochs_at_kills)
    val_loss = history["val_loss"]
    best = 1 + int(np.argmin(val_loss))
    if metrics.get("start_val_loss", np.inf) <= val_loss[best - 1]:
        best = 0
    assert metrics["best_epoch"] == best, (metrics, val_loss)
    expected = metrics["start_val_accuracy"] if best == 0 else history["val_accuracy"][best - 1]
    assert metrics["val_accuracy"] == pytest.approx(expected, abs=1e-6)
    assert _val_accuracy(proj, proj / "models" / f"{model}.keras") == pytest.approx(
        expected, abs=1e-6
    )
    assert not (proj / ".reprotrain" / "checkpoints" / stage).exists()


def _finish(proj: Path, env: dict, stage: str, resumed_after: int) -> str:
    """The next `dvc repro` (up to ``stage``: the stages after it do not matter here)."""
    proc = run(["dvc", "repro", stage], proj, env, timeout=900)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "OSError" not in out, out[-4000:]
    assert f"resuming an interrupted run after epoch {resumed_after}/" in out, out[-4000:]
    return out


def test_sigkill_during_finetune_resumes_and_keeps_the_best(tmp_path: Path) -> None:
    proj = _project(
        tmp_path,
        {
            "finetune": {
                "epochs": EPOCHS,
                "learning_rate": 0.01,
                "early_stopping_patience": EPOCHS,
                "augment": False,
            }
        },
    )
    env = subprocess_env()
    rng = random.Random(1234)
    kills = []
    # 1: right after epoch 2's state is committed (at an epoch boundary, as in the issue).
    kills.append(_repro_killed(proj, env, "finetune", 2, 0.0, tmp_path / "repro1.log"))
    # 2: at a random moment inside the epoch after the next one (the rerun resumes first).
    delay = rng.uniform(0.0, 1.5)
    kills.append(_repro_killed(proj, env, "finetune", kills[0] + 1, delay, tmp_path / "repro2.log"))
    repro2 = (tmp_path / "repro2.log").read_text()
    assert f"resuming an interrupted run after epoch {kills[0]}/" in repro2, repro2[-4000:]
    assert "Traceback" not in repro2
    _finish(proj, env, "finetune", kills[1])
    _check_kept_model(proj, "finetune", "finetuned", kills)


def test_sigkill_during_train_head_without_feature_cache(tmp_path: Path) -> None:
    proj = _project(
        tmp_path,
        {"train_head": {"epochs": 4, "feature_cache": "off", "early_stopping_patience": 4}},
    )
    env = subprocess_env()
    done = _repro_killed(
        proj, env, "train_head", 1, random.Random(99).uniform(0.0, 1.0), tmp_path / "r1.log"
    )
    _finish(proj, env, "train_head", done)
    _check_kept_model(proj, "train_head", "head", [done])
