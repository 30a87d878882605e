"""serving.folders: the export folders' atomic swap under a real SIGKILL of the writer (at
each step of the swap) and a writer that fails half-way."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO

#: A child process that swaps a new tree in over ``target`` and blocks at ``point``, after
#: saying so in ``ready``: the parent SIGKILLs it exactly there (no sleeps).
SWAP_CHILD = """
import os, sys, time
from pathlib import Path
from reprotrain import fsio
from reprotrain.serving import folders

target, ready, point = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

def block():
    ready.write_text(str(os.getpid()))
    while True:
        time.sleep(60)

real_exchange, real_rename = fsio.exchange, os.rename

def exchange(a, b):
    if point == "before":
        block()
    if point == "between":
        return False  # the two-rename fallback, as where renameat2 is missing
    done = real_exchange(a, b)
    assert done, "this file system cannot exchange: the test expects it to"
    block()

def rename(src, dst):
    real_rename(src, dst)
    if point == "between" and Path(src) == target:
        block()  # the old tree moved aside, the new one not yet in

fsio.exchange, os.rename = exchange, rename
with folders.atomic_directory(target) as tmp:
    tmp.mkdir()
    (tmp / "saved_model.pb").write_text("new")
"""


def _tree_version(target: Path) -> str | None:
    return (target / "saved_model.pb").read_text() if target.is_dir() else None


@pytest.mark.parametrize("point", ["before", "between", "after"])
def test_a_kill_at_the_swap_leaves_the_old_or_the_new_folder(tmp_path: Path, point: str) -> None:
    """A real SIGKILL of a writer blocked at the swap: before it, between the fallback's two
    renames, after it. The folder is then the old tree or the new one (after the next
    writer's start-up clean-up for the fallback), with no leftovers beside it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from reprotrain.serving.folders import atomic_directory, recover_directory

    target, ready = tmp_path / "export" / "saved_model", tmp_path / "ready"
    target.mkdir(parents=True)
    (target / "saved_model.pb").write_text("old")
    child = subprocess.Popen(
        [sys.executable, "-c", SWAP_CHILD, str(target), str(ready), point], cwd=REPO
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():  # the child writes it at the kill point, then blocks
            assert child.poll() is None, f"the child exited ({child.returncode})"
            assert time.monotonic() < deadline, "the child never reached the swap"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    # The one-step swap: a reader right after the kill sees a whole tree.
    expected = {"before": "old", "after": "new", "between": None}[point]
    assert _tree_version(target) == expected
    recover_directory(target)  # what the next writer does first
    assert _tree_version(target) == (expected or "old")  # the fallback restores the old
    assert sorted(p.name for p in target.parent.iterdir()) == ["saved_model"]
    # And the next writer then swaps in its own tree as usual.
    with atomic_directory(target) as tmp:
        tmp.mkdir()
        (tmp / "saved_model.pb").write_text("next")
    assert _tree_version(target) == "next"
    assert sorted(p.name for p in target.parent.iterdir()) == ["saved_model"]


def test_a_failed_writer_leaves_the_old_folder(tmp_path: Path) -> None:
    from reprotrain.serving.folders import atomic_directory

    target = tmp_path / "saved_model"
    target.mkdir()
    (target / "saved_model.pb").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        tmp.mkdir()
        (tmp / "saved_model.pb").write_text("half")
        raise RuntimeError("converter failed")
    assert _tree_version(target) == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["saved_model"]
