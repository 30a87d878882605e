"""``scale.py``'s DVC measurement: a real project (git + DVC, the repo's ``dvc.yaml``,
``params.yaml`` and stages) whose ``data/raw`` holds the generated files.

Why: ``dvc status`` and a no-op ``dvc repro`` hash-check every file of ``data/raw``, so
their cost with 20,000 files is what a user of a large dataset pays on every run.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # for scripts.project_copy
from scale_measure import load, timed_command  # noqa: E402

from scripts.project_copy import make_project  # noqa: E402


def measure_dvc(src: Path, prepared: Path, work: Path, repeats: int = 3) -> dict[str, Any]:
    """A real project whose data/raw holds the generated files: first run, then no-ops."""
    proj = work / "dvc-project"
    shutil.rmtree(proj, ignore_errors=True)
    make_project(proj, {"data": {"source": str(src), "sha256": None}})
    dvc = [sys.executable, "-m", "dvc"]
    out: dict[str, Any] = {"load_before": load()}
    out["first_repro_fetch_seconds"] = timed_command([*dvc, "repro", "fetch"], proj)
    logging.info("dvc repro fetch (first): %s s", out["first_repro_fetch_seconds"])
    # prepare's outputs: the ones this benchmark's own prepare run wrote from the same images,
    # params and seed (byte-identical to what the stage would write), committed to the lock
    # with `dvc commit` instead of paying a second 20k-image prepare.
    shutil.copytree(prepared, proj / "data" / "prepared")
    shutil.copy2(prepared.with_name(prepared.name + ".splits.csv"), proj / "data" / "splits.csv")
    (proj / "data" / "prepare.run.json").write_text("{}\n")
    t = time.perf_counter()
    timed_command([*dvc, "commit", "--force", "prepare"], proj)
    out["commit_prepare_seconds"] = round(time.perf_counter() - t, 2)
    noop, status, fetch_only = [], [], []
    for _ in range(repeats):
        noop.append(timed_command([*dvc, "repro", "prepare"], proj))
        status.append(timed_command([*dvc, "status"], proj))
        fetch_only.append(timed_command([sys.executable, "stages/fetch.py"], proj))
    out |= {
        "noop_repro_prepare_seconds": noop,
        "status_seconds": status,
        "fetch_stage_unchanged_seconds": fetch_only,
        "load_after": load(),
        "raw_files": sum(1 for _ in (proj / "data" / "raw").rglob("*.jpg")),
    }
    logging.info("dvc: %s", out)
    return out
