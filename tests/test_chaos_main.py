"""Two `dvc repro` in one project: the second refuses cleanly, the first is not disturbed.

DVC guards the repository (``Unable to acquire lock``) and each stage's outputs and deps
(``... is busy, it is being blocked by: (PID ...)``, its read/write locks in
``.dvc/tmp/rwlock``); the stages add no lock of their own.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import run, subprocess_env


@pytest.mark.slow
def test_second_repro_in_the_same_project_refuses_and_corrupts_nothing(tiny_project: Path) -> None:
    env = subprocess_env()
    first = subprocess.Popen(
        ["dvc", "repro"],
        cwd=tiny_project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Wait until the first one is inside a training stage (it holds DVC's repo lock).
        deadline = time.monotonic() + 300
        while not (tiny_project / "data" / "prepared" / "labels.json").is_file():
            assert first.poll() is None, first.stdout.read() if first.stdout else ""
            assert time.monotonic() < deadline, "the first dvc repro never reached prepare"
            time.sleep(0.2)
        second = run(["dvc", "repro"], tiny_project, env, check=False, timeout=300)
        out_first, _ = first.communicate(timeout=900)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode != 0
    text = second.stdout + second.stderr
    assert "Unable to acquire lock" in text or "is busy, it is being blocked by" in text, text
    assert "Traceback" not in text
    assert first.returncode == 0, out_first[-4000:]
    # Nothing corrupted: everything is up to date and the metrics are readable.
    status = run(["dvc", "status"], tiny_project, env).stdout
    for stage in ("prepare", "train_head", "finetune", "evaluate"):
        assert f"{stage}:" not in status, status
    assert (tiny_project / "metrics" / "evaluate.json").is_file()
