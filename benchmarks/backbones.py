"""Inference speed of each transfer backbone on this machine's CPU.

Run by hand (``.venv/bin/python benchmarks/backbones.py [--repeats N] [--only NAME ...]``);
writes ``benchmarks/results/backbones.json``, which ``docs/benchmarks.md`` shows
(``benchmarks/report.py`` renders it). For each built-in backbone: the full reprotrain model
(preprocess → base → pool → head) at the backbone's default input size, random weights
(``weights: none``: the speed does not depend on the values), batches of 32 raw 0–255 images
through a compiled
``tf.function`` in inference mode, after one warm-up batch. Reported: images/s (median over
``--repeats`` batches), parameters, and the time to build the model.

Expected runtime: ~2-4 min on 2 CPU cores (most of it ResNet50V2 and ConvNeXt-Tiny).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = Path(__file__).resolve().parent / "results" / "backbones.json"
BATCH = 32


def measure(name: str, repeats: int) -> dict[str, object]:
    import keras
    import numpy as np
    import tensorflow as tf

    from reprotrain.config import BUILTIN_BACKBONES, ModelConfig
    from reprotrain.models import transfer

    size = BUILTIN_BACKBONES[name]
    keras.utils.set_random_seed(0)
    t0 = time.perf_counter()
    model = transfer.build_model(
        ModelConfig(backbone=name, image_size=size, weights="none"), num_classes=2, dropout=0.2
    )
    build_s = time.perf_counter() - t0
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (BATCH, size, size, 3)), tf.float32)
    infer = tf.function(lambda batch: model(batch, training=False))
    infer(x).numpy()  # trace + warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        infer(x).numpy()
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    params = int(sum(int(np.prod(w.shape)) for w in model.weights))
    result = {
        "backbone": name,
        "image_size": size,
        "batch_size": BATCH,
        "images_per_second": round(BATCH / median, 1),
        "batch_seconds_median": round(median, 4),
        "batch_seconds_all": [round(t, 4) for t in times],
        "parameters": params,
        "base_layers": len(transfer.get_base(model).layers),
        "build_seconds": round(build_s, 2),
    }
    print(
        f"{name:<20} {size:>4}px  {result['images_per_second']:>7} img/s  "
        f"{params / 1e6:5.1f} M params",
        flush=True,
    )
    return result


def main() -> None:
    from reprotrain.config import BUILTIN_BACKBONES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per backbone")
    parser.add_argument("--only", nargs="*", choices=list(BUILTIN_BACKBONES), default=None)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    import tensorflow as tf

    names = args.only or list(BUILTIN_BACKBONES)
    rows = [measure(name, args.repeats) for name in names]
    load = os.getloadavg()
    out = {
        "what": "inference images/s per backbone, default input size, batch 32, CPU, "
        "weights: none, median of timed batches after one warm-up",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "tensorflow": tf.__version__,
            "load_average_1m_at_end": round(load[0], 2),
        },
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
