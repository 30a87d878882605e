"""The per-stage time breakdown: phases nest without double counting and add up to the wall."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reprotrain import timing


class _Clock:
    """A clock the test advances by hand: the breakdown's arithmetic, free of a loaded
    machine's scheduling (``timing`` reads ``time.perf_counter`` for phases and
    ``time.time`` for the process age)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


def test_nested_phases_count_once_and_the_rest_is_other(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(timing, "time", clock)
    monkeypatch.setattr(timing, "process_age", lambda: clock.now - 990.0)  # born 10 s ago
    timing.start()  # main() starts at age 10: that is the imports
    with timing.phase("train"):
        clock.now += 2.0
        with timing.phase("logging"):
            clock.now += 3.0
        clock.now += 1.0
    clock.now += 0.5  # outside every phase
    with timing.phase("train"):  # a second visit adds up
        clock.now += 0.25
    times = timing.breakdown()
    assert times["imports"] == 10.0
    assert times["train"] == 3.2  # 2 + 1 + 0.25: the nested 3 s counts to logging only
    assert times["logging"] == 3.0
    assert times["other"] == 0.5  # the uncovered half second, not a remainder of rounding
    assert times["total"] == 16.8
    assert {k for k, v in times.items() if v} == {"imports", "train", "logging", "other", "total"}


def test_time_outside_main_is_not_counted_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """``other`` never goes negative when the phases were measured against another total."""
    clock = _Clock()
    monkeypatch.setattr(timing, "time", clock)
    monkeypatch.setattr(timing, "process_age", lambda: clock.now - 999.0)
    timing.start()
    with timing.phase("score"):
        clock.now += 5.0
    times = timing.breakdown(total=4.0)  # a caller's shorter wall time
    assert times["other"] == 0.0
    assert times["score"] == 5.0


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
