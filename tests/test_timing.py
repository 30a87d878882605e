"""The per-stage time breakdown: phases nest without double counting and add up to the wall."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reprotrain import timing


def test_nested_phases_count_once_and_add_up(monkeypatch: pytest.MonkeyPatch) -> None:
    timing.start()
    with timing.phase("train"):
        time.sleep(0.2)
        with timing.phase("logging"):
            time.sleep(0.3)
    times = timing.breakdown(total=timing.process_age())
    assert 0.15 <= times["train"] <= 0.45, times  # the nested 0.3 s is not counted twice
    assert 0.25 <= times["logging"] <= 0.55, times
    parts = sum(v for k, v in times.items() if k != "total")
    assert parts == pytest.approx(times["total"], abs=0.6)  # rounding of 9 parts


def test_unknown_phase_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown timing phase 'trian'"), timing.phase("trian"):
        pass


def test_a_stage_process_writes_its_breakdown(tmp_path: Path) -> None:
    """A real entry point through ``run_main``: imports measured from process start."""
    script = tmp_path / "mystage.py"
    script.write_text(
        "import time\n"
        "from reprotrain import timing\n"
        "from reprotrain.cli import run_main\n"
        "def main():\n"
        "    with timing.phase('score'):\n"
        "        time.sleep(0.3)\n"
        "run_main(main)\n"
    )
    out = tmp_path / "timings"
    proc = subprocess.run(
        [sys.executable, str(script)],
        env={"REPROTRAIN_TIMINGS": str(out), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    times = json.loads((out / "mystage.json").read_text())
    assert times["score"] >= 0.3
    assert times["imports"] > 0
    assert times["total"] >= times["imports"] + times["score"] - 0.1  # each rounded to 0.1 s
    assert "mystage took" in proc.stderr
