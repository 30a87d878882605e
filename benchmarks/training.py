"""Training benchmarks → benchmarks/results/training.json.

    python benchmarks/training.py [--assets ../shared/assets] [--epochs 3]

Builds a throw-away project on the hymenoptera photos (default params: MobileNetV2 1.0 at
224 with ImageNet weights), runs `dvc repro prepare`, then measures:

- ``pipeline_vs_in_memory``: training images/s of the same model (frozen base + head,
  ``fit``) fed by the TFRecord pipeline vs. by the same images held in memory as tensors;
  epochs interleaved, after a warm-up epoch each, best epoch of each. Target ≥ 0.95.
- ``feature_cache_speedup``: head-only epoch time without the feature cache divided by
  the epoch time on cached features. Target ≥ 10. The one-time extraction is reported too.
- ``peak_rss_mb``: peak resident memory of the train_head and finetune stage processes
  (``os.wait4`` rusage), with their wall times.

Expect ≈ 5 min on 2 CPU cores. Timings on a shared machine are noisy: compare ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for scripts.project_copy (run as `python benchmarks/...`)

from scripts.project_copy import hymenoptera_project  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "training.json"


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 1800) -> None:
    """Run a child process; on failure stop with its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


def run_stage_measured(stage: str, proj: Path, env: dict[str, str]) -> dict[str, float]:
    """Run ``stages/<stage>.py`` as a child process; its wall time and peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, f"stages/{stage}.py"],
        cwd=proj,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{stage} failed ({proc.returncode}):\n{err[-4000:]}")
    return {
        "seconds": round(time.perf_counter() - start, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
    }


def epoch_times(model, sources: dict[str, object], rounds: int) -> dict[str, list[float]]:
    """Seconds per ``fit`` epoch of one model on each source, interleaved round by round
    (so background load on a shared machine hits every source alike), after a warm-up
    epoch per source (tracing; the pipeline fills its cache)."""
    times: dict[str, list[float]] = {name: [] for name in sources}
    for ds in sources.values():
        model.fit(ds, epochs=1, verbose=0, shuffle=False)
    for _ in range(rounds):
        for name, ds in sources.items():
            t = time.perf_counter()
            model.fit(ds, epochs=1, verbose=0, shuffle=False)
            times[name].append(time.perf_counter() - t)
    return times


def rate(times: list[float], n_images: int) -> dict[str, float]:
    """Best (least disturbed) and median epoch time and the images/s of the best."""
    best = min(times)
    return {
        "epoch_s_best": round(best, 4),
        "epoch_s_median": round(statistics.median(times), 4),
        "images_per_s": round(n_images / best, 2),
    }


def in_process_measurements(proj: Path, epochs: int) -> dict[str, object]:
    """Pipeline vs in-memory, and the feature cache, on the project's prepared data."""
    os.chdir(proj)
    import numpy as np
    import tensorflow as tf

    from reprotrain import runtime, stage_io, training
    from reprotrain.config import load_params
    from reprotrain.models import transfer

    params = load_params()
    cfg = params.train_head
    info = runtime.configure(params.runtime, params.seed)
    data = stage_io.load_transfer_data(params, cfg)
    n_classes = len(data.labels)

    # The same images, decoded once, as in-memory tensors (shuffled + batched the same way).
    xs, ys = [], []
    for x, y in data.train:
        xs.append(x.numpy())
        ys.append(y.numpy())
    x_all, y_all = np.concatenate(xs), np.concatenate(ys)
    n = len(y_all)
    memory_ds = (
        tf.data.Dataset.from_tensor_slices((x_all, y_all))
        .shuffle(n, seed=params.seed)
        .batch(cfg.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )

    def fresh_model():
        model = transfer.build_model(params.model, n_classes, cfg.dropout)
        training.compile_model(model, cfg, info)
        return model

    model = fresh_model()
    times = epoch_times(model, {"pipeline": data.train, "in_memory": memory_ds}, epochs)

    # Feature cache: extraction once, then head-only epochs on pooled features.
    t = time.perf_counter()
    [(feats, labels)] = training.extract_features(model, data.train)
    extract_s = time.perf_counter() - t
    head = transfer.build_head_only(feats.shape[1], n_classes, cfg.dropout)
    training.compile_model(head, cfg, info)
    feat_ds = (
        tf.data.Dataset.from_tensor_slices((feats, labels))
        .shuffle(n, seed=params.seed)
        .batch(cfg.batch_size)
    )
    times.update(epoch_times(head, {"feature_cache": feat_ds}, epochs))
    results: dict[str, object] = {"train_images": n, "rounds": epochs, "epoch_times_s": times}
    pipe, mem, cached = (rate(times[k], n) for k in ("pipeline", "in_memory", "feature_cache"))
    cached["extract_s"] = round(extract_s, 3)
    results.update({"pipeline": pipe, "in_memory": mem, "feature_cache": cached})
    results["summary_partial"] = {
        "pipeline_vs_in_memory": round(pipe["images_per_s"] / mem["images_per_s"], 3),
        "feature_cache_speedup": round(pipe["epoch_s_best"] / cached["epoch_s_best"], 1),
        # Honest total for N epochs: N plain epochs vs extraction + N cached epochs.
        "feature_cache_speedup_incl_extraction_10_epochs": round(
            (10 * pipe["epoch_s_best"]) / (extract_s + 10 * cached["epoch_s_best"]), 2
        ),
    }
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", type=Path, default=REPO.parent / "shared" / "assets")
    ap.add_argument("--epochs", type=int, default=4, help="timed epochs per data source")
    ap.add_argument("--keep", action="store_true", help="keep the temporary project")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="reprotrain-bench-"))
    proj, _, env = hymenoptera_project(tmp, args.assets)
    os.environ["KERAS_HOME"] = env["KERAS_HOME"]  # for the in-process measurements

    t = time.perf_counter()
    run(["dvc", "repro", "prepare"], proj, env, timeout=1800)
    prepare_s = time.perf_counter() - t
    stages = {s: run_stage_measured(s, proj, env) for s in ("train_head", "finetune")}
    metrics = {
        s: json.loads((proj / "metrics" / f"{s}.json").read_text())
        for s in ("train_head", "finetune")
    }
    measured = in_process_measurements(proj, args.epochs)
    summary = dict(measured.pop("summary_partial"))  # type: ignore[arg-type]
    summary["peak_rss_mb"] = {s: v["peak_rss_mb"] for s, v in stages.items()}
    summary["targets"] = {"pipeline_vs_in_memory": ">= 0.95", "feature_cache_speedup": ">= 10"}
    summary["meets_targets"] = (
        summary["pipeline_vs_in_memory"] >= 0.95 and summary["feature_cache_speedup"] >= 10
    )
    out = {
        "summary": summary,
        "stages": stages,
        "prepare_s": round(prepare_s, 1),
        "val_accuracy": {s: m.get("val_accuracy") for s, m in metrics.items()},
        **measured,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"project kept in {proj}")


if __name__ == "__main__":
    main()
