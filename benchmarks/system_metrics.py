"""Overhead of MLflow system-metrics logging on training.

Run by hand (``.venv/bin/python benchmarks/system_metrics.py [--repeats N] [--interval S]``);
writes ``benchmarks/results/system_metrics.json``, which decides ``tracking.system_metrics``'
default (on only if the overhead is small). In one process, against a real SQLite store in
a temporary directory: the same small CNN (64×64 inputs, 512 random images, batch 32,
``--epochs`` epochs of ``fit`` with the per-epoch metrics logged to the run, as the stages
do) trained inside ``mlflow.start_run(log_system_metrics=...)``, with and without the
monitor, interleaved (off, on, on, off, ...) so machine load drifts hit both alike. Reported:
median wall time and median CPU time of this process (all threads: the monitor's sampling
and writes included) of each, their ratios (on / off), and the system metrics logged. On a
shared machine the wall times swing with the other load; the CPU-time ratio does not.

The default interval is the pipeline's (10 s); ``--interval 1`` shows the worst case.
Expected runtime: ~2-3 min on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

RESULTS = Path(__file__).resolve().parent / "results" / "system_metrics.json"


def _model():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64, 64, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def one_run(system_metrics: bool, epochs: int, data) -> tuple[float, float, list[str]]:
    """Wall and CPU time (all threads of this process) of one tracked training run, and the
    system/* metric keys it logged."""
    import keras
    import mlflow

    x, y = data

    class LogEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            mlflow.log_metrics({k: float(v) for k, v in (logs or {}).items()}, step=epoch)

    model = _model()
    t0, c0 = time.perf_counter(), time.process_time()
    with mlflow.start_run(log_system_metrics=system_metrics) as run:
        model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[LogEpoch()])
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    metrics = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    return elapsed, cpu, sorted(k for k in metrics if k.startswith("system/"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=4, help="runs with and without each")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--interval", type=float, default=10.0, help="sampling interval (s)")
    args = parser.parse_args()

    import mlflow
    import numpy as np

    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = str(args.interval)
    rng = np.random.default_rng(0)
    data = (
        rng.uniform(0, 255, (512, 64, 64, 3)).astype("float32"),
        rng.integers(0, 2, 512).astype("int32"),
    )
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        mlflow.set_experiment("system-metrics-benchmark")
        one_run(False, 1, data)  # warm-up: imports, tracing, database creation
        times: dict[bool, list[float]] = {False: [], True: []}
        cpus: dict[bool, list[float]] = {False: [], True: []}
        logged: list[str] = []
        for i in range(args.repeats):
            for flag in (False, True) if i % 2 == 0 else (True, False):
                elapsed, cpu, keys = one_run(flag, args.epochs, data)
                times[flag].append(elapsed)
                cpus[flag].append(cpu)
                logged = keys or logged
                print(f"system_metrics={flag!s:5} {elapsed:6.2f} s, cpu {cpu:6.2f} s", flush=True)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    cpu_off, cpu_on = statistics.median(cpus[False]), statistics.median(cpus[True])
    result = {
        "what": "median wall time of a tracked 64px CNN fit with/without MLflow system metrics",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        },
        "mlflow": mlflow.__version__,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "interval_s": args.interval,
        "off_s": round(off, 3),
        "on_s": round(on, 3),
        "ratio_on_over_off": round(on / off, 4),
        "cpu_off_s": round(cpu_off, 3),
        "cpu_on_s": round(cpu_on, 3),
        "cpu_ratio_on_over_off": round(cpu_on / cpu_off, 4),
        "runs_off_s": [round(t, 3) for t in times[False]],
        "runs_on_s": [round(t, 3) for t in times[True]],
        "runs_cpu_off_s": [round(t, 3) for t in cpus[False]],
        "runs_cpu_on_s": [round(t, 3) for t in cpus[True]],
        "system_metrics_logged": logged,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
