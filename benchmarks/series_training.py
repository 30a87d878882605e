"""The series kind's training: the pipeline's train stage vs the seed's plain Keras script,
and the whole co2 pipeline's wall time by stage → benchmarks/results/series_training.json.

    python benchmarks/series_training.py [--epochs 5] [--work DIR]

Builds a throw-away series project on the offline assets' ``co2/co2_weekly.csv`` (default
params: window 52, horizon 8, LSTM(64)) and runs a real ``dvc repro`` on it, recording each
stage's wall time (``reprotrain.timing``'s "<stage> took N s" lines) and the total. Then,
in this process, on the prepared windows:

- ``pipeline_vs_plain``: training windows/s of the train stage's code path (the model with
  its normalisation inside, the in-memory dataset, ``training.train`` with its backups and
  callbacks) divided by the seed's script (``Input → LSTM(64) → Dense(horizon)``, ``fit`` on
  the window arrays in memory), the same epochs and batch size, both with validation each
  epoch, under the same TensorFlow settings (``runtime.configure``: op determinism, seeds),
  so the ratio measures the stage's code path. Steady state, the same for both sides: the
  first epoch of each run (tracing, compiling) is left out, and a run's speed is the median
  of its other epochs. ``--rounds`` rounds, the two interleaved (which goes first
  alternates); the ratio is the median of the rounds' ratios, each of two runs made back
  to back, so a burst of other work on the machine moves both sides of one round at most.
  ``plain_keras``/``pipeline`` are each side's median run. Target ≥ 0.9.
  ``pipeline_vs_plain_cpu``: the same ratio of windows per CPU second of the process (see
  ``EpochClock``), the steadier number when the machine is busy.
- ``backup_write_ms``: one epoch's backup weights file of the trained co2 model, written by
  Keras' ``model.save_weights`` as the backup writes it, median of 20 writes. (Writing the
  same file without Keras' object-graph walk saved about 11 ms an epoch, about 1% of the
  train stage: not worth reaching into Keras' private saver for.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for scripts.project_copy (run as `python benchmarks/...`)

from scripts.project_copy import make_project, subprocess_env  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "series_training.json"
TOOK = re.compile(r"reprotrain\.timing: (\w+) took ([0-9.]+) s")


def assets() -> Path:
    env = os.environ.get("REPROTRAIN_ASSETS")
    root = Path(env) if env else REPO.parent / "shared" / "assets"
    if not (root / "datasets").is_dir():
        sys.exit(f"no datasets under {root}: set REPROTRAIN_ASSETS")
    return root / "datasets"


def whole_run(work: Path, source: Path) -> tuple[Path, dict[str, Any]]:
    """``dvc repro`` of the whole series pipeline; its wall time and each stage's."""
    proj = make_project(
        work / "co2",
        {
            "data": {"kind": "series", "source": str(source), "sha256": None},
            "tracking": {"registered_model": "co2-forecaster"},
            "export": {"formats": ["saved_model", "tflite_float32"]},
        },
    )
    start = time.perf_counter()
    proc = subprocess.run(
        ["dvc", "repro"], cwd=proj, env=subprocess_env(), text=True, capture_output=True
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"dvc repro failed:\n{proc.stderr[-4000:]}")
    stages = {m[0]: float(m[1]) for m in TOOK.findall(proc.stdout + proc.stderr)}
    train = json.loads((proj / "metrics" / "train.json").read_text())
    evaluate = json.loads((proj / "metrics" / "evaluate.json").read_text())
    return proj, {
        "wall_s": round(wall, 1),
        "stages_s": stages,
        "epochs_run": train.get("epochs_run"),
        "mase": round(evaluate["mase"], 4),
        "naive_mase": round(evaluate["baselines"]["naive"]["mase"], 4),
        "coverage_80": round(evaluate["intervals"]["80"]["coverage"], 4),
        "coverage_95": round(evaluate["intervals"]["95"]["coverage"], 4),
        "target_s": 120,
    }


class EpochClock:
    """Wall and CPU time of each epoch (fit's callback, or training.train's epoch hook).

    The process's CPU time (all its threads) is the work an epoch took, which other
    processes on a shared machine barely change; wall time also counts the waits (disk
    syncs) and whatever else ran meanwhile.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []
        self._last = time.perf_counter()
        self._last_cpu = time.process_time()

    def tick(self, *_: Any) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.times.append(now - self._last)
        self.cpu.append(cpu - self._last_cpu)
        self._last, self._last_cpu = now, cpu

    def per_second(self, n: int, times: list[float] | None = None) -> float:
        """Windows per second of the median epoch after the first (warm-up: tracing)."""
        times = self.times if times is None else times
        steady = times[1:] or times
        return n / statistics.median(steady)

    def speeds(self, n: int) -> dict[str, Any]:
        return {
            "windows_per_second": round(self.per_second(n), 1),
            "windows_per_cpu_second": round(self.per_second(n, self.cpu), 1),
            "epoch_s": [round(t, 3) for t in self.times],
        }


def plain_script(train: Any, val: Any, cfg: Any) -> dict[str, Any]:
    """The seed's model, fit on the window arrays in memory."""
    import keras

    keras.utils.set_random_seed(42)
    window, channels = train.x.shape[1:]
    model = keras.Sequential(
        [
            keras.Input((window, channels)),
            keras.layers.LSTM(cfg.units),
            keras.layers.Dense(train.y.shape[1]),
        ]
    )
    model.compile("adam", "mse", metrics=["mae"])
    clock = EpochClock()
    model.fit(
        train.x,
        train.y,
        validation_data=(val.x, val.y),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        verbose=0,
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=clock.tick)],
    )
    return clock.speeds(len(train))


def pipeline_stage(proj: Path, train: Any, val: Any, cfg: Any, meta: Any) -> dict[str, Any]:
    """The train stage's code path (stages/series/train.py), timed per epoch."""
    from reprotrain import runtime, training
    from reprotrain.config import RuntimeConfig
    from reprotrain.series import training as series_training

    os.chdir(proj)
    info = runtime.configure(RuntimeConfig(), 42)
    model = series_training.build_model(cfg, meta, train)
    common = dict(batch_size=cfg.batch_size, seed=42)
    train_ds = series_training.in_memory_dataset(train.x, train.y, shuffle=True, **common)
    val_ds = series_training.in_memory_dataset(val.x, val.y, shuffle=False, **common)
    clock = EpochClock()
    with tempfile.TemporaryDirectory() as ckpt:
        result = training.train(
            model,
            train_ds,
            val_ds,
            cfg,
            info,
            training.RunOptions(Path(ckpt), epoch_hook=clock.tick),
            regression=cfg.loss,
        )
    return {**clock.speeds(len(train)), "epochs_run": result.epochs_run}


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median speed (the upper median of an even number)."""
    ranked = sorted(runs, key=lambda r: r["windows_per_second"])
    return ranked[len(ranked) // 2]


def backup_write_ms(train: Any, cfg: Any, meta: Any, writes: int = 20) -> dict[str, float]:
    """Milliseconds to write one epoch's backup weights file of the co2 model (optimizer
    built) with Keras' ``save_weights``, as the backup writes it: the median."""
    from reprotrain import runtime, training
    from reprotrain.config import RuntimeConfig
    from reprotrain.series import training as series_training

    info = runtime.configure(RuntimeConfig(), 42)
    model = series_training.build_model(cfg, meta, train)
    training.compile_model(model, cfg, info, regression=cfg.loss)
    ds = series_training.in_memory_dataset(train.x, train.y, shuffle=False, batch_size=32, seed=0)
    model.fit(ds.take(2), epochs=1, verbose=0)
    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "epoch.weights.h5"
        for _ in range(writes):
            start = time.perf_counter()
            model.save_weights(path)
            times.append(time.perf_counter() - start)
    return {"keras_save_weights": round(1000 * statistics.median(times), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the speed comparison")
    parser.add_argument(
        "--reuse", action="store_true", help="skip dvc repro: reuse --work's project and result"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="reprotrain-series-bench-"))
    source = assets() / "co2" / "co2_weekly.csv"
    if args.reuse and RESULTS.is_file():
        proj, run = work / "co2", json.loads(RESULTS.read_text())["whole_run"]
    else:
        proj, run = whole_run(work, source)
    print(f"dvc repro: {run}", file=sys.stderr)

    from reprotrain.config import load_params
    from reprotrain.series import windows

    prepared = proj / "data" / "series" / "prepared"
    meta = windows.load_meta(prepared)
    train, val = windows.load_windows(prepared, "train"), windows.load_windows(prepared, "val")
    base = load_params(proj / "params.yaml").series
    cfg = dataclasses.replace(base, epochs=args.epochs, early_stopping_patience=args.epochs)
    from reprotrain import runtime
    from reprotrain.config import RuntimeConfig

    runtime.configure(RuntimeConfig(), 42)  # the same TF settings for both sides
    plains, pipes = [], []
    for i in range(args.rounds):
        first_plain = i % 2 == 0
        if first_plain:
            plains.append(plain_script(train, val, cfg))
        pipes.append(pipeline_stage(proj, train, val, cfg, meta))
        if not first_plain:
            plains.append(plain_script(train, val, cfg))
    ratios, cpu_ratios = (
        [b[key] / a[key] for a, b in zip(plains, pipes, strict=True)]
        for key in ("windows_per_second", "windows_per_cpu_second")
    )
    plain, pipe = _median_run(plains), _median_run(pipes)
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_1m": round(os.getloadavg()[0], 2),  # other work on the machine
        },
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "speed": {
            "dataset": "co2/co2_weekly.csv",
            "model": f"LSTM({cfg.units})",
            "window": meta.window,
            "horizon": meta.horizon,
            "train_windows": len(train),
            "epochs": args.epochs,
            "rounds": args.rounds,
            "batch_size": cfg.batch_size,
            "plain_keras": plain,
            "pipeline": pipe,
            "pipeline_vs_plain": round(statistics.median(ratios), 3),
            "ratios_by_round": [round(r, 3) for r in ratios],
            "pipeline_vs_plain_cpu": round(statistics.median(cpu_ratios), 3),
            "cpu_ratios_by_round": [round(r, 3) for r in cpu_ratios],
            "backup_write_ms": backup_write_ms(train, cfg, meta),
            "target": 0.9,
        },
        "whole_run": run,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
