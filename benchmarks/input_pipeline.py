"""Input-pipeline throughput: Keras' directory loader vs reprotrain's TFRecord pipeline.

Run by hand (``make benchmarks`` or ``python benchmarks/input_pipeline.py [DATA_DIR]``).
Measures images/s at 224×224, batch 32, on the same photos (the hymenoptera train split):

(a) ``keras.utils.image_dataset_from_directory`` — decodes every JPEG every epoch;
(b) ``reprotrain.data.pipeline.make_dataset`` epoch 1 — reads shards, decodes, fills the cache;
(c) the same dataset, epochs 2+ — served from the cache.

(b)/(c) are measured without augmentation (the directory loader does none, so the
comparison is like for like) and, separately, with the default augmentation on.
Writes ``benchmarks/results/input_pipeline.json``; the README shows the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "assets" / "datasets" / "hymenoptera_data"


def images_per_second(ds, epochs: int = 1) -> tuple[float, int]:
    """Iterate ``epochs`` full epochs; images/s over all of them and images per epoch."""
    start, n = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in ds:
            n += int(batch[0].shape[0])
    return n / (time.perf_counter() - start), n // epochs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("REPROTRAIN_DATA_MIRROR") or str(DEFAULT_DATA)
    parser.add_argument(
        "data", nargs="?", default=default, help="hymenoptera_data folder (train/ val/)"
    )
    parser.add_argument("--out", default=str(HERE / "results" / "input_pipeline.json"))
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / "train").is_dir():
        sys.stderr.write(f"error: {data}/train not found: pass the hymenoptera_data folder\n")
        return 2

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from reprotrain.config import PipelineConfig, PrepareConfig
    from reprotrain.data.fetch import fetch
    from reprotrain.data.pipeline import make_dataset
    from reprotrain.data.prepare import prepare
    from reprotrain.paths import split_files

    size, batch = 224, 32
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fetch(str(data), tmp / "raw")
        t = time.perf_counter()
        prepare(tmp / "raw", tmp / "prepared", PrepareConfig(), seed=42)
        prepare_seconds = time.perf_counter() - t
        files = split_files(tmp / "prepared", "train")

        directory = keras.utils.image_dataset_from_directory(
            data / "train", image_size=(size, size), batch_size=batch, seed=42, verbose=False
        ).prefetch(tf.data.AUTOTUNE)
        images_per_second(directory)  # warm-up: file listing, graph tracing
        a, n_dir = images_per_second(directory, epochs=2)
        # Steady state: 5 epochs through one iterator (no per-epoch iterator start-up, which
        # dominates a 245-image epoch once decoding is cached).
        a_steady, _ = images_per_second(directory.repeat(5))

        results = {}
        for name, cfg in {
            "no_augmentation": PipelineConfig(
                augment=dataclasses.replace(
                    PipelineConfig().augment,
                    flip=False,
                    rotation=0.0,
                    zoom=0.0,
                    brightness=0.0,
                    contrast=0.0,
                )
            ),
            "default_augmentation": PipelineConfig(),
        }.items():
            ds = make_dataset(files, cfg, True, image_size=size, batch_size=batch, seed=42)
            b, n = images_per_second(ds)
            c, _ = images_per_second(ds, epochs=5)
            c_steady, _ = images_per_second(ds.repeat(5))
            results[name] = {
                "epoch1_images_per_s": round(b, 1),
                "cached_images_per_s": round(c, 1),
                "cached_steady_images_per_s": round(c_steady, 1),
                "images_per_epoch": n,
            }

    report = {
        "what": "images/s at 224x224, batch 32, hymenoptera train split",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "tensorflow": tf.__version__,
        },
        "directory_loader_images_per_s": round(a, 1),
        "directory_loader_images_per_epoch": n_dir,
        "directory_loader_steady_images_per_s": round(a_steady, 1),
        "pipeline": results,
        "prepare_seconds": round(prepare_seconds, 1),
        "summary": {
            "cached_speedup_vs_directory_loader": round(
                results["no_augmentation"]["cached_images_per_s"] / a, 2
            ),
            "epoch1_speedup_vs_directory_loader": round(
                results["no_augmentation"]["epoch1_images_per_s"] / a, 2
            ),
            "cached_with_augmentation_speedup_vs_directory_loader": round(
                results["default_augmentation"]["cached_images_per_s"] / a, 2
            ),
            "cached_steady_speedup_vs_directory_loader": round(
                results["no_augmentation"]["cached_steady_images_per_s"] / a_steady, 2
            ),
            "target_cached_speedup": 10,
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
