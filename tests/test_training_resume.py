"""A training process killed mid-run resumes from its last finished epoch when rerun."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, run, subprocess_env


def test_killed_run_resumes_from_backup(tmp_path: Path) -> None:
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.json"
    cmd = [sys.executable, "-m", "tests.models.resume_worker", str(ckpt), str(out)]
    env = subprocess_env()
    proc = subprocess.Popen([*cmd, "30"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    metadata = ckpt / "backup" / "training_metadata.json"
    try:
        deadline = time.monotonic() + 240
        # The hook of the second epoch sleeps: epoch 1 is backed up, epoch 2 is recorded
        # in the history but not yet backed up (the resumed run must redo and overwrite it).
        while time.monotonic() < deadline and proc.poll() is None:
            if metadata.is_file() and json.loads(out.with_suffix(".epochs").read_text()) == [0, 1]:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait()
    assert not out.exists()  # really killed before finishing
    backed_up = json.loads(metadata.read_text())["epoch"]
    assert backed_up == 1  # killed after epoch index 0's backup, before index 1's

    run(cmd, REPO, env, timeout=300)
    result = json.loads(out.read_text())
    assert result["seen"] == [1, 2, 3]  # epochs 0 was not redone
    assert result["summary"]["resumed_from_epoch"] == 1
    assert result["history"]["epoch"] == [1, 2, 3, 4]  # merged across both processes
    assert not ckpt.exists()  # cleaned up after success
