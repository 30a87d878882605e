"""The whole table pipeline: ``dvc repro`` of a fresh table project per dataset, by stage.

Why: issue 24 asks that `make repro` on a real table finish in under 2 minutes on 2 cores
from a warm set-up; this times exactly that (``make_project`` with ``data.kind: table`` and
the dataset as ``data.source``, default params), each stage from DVC's "Running stage" line
to the next. Every stage is its own process (a TensorFlow + MLflow import each), so the
breakdown shows what the work costs next to that fixed start-up.

    python benchmarks/table_pipeline.py [--assets ../shared/assets] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for scripts.project_copy (run as `python benchmarks/...`)

from scripts.project_copy import make_project, subprocess_env  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "table_pipeline.json"
DATASETS = {"churn": "churn/churn.csv", "topics8": "fortunes/topics8.csv"}


def timed_repro(project: Path) -> tuple[float, dict[str, float], int]:
    """Wall seconds of ``dvc repro``, per stage and in total, and its exit code."""
    start = time.perf_counter()
    stamps: list[tuple[str, float]] = []
    proc = subprocess.Popen(
        ["dvc", "repro"],
        cwd=project,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Running stage"):
            stamps.append((line.split("'")[1], time.perf_counter() - start))
    code = proc.wait()
    total = time.perf_counter() - start
    ends = [t for _, t in stamps[1:]] + [total]
    return total, {s: round(e - t, 1) for (s, t), e in zip(stamps, ends, strict=True)}, code


def run(dataset: str, source: Path, work: Path) -> dict:
    project = work / dataset
    shutil.rmtree(project, ignore_errors=True)
    make_project(project, {"data": {"kind": "table", "source": str(source), "sha256": None}})
    total, stages, code = timed_repro(project)
    if code != 0:
        raise SystemExit(f"dvc repro failed in {project} (exit {code})")
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text(encoding="utf-8"))
    gain = metrics.get("baseline_gain")
    return {
        "total_s": round(total, 1),
        "stages": stages,
        "accuracy": metrics.get("accuracy"),
        "baseline_gain": gain.get("delta") if isinstance(gain, dict) else gain,
        "load_before": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", type=Path, default=REPO.parent / "shared" / "assets")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="table-pipeline-"))
    runs = {name: run(name, args.assets / "datasets" / rel, work) for name, rel in DATASETS.items()}
    out = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "runs": runs,
    }
    RESULTS.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
