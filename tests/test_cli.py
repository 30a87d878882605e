"""Entry points: a stage process exits with its code after everything a normal exit runs;
``cli.run`` and ``reprotrain.__main__.main`` return the code instead of ending the caller's
process; ``import reprotrain`` changes no environment, the stage process sets what it needs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reprotrain import cli
from reprotrain.errors import DataError

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

#: The variables ``import reprotrain`` used to set (and the stage process sets now).
PROCESS_VARS = tuple(cli.PROCESS_ENV)


def _python(code: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in PROCESS_VARS}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **env},
    )


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


def test_run_returns_the_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    """In this (pytest's) process: a user error is a code and one line, never an exit."""

    def bad() -> int:
        raise DataError("bad input")

    def interrupted() -> int:
        raise KeyboardInterrupt

    def usage() -> int:
        raise SystemExit(2)  # what argparse raises on a bad argument

    assert cli.run(lambda: 0, name="probe") == 0
    assert cli.run(lambda: None, name="probe") == 0
    assert cli.run(lambda: 1, name="probe") == 1
    assert cli.run(bad, name="probe") == cli.EXIT_USER_ERROR
    assert cli.run(interrupted, name="probe") == cli.EXIT_INTERRUPTED
    assert cli.run(usage, name="probe") == 2
    assert capsys.readouterr().err.splitlines() == ["error: bad input", "interrupted"]


def test_main_returns_instead_of_ending_the_process() -> None:
    """A notebook calling the CLI's main keeps its kernel: code after the call runs."""
    code = (
        "from reprotrain.__main__ import main\n"
        "codes = [main([]), main(['no-such-command']), main(['reproduce', '--bad-flag']),\n"
        "         main(['reproduce', 'run1', '--root', '/nonexistent'])]\n"
        "print('alive', codes)\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "alive [2, 2, 2, 2]"
    assert "error: unknown command 'no-such-command'" in proc.stderr
    assert "the following arguments are required: run_id" in proc.stderr
    assert "error: params file not found: /nonexistent/params.yaml" in proc.stderr


def test_the_command_process_exits_with_the_code() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "reprotrain", "reproduce", "run1", "--root", "/nonexistent"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == cli.EXIT_USER_ERROR, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: params file not found")


def test_import_sets_no_environment() -> None:
    code = (
        "import os, sys\n"
        "before = dict(os.environ)\n"
        "import reprotrain, reprotrain.api, reprotrain.cli, reprotrain.progress\n"
        "changed = sorted(k for k in set(before) | set(os.environ) "
        "if before.get(k) != os.environ.get(k))\n"
        "heavy = [m for m in ('tensorflow', 'mlflow', 'keras') if m in sys.modules]\n"
        "print(changed, heavy)\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[] []"


@pytest.mark.slow
@pytest.mark.parametrize(("user_value", "expected"), [(None, "bfc"), ("false", "malloc")])
def test_stage_process_gets_the_bfc_allocator(user_value: str | None, expected: str) -> None:
    """As a stage script: TensorFlow imported at the top, then ``run_main``; the allocator
    is TensorFlow's answer (``runtime.cpu_allocator``), the user's own setting wins.

    With oneDNN on (TensorFlow's default on CPUs with AVX-512), TensorFlow's CPU allocator
    is its oneDNN one, a BFC allocator that ignores the variable; oneDNN is turned off here so
    that the variable counts on every machine."""
    code = (
        "import tensorflow\n"
        "from reprotrain import runtime\n"
        "from reprotrain.cli import run_main\n"
        "run_main(lambda: print(runtime.cpu_allocator()))\n"
    )
    env = {"TF_ENABLE_ONEDNN_OPTS": "0"}
    if user_value is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = user_value
    proc = _python(code, **env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected
