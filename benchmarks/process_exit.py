"""How long a stage process takes to end, with and without ``cli.exit_process``'s
``gc.freeze()``.

Every stage of ``dvc repro`` is a process that has imported TensorFlow, Keras and MLflow
and built a model; DVC starts the next stage only when it has ended. The child here does
what a training stage does at small scale (builds MobileNetV2 without weights at 96 px,
trains one step, saves the ``.keras`` file, logs a metric and the file to an MLflow SQLite
store), writes the time, then ends either through ``reprotrain.cli.exit_process`` (the
seam: ``gc.freeze()``, then the normal ``sys.exit``) or through a plain ``sys.exit``. The
figure is the time from that mark to the process's end, seen by the parent; rounds
alternate the two ways so that both see the same machine.

    python benchmarks/process_exit.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from benchmarks.alternating import alternate, write_result
except ModuleNotFoundError:  # run as a script: python benchmarks/process_exit.py
    from alternating import alternate, write_result  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "process_exit.json"

CHILD = """
import os, sys, time
import keras, mlflow, numpy as np
mlflow.set_tracking_uri("sqlite:///" + os.path.abspath("mlflow.db"))
model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), weights=None, classes=2)
model.compile("adam", "sparse_categorical_crossentropy")
model.fit(np.zeros((8, 96, 96, 3)), np.zeros((8,)), epochs=1, verbose=0)
model.save("model.keras")
with mlflow.start_run():
    mlflow.log_metric("accuracy", 1.0)
    mlflow.log_artifact("model.keras")
sys.stderr.write(f"MARK {time.time():.6f}\\n")
sys.stderr.flush()
if sys.argv[1] == "exit_process":
    from reprotrain import cli
    cli.exit_process(0)
sys.exit(0)
"""


def exit_seconds(way: str, work: Path) -> float:
    """One child ended ``way``: seconds from its mark to its end."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, way],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    end = time.time()
    mark = next(line for line in proc.stderr.splitlines() if line.startswith("MARK "))
    return end - float(mark.split()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="reprotrain-exit-") as tmp:
        times = alternate(
            ("sys_exit", "exit_process"), args.rounds, lambda way: exit_seconds(way, Path(tmp))
        )
    write_result(
        RESULTS,
        "seconds from the end of a stage-like process's work to the process's end",
        times,
        "exit_process_vs_sys_exit",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
