"""``run_main``'s exit: fast, yet nothing a normal exit would finish is lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ENTRY = """
import atexit, logging, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from reprotrain.cli import run_main
from reprotrain.errors import DataError

out = Path(sys.argv[1])
mode = sys.argv[2]
pool = ThreadPoolExecutor(1)

def late(name):
    time.sleep(0.5)
    (out / name).write_text("done")

def main():
    atexit.register(lambda: (out / "atexit").write_text("done"))
    threading.Thread(target=late, args=("thread",)).start()  # non-daemon: joined at exit
    pool.submit(late, "executor")
    print("to stdout, unflushed", end="")
    logging.getLogger("reprotrain.x").info("a log line")
    if mode == "error":
        raise DataError("bad input")
    return 0

run_main(main, name="probe")
"""


@pytest.mark.parametrize(("mode", "code"), [("ok", 0), ("error", 2)])
def test_exit_runs_what_a_normal_exit_runs(tmp_path: Path, mode: str, code: int) -> None:
    script = tmp_path / "entry.py"
    script.write_text(ENTRY)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), mode],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == code, proc.stderr
    for name in ("thread", "executor", "atexit"):
        assert (tmp_path / name).read_text() == "done", name
    assert proc.stdout == "to stdout, unflushed"
    assert "a log line" in proc.stderr
    if mode == "error":
        assert "error: bad input" in proc.stderr
