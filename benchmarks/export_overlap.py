"""What export's overlap saves: the image export stage as it runs (``serving.export.
ModelExport`` entered first, so the conversion process imports TensorFlow and converts
while the stage loads data and sets up MLflow) against the same work in a row (everything
loaded first, then ``export_and_verify``).

Both run as fresh processes on a project that has been through ``dvc repro`` (its
``models/finetuned.keras`` and ``data/prepared``): the overlapped side is the real
``stages/export.py``; the sequential side is that script's work reordered (below). Rounds
alternate which goes first. The figure is each process's wall time, start to end.

    python benchmarks/export_overlap.py PROJECT [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

try:
    from benchmarks.alternating import alternate, write_result
except ModuleNotFoundError:  # run as a script: python benchmarks/export_overlap.py
    from alternating import alternate, write_result  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "export_overlap.json"

#: stages/export.py's work in a row: no process started before the data is loaded.
SEQUENTIAL = """
import shutil
from pathlib import Path
from reprotrain import dag, paths, runtime, tracking
from reprotrain.cli import run_main
from reprotrain.config import load_params
from reprotrain.data import tfrecords
from reprotrain.serving import export, samples


def main():
    params = load_params()
    cfg, size = params.export, params.model.image_size
    info = runtime.configure(params.runtime, params.seed)
    calibration = samples.calibration_images(
        tfrecords.verify_shards(paths.PREPARED_DIR, "train"), params.pipeline,
        image_size=size, count=cfg.calibration_samples, seed=params.seed,
    )
    test_images, test_labels = samples.load_split(
        tfrecords.verify_shards(paths.PREPARED_DIR, "test"), params.pipeline,
        image_size=size, batch_size=cfg.batch_size, seed=params.seed,
    )
    shutil.rmtree(paths.EXPORT_DIR, ignore_errors=True)
    with tracking.stage_run(
        dag.stage("export"), params, Path.cwd(), environment=runtime.environment_info(info)
    ) as run:
        report = export.export_and_verify(
            paths.FINETUNED_MODEL, paths.EXPORT_DIR, test_images, test_labels, calibration, cfg
        )
        export.publish(run, report, paths.EXPORT_METRICS)
    return 0


run_main(main, "export")
"""


def run_once(way: str, project: Path) -> float:
    """One export process run ``way`` in ``project``: its wall seconds."""
    script = ["stages/export.py"] if way == "overlapped" else ["-c", SEQUENTIAL]
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, *script],
        cwd=project,
        check=True,
        capture_output=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path, help="a project after dvc repro")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    times = alternate(
        ("overlapped", "sequential"), args.rounds, lambda way: run_once(way, args.project)
    )
    write_result(
        RESULTS,
        "the image export stage's wall seconds, overlapped (as it runs) and in a row",
        times,
        "overlapped_vs_sequential",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
